"""The offline demo: ProGAN on the built-in synthetic faces, 4x4 up to 32x32, on a laptop CPU.

    python main.py --config configs/demo.py

Takes 7 to 12 minutes on 2 CPU cores, by CPU (the README has the figures; most of it at
32x32); sample grids land in workdir/demo/samples/. Tuned like configs/short_budget.py (a
high learning rate with a fast EMA, minibatch-stddev groups of 16, batch 16 at 32x32 for
twice the steps at the same images/s, penalty weight 1), with 32 feature maps at 32x32 for
twice its images/s there. The README shows the final grid; docs/quality.md has its SWD.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 32
    config.model.latent_size = 64
    config.model.fmap_base = 512  # nf(s + 1) = 64, 64, 64, 32 for stages 0..3
    config.model.fmap_max = 64
    config.model.mbstd_group_size = 16
    config.optimizer.learning_rates = (3e-3,) * 4
    # A few hundred steps per phase: an EMA of 0.999 would still show earlier stages.
    config.ema_decay = 0.99
    config.schedule.phase_images = (10_000, 10_000, 8_000, 8_000)  # fade and stabilize, per stage
    config.schedule.final_stabilize_images = 20_000
    config.schedule.batch_sizes = (64, 64, 32, 16)
    config.loss.gp_weight = 1.0  # a few hundred critic steps: a lighter constraint learns faster
    config.data.source = "synthetic"
    config.data.synthetic_size = 4096
    config.checkpoint.every_images = 20_000
    config.checkpoint.every_minutes = 5.0
    config.logging.log_every_steps = 50
    config.logging.sample_every_images = 16_000
    config.logging.sample_grid = 8
    return config
