"""The paper's CelebA run at 128x128: six stages, batch 16, lr 1e-3, 800k images per phase.

    python main.py --config configs/celeba128.py
    python main.py --config configs/celeba128.py --config.schedule.batch_sizes='(64,64,32,16,16,8)'

Data: TFDS `celeb_a` (all 202,599 images), the official 128x128 crop centred at (89, 121), mirror
augment. TFDS downloads it when missing; if its Google-Drive download fails, see README,
"Data sets" for placing the files in TFDS's manual dir.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 128
    config.data.source = "celeb_a"
    config.data.download = True
    return config
