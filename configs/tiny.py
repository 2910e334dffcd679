"""A CPU-tiny configuration for tests: 16x16 (three stages), narrow networks, synthetic data.

python main.py --config configs/tiny.py --workdir /tmp/tiny
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 16
    config.model.latent_size = 16
    config.model.fmap_base = 64  # nf(s + 1) = 16, 16, 8 for stages 0..2
    config.model.fmap_max = 16
    config.optimizer.learning_rates = (2e-3,) * 3
    config.schedule.stabilize_images = 64
    config.schedule.fade_images = 64
    config.schedule.batch_sizes = (16,) * 3  # 2 per device on 8 devices: minibatch stddev
    config.data.source = "synthetic"
    config.data.synthetic_size = 64
    config.checkpoint.every_images = 32
    config.checkpoint.every_minutes = 0.0
    config.logging.log_every_steps = 2
    config.logging.sample_every_images = 0
    config.logging.sample_grid = 2
    config.evals.swd.every_images = 64  # at 256 and 320 images: SWD needs the 16x16 stage
    config.evals.swd.images = 32
    config.evals.batch_size = 16
    return config
