"""The widths of the PyTorch reference ProGAN, for timing the two side by side.

Latent 128 and feature maps 128, 128, 128, 128, 64, 32 for stages 0-5 (up to 128x128), batch 16:

    python main.py --config configs/bench_reference.py --mode=benchmark
    python main.py --config configs/bench_reference.py --mode=benchmark \
        --config.benchmark.stages='(3,4,5)' --config.benchmark.batch_size=32
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 128
    config.model.latent_size = 128
    config.model.fmap_base = 2048  # nf(s + 1) = 128, 128, 128, 128, 64, 32 for stages 0..5
    config.model.fmap_max = 128
    config.schedule.batch_sizes = (16,) * 6
    return config
