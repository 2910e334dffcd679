"""The paper's CelebA-HQ run at 1024x1024, nine stages: official config.py `preset-v1-1gpu`.

    python main.py --config configs/celeba_hq1024.py

The same preset as configs/celeba128.py (batch 16, then 14, 6 and 3 at 256, 512 and 1024;
minibatch-stddev groups of 16; lr 1e-3; 800k images per phase) on CelebA-HQ (config.py's
CelebA-HQ line, mirror augment), for the preset's 19M images in all (`total_kimg=19000`).
Needs CelebA-HQ prepared in TFDS (see docs/data.md). Each network has about 23.1M
parameters (`--mode=summary` prints the table).
"""

import ml_collections

from configs import celeba128


def get_config() -> ml_collections.ConfigDict:
    config = celeba128.get_config()
    config.model.resolution = 1024
    # 19M in all: 8 x 1.6M = 12.8M before the last stabilization, then 6.2M.
    config.schedule.final_stabilize_images = 6_200_000
    config.data.source = "celeb_a_hq"
    config.data.split = "train"  # TFDS celeb_a_hq has one split, all 30,000 images
    config.data.download = False  # manual-only: TFDS cannot fetch it
    return config
