"""The offline demo: ProGAN on the built-in synthetic faces, 4x4 up to 32x32, on a laptop CPU.

    python main.py --config configs/demo.py

Finishes in under 10 minutes on 2 CPU cores; sample grids land in workdir/demo/samples/.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 32
    config.model.latent_size = 64
    config.model.fmap_base = 256  # nf(s + 1) = 64, 64, 32, 16 for stages 0..3
    config.model.fmap_max = 64
    config.optimizer.learning_rates = (2e-3, 2e-3, 2e-3, 2e-3)
    # A few hundred steps per phase: an EMA of 0.999 would still show earlier stages.
    config.ema_decay = 0.99
    config.schedule.stabilize_images = 8_000
    config.schedule.fade_images = 8_000
    config.schedule.final_stabilize_images = 16_000
    config.schedule.batch_sizes = (32, 32, 32, 32)
    config.data.source = "synthetic"
    config.data.synthetic_size = 4096
    config.checkpoint.every_images = 20_000
    config.checkpoint.every_minutes = 5.0
    config.logging.log_every_steps = 50
    config.logging.sample_every_images = 8_000
    config.logging.sample_grid = 8
    return config
