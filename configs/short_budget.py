"""A short-budget recipe for any folder of images: 32x32 in about ten CPU-minutes.

    python main.py --config configs/short_budget.py --config.data.path=/data/my_images

Narrow networks (latent 128, 64 feature maps; the widths the tutorial's small runs use), large
batches at low resolution where steps are cheap, phases of 3,000 images below 32x32 and most of
the time at 32x32, where the images are judged (on 2 cores: 32x32 after ~1.5 minutes, then
~45 images/s). There the batch is 16: a step of 16 images costs half one of 32 (the images/s
are the same), and in a budget of a few hundred steps the number of steps is what limits
the generator, so batch 16 scores 18 where 32 scored 29 (8: 17.6). A high learning rate with a
fast EMA, minibatch-stddev groups of 16 (with the official 4 the same run scores 47), a
gradient penalty of weight 1 instead of the official 10 (43-45 with 10), and no mirror
augmentation: a ten-minute run shows fewer images than a data set of tens of thousands holds,
so flips add no data, and where the images have a handedness (Fashion-MNIST's shoes all point
left) they spend the budget on mirror images the data set does not have (41 with flips at
batch 32). Trained for 10 minutes on Fashion-MNIST it reaches an SWD (x1e3, 32 and 16 px) of
18.5-19 over two seeds against held-out images, where the tutorial's PyTorch ProGAN reaches 52:

    python benchmarks/quality.py race --train /tmp/fmnist/train --heldout /tmp/fmnist/heldout \
        --minutes 10 --torch-python /path/to/torch-venv/bin/python

(docs/quality.md, "Image quality per CPU-minute", has the data set, the table and the ablations.)
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.resolution = 32
    config.model.latent_size = 128
    config.model.fmap_base = 1024  # nf(s + 1) = 64 for stages 0..3
    config.model.fmap_max = 64
    config.model.mbstd_group_size = 16
    config.loss.gp_weight = 1.0  # a few hundred critic steps: a lighter constraint learns faster
    config.optimizer.learning_rates = (3e-3,) * 4
    config.ema_decay = 0.99  # a few hundred steps per phase: 0.999 would lag a whole phase
    config.schedule.stabilize_images = 3_000
    config.schedule.fade_images = 3_000
    config.schedule.final_stabilize_images = 18_000  # 36,000 images in all, ~10 minutes
    config.schedule.batch_sizes = (64, 64, 32, 16)  # 32x32: twice the steps, same images/s
    config.data.source = "image_folder"
    config.data.mirror_augment = False  # see above; turn on for symmetric data shown many times
    config.checkpoint.every_images = 20_000
    config.checkpoint.every_minutes = 5.0
    config.logging.log_every_steps = 50
    config.logging.sample_every_images = 12_000
    return config
