"""Any folder of images (searched recursively; jpg, png, webp, bmp) at 128x128.

    python main.py --config configs/image_folder.py --config.data.path=/data/my_images
    python main.py --config configs/image_folder.py --config.data.path=/data/x \
        --config.model.resolution=64 --config.model.num_channels=1   # grayscale 64x64

Images are centre-cropped to squares and resized; grayscale and RGBA become RGB (or one channel
with num_channels=1); files that cannot be decoded are skipped and reported.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 128
    config.data.source = "image_folder"
    config.data.mirror_augment = True
    return config
