"""The paper's CelebA-HQ run at 1024x1024 (official `preset-v1-1gpu`), nine stages.

    python main.py --config configs/celeba_hq1024.py

Needs CelebA-HQ prepared in TFDS (see README, "Data sets"). Each network has about 23.1M
parameters (`--mode=summary` prints the table).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 1024
    # preset-v1 groups over up to 16 samples, so the paper's batches 14, 6 and 3 divide.
    config.model.mbstd_group_size = 16
    config.optimizer.learning_rates = (1e-3,) * 9
    config.schedule.batch_sizes = (16, 16, 16, 16, 16, 16, 14, 6, 3)
    return config
