"""The paper's CelebA run at 128x128: official config.py `preset-v1-1gpu` with CelebA.

    python main.py --config configs/celeba128.py
    python main.py --config configs/celeba128.py --config.schedule.batch_sizes='(64,64,32,16,16,8)'

preset-v1-1gpu (config.py:99) is the paper's configuration: batch 16, then 14, 6 and 3 at
256, 512 and 1024 (`minibatch_base=16`, `minibatch_dict={256: 14, 512: 6, 1024: 3}`);
minibatch-stddev groups of 16 (`D.mbstd_group_size=16`, so those batches divide); 800k images
per stabilization and per fade-in (as configs/default.py); `total_kimg=19000`. Learning rates
stay at train.py's 1e-3 (train.py:96-99). The last stabilization lasts until 19M images in
all: 11M at 128x128, so with another `--config.model.resolution` set
`schedule.final_stabilize_images` too: 19M less the (stages - 1) x 1.6M shown before it.

Data: TFDS `celeb_a` (all 202,599 images), the official 128x128 crop centred at (89, 121), mirror
augment (config.py's CelebA line). TFDS downloads it when missing; if its Google-Drive download
fails, see docs/data.md for placing the files in TFDS's manual dir.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 128
    config.model.mbstd_group_size = 16
    # 19M in all (total_kimg=19000): 5 x 1.6M = 8M before the last stabilization, then 11M.
    config.schedule.final_stabilize_images = 11_000_000
    config.schedule.batch_sizes = (16, 16, 16, 16, 16, 16, 14, 6, 3)
    config.data.source = "celeb_a"
    config.data.download = True
    # FID of 50k images every 500k images shown (38 evaluations), written as metrics/fid and
    # ranking the best checkpoint. It needs evals.fid_weights (docs/evaluation.md); its cost is
    # measured by benchmarks/fid_cost.py (docs/performance.md, "FID while training").
    config.evals.fid.every_images = 500_000
    return config
