"""CelebA-HQ at 1024x1024 on 8 devices: the official config.py `preset-v2-8gpus`.

    python main.py --config configs/celeba_hq1024_8dev.py
    python main.py --config configs/celeba_hq1024_8dev.py --mode=plan --config.plan.topology=v5e:2x4

preset-v2-8gpus (config.py:103): `minibatch_base=32` with `minibatch_dict={4: 512, 8: 256,
16: 128, 32: 64, 64: 32}`, capped by the float32 per-GPU limits `{256: 16, 512: 8, 1024: 4}`
(config.py:106) times 8, which leave 32 from 128x128 on: 4 images per device at 1024x1024.
Learning rates 1e-3, then `{128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003}` for both
networks; minibatch-stddev groups of 4 (the networks' default); 600k images per phase (the v2
presets keep train.py's default) and `total_kimg=12000`. Any multiple of 8 devices works: the
global batches stay the same and split further (4x4 to 64x64 on 16 devices; from 128x128 on,
16 devices give 2 images each, still a minibatch-stddev group).
"""

import ml_collections

from configs import celeba_hq1024


def get_config() -> ml_collections.ConfigDict:
    config = celeba_hq1024.get_config()
    config.model.mbstd_group_size = 4
    config.schedule.batch_sizes = (512, 256, 128, 64, 32, 32, 32, 32, 32)
    config.optimizer.learning_rates = (1e-3,) * 5 + (1.5e-3, 2e-3, 3e-3, 3e-3)
    config.schedule.stabilize_images = 600_000
    config.schedule.fade_images = 600_000
    # 12M in all: 600k at 4x4, then 1.2M for each of the next 7 stages and 600k of fade-in at
    # 1024x1024 (9.6M), then 2.4M of stabilization.
    config.schedule.final_stabilize_images = 2_400_000
    return config
