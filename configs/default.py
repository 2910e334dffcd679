"""Defaults shared by every config: the official networks and training at 128x128 on CelebA.

These are the official code's defaults (networks.py, train.py; minibatch-stddev groups of 4)
with the paper's 800k images per phase; configs/celeba128.py is the paper's exact preset.

Per-stage values (`schedule.batch_sizes`, `optimizer.learning_rates`) are tuples indexed by
stage, and stage s always trains at 4 * 2**s pixels, so a tuple is a table by resolution: value
i is for (4 * 2**i)x(4 * 2**i), like the official `minibatch_dict` / `lrate_dict`. The defaults
hold nine values, 4x4 up to 1024x1024; a run uses the first `num_stages` of them and ignores the
rest, so `--config.model.resolution=R` alone gives every power of two from 8 to 1024 its values.
An override gives at least one value per stage of the run, e.g. at 128x128
`--config.schedule.batch_sizes='(64,64,32,16,16,8)'`. They are tuples rather than dicts keyed
by resolution because ml_collections cannot override integer-keyed dicts from the command
line, and rather than computed in `get_config()` because overrides such as the resolution are
applied after it. Read them through `schedule.Schedule`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(
        dict(
            resolution=128,  # final resolution; stages run 4x4 .. resolution
            num_channels=3,  # 3 for RGB, 1 for grayscale
            latent_size=512,
            fmap_base=8192,  # feature maps nf(s) = min(fmap_base / 2**(s * decay), fmap_max)
            fmap_max=512,
            fmap_decay=1.0,
            normalize_latents=True,  # pixel-normalise the latent (independent of use_pixelnorm)
            use_pixelnorm=True,  # PixelNorm after G's dense and 3x3 convs
            pixelnorm_epsilon=1e-8,
            use_wscale=True,  # equalized learning rate
            mbstd_group_size=4,  # 0 or 1 disables minibatch stddev
            # Variants that imported networks need (docs/pretrained.md), all off here:
            # pytorch_GAN_zoo's consecutive groups and unbiased variance in minibatch stddev,
            # its one bias per unit in G's first layer, and the critic's pooling after the
            # leaky ReLU (the official separate resampling's, and pytorch_GAN_zoo's).
            mbstd_consecutive=False,
            mbstd_unbiased=False,
            dense_bias_per_unit=False,
            downsample_after_activation=False,
            # Classes of a conditional run (0: unconditional): G takes one-hot labels beside
            # the latent, the critic adds one logit per class (the official AC-GAN terms).
            label_size=0,
            # The one-hot label's value beside the latent, before PixelNorm. The official 1
            # gives a class the weight of one latent dimension, which a run of a few thousand
            # steps does not learn to use (configs/fashion_conditional.py sets 4; docs/quality.md
            # "Class-conditional Fashion-MNIST").
            label_scale=1.0,
            fused_scale=True,  # resampling fused into the convolutions (same maths, fewer FLOPs)
            # How convolutions are differentiated: 'matmul' (forward convs and matrix products,
            # fast on XLA:CPU), 'xla' (XLA's own: cuDNN, TPU), 'auto' (matmul on CPU, else xla).
            conv_gradients="auto",
            compute_dtype="float32",  # 'bfloat16' for GPU/TPU; parameters stay float32
            # Recompute activations in the backward passes (jax.checkpoint) instead of keeping
            # them: less device memory at 1024x1024 for more FLOPs (docs/performance.md,
            # "Memory on TPUs").
            rematerialize=False,
        )
    )

    config.loss = ml_collections.ConfigDict(
        dict(
            gp_weight=10.0,
            gp_target=1.0,
            drift_weight=1e-3,
            # 'official': penalise the gradient norm w.r.t. the images upscaled to full
            # resolution (native norm / 2**(last stage - stage)), as the official code;
            # 'native': the norm at the stage's own resolution (stronger before the last stage).
            gp_scale="official",
            # Weight of the classes' softmax cross-entropy in both losses (label_size > 0).
            cond_weight=1.0,
            # Whether the critic's class term covers the fakes (labelled as asked) besides the
            # reals: True as the official code, False as pytorch_GAN_zoo (reals only).
            cond_fakes=True,
        )
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(
            b1=0.0,
            b2=0.99,
            eps=1e-8,
            learning_rates=(1e-3,) * 9,  # per stage, 4x4..1024x1024 (train.py:96-99)
            reset_at_phase_boundary=True,
        )
    )
    config.ema_decay = 0.999

    config.schedule = ml_collections.ConfigDict(
        dict(
            stabilize_images=800_000,  # per stabilization phase (paper; official TF default 600k)
            fade_images=800_000,  # per fade-in phase
            # The last stage's stabilization (None: stabilize_images); the paper trains its
            # 1024x1024 networks for 19M images in all, i.e. 7M at the last stage.
            final_stabilize_images=config_dict.placeholder(int),
            # Per stage, 4x4 upward: images of its fade-in and of its stabilization, in place of
            # fade_images / stabilize_images (None: those for every stage).
            phase_images=config_dict.placeholder(tuple),
            # Global batch per stage, 4x4..1024x1024: the official schedule on one GPU,
            # minibatch_base 16 (train.py:93-95) capped by the fp32 per-GPU limits
            # {256: 16, 512: 8, 1024: 4} (config.py:106); multiples of mbstd_group_size 4.
            batch_sizes=(16, 16, 16, 16, 16, 16, 16, 8, 4),
            # With batch_sizes='auto': each stage's batch is the largest multiple of the device
            # count, at most this many per device, whose compiled step fits the device memory
            # (less plan.memory_margin), as --mode=plan measures it.
            max_batch_per_device=32,
        )
    )

    config.data = ml_collections.ConfigDict(
        dict(
            # synthetic | celeb_a | celeb_a_hq | tfds | image_folder
            source="celeb_a",
            tfds_name="",  # source 'tfds': any TFDS image data set, e.g. 'lsun/bedroom'
            image_key="image",  # source 'tfds': the feature holding the image
            split="train+validation+test",  # all 202,599 CelebA images, as the paper
            data_dir=config_dict.placeholder(str),  # TFDS data dir (None: TFDS default)
            manual_dir=config_dict.placeholder(str),  # None: <data_dir>/downloads/manual
            download=False,  # let TFDS download / build a missing data set
            path=config_dict.placeholder(str),  # source 'image_folder'
            cache_dir=config_dict.placeholder(str),  # decoded images (None: ~/.cache/progan_jax)
            # --mode=caches: a cache file not read or written for this long counts as stale
            # (as do old-format files and interrupted builds' leftovers), and with
            # remove_stale_caches=True the stale files are removed.
            stale_cache_days=30.0,
            remove_stale_caches=False,
            # Each process decodes, caches and streams only its 1/N of the data set (max_images
            # then counts per process, divided by N). None: True with several processes.
            shard_per_process=config_dict.placeholder(bool),
            # cache_dir is one folder shared by the run's processes (NFS, a bucket mount):
            # process 0 builds the whole-set cache while the others wait, then all read it.
            shared_cache=False,
            mirror_augment=True,
            synthetic_size=4096,  # source 'synthetic': number of images
            synthetic_seed=0,
            max_images=config_dict.placeholder(int),  # use only the first N images
            # Class labels of a conditional run (model.label_size classes): None, or where they
            # come from: 'subfolders' (image_folder: a class per first-level subfolder, names
            # sorted), 'feature' (TFDS: the feature `label_key`), 'skin_tone' (synthetic).
            labels=config_dict.placeholder(str),
            label_key="label",
            prefetch=2,  # batches prepared ahead
            # For tests and benchmarks only: N random examples in the TFDS data set's real
            # format instead of the data set (tfds.testing.mock_data).
            tfds_mock_examples=0,
        )
    )

    config.checkpoint = ml_collections.ConfigDict(
        dict(
            every_images=100_000,  # periodic checkpoints (0: off); stage ends are always saved
            every_minutes=30.0,  # also after this much time (0: off)
            keep=3,  # periodic checkpoints kept; stage-end checkpoints are kept for good
            # The metric (lower is better: fid, swd_x1e3_avg) whose best value while training
            # keeps its checkpoint in best_checkpoint/ ('' none). Only values at the latest
            # stage evaluated compete: a metric's values at two resolutions do not compare.
            best_metric="fid",
        )
    )
    # One run per workdir: a run holds <workdir>/lease.json and renews it this often; a lease
    # not renewed for stale_after_seconds (its run hung, or its machine died) is taken over.
    config.lease = ml_collections.ConfigDict(dict(renew_seconds=30.0, stale_after_seconds=300.0))
    config.logging = ml_collections.ConfigDict(
        dict(
            log_every_steps=100,  # scalars to TensorBoard and the log
            sample_every_images=100_000,  # sample grids (0: only at stage ends)
            sample_grid=8,  # grids of sample_grid x sample_grid images from fixed latents
            # An XProf trace of this many steps (0: off), from a stage's second step, into the
            # workdir for TensorBoard's profile plugin; profile_stage None: the first trained.
            profile_steps=0,
            profile_stage=config_dict.placeholder(int),
        )
    )

    # Evaluators (progan_jax/metrics/evaluators.py; docs/evaluation.md): one section each, with
    # its sizes and `every_images`, its cadence while training (0: --mode=evaluate only).
    # Training writes TensorBoard's metrics/<name>, --mode=evaluate eval/<name>; both draw the
    # same images from the same seeds, so they agree on a checkpoint.
    config.evals = ml_collections.ConfigDict(
        dict(
            evaluate=("swd", "class_swd", "ms_ssim"),  # what --mode=evaluate runs; add "fid"
            # Latents, SWD centres and reals are drawn in blocks of this many images; a
            # minibatch on the devices is whole blocks (sampling.GeneratorSnapshot.minibatch).
            batch_size=64,
            # .npz from `python -m progan_jax.metrics.convert_fid_weights` (FID, projection).
            fid_weights=config_dict.placeholder(str),
            fid_stats_dir=config_dict.placeholder(str),  # reals' statistics (None: data cache)
            # Official: 16384 images, 128 neighbourhoods each per level; with the SWD between
            # two draws of reals (the noise floor, computed once per stage).
            swd=dict(every_images=0, images=16384, noise_floor=True),
            # A conditional run's SWD per class: G asked for one class against its reals.
            class_swd=dict(every_images=0, images=16384, noise_floor=True),
            ms_ssim=dict(every_images=0, images=20000),  # official: 10k consecutive pairs
            fid=dict(every_images=0, images=50000),
        )
    )
    # The checkpoint that evaluate, generate, export and project read: None the latest, a
    # count of images shown, 'best' the best one of checkpoint.best_metric, or 'untrained'
    # (a fresh generator at the last stage, e.g. to try a metric).
    config.checkpoint_images_shown = config_dict.placeholder(object)
    # --mode=import: a pretrained network file (an official ProGAN pickle or a
    # pytorch_GAN_zoo PGAN checkpoint) into --workdir (docs/pretrained.md).
    config.pretrained = ml_collections.ConfigDict(dict(path=config_dict.placeholder(str)))
    config.generate = ml_collections.ConfigDict(
        dict(
            seed=0,
            num_images=64,  # single PNGs
            grid=8,  # grid.png of grid x grid images
            truncation=config_dict.placeholder(float),  # e.g. 1.5: latents in [-1.5, 1.5]
            keyframes=5,  # latent walk through this many points (1: no animation)
            frames_per_keyframe=12,
            interpolation_grid=3,
            fps=12,
            # A conditional G's classes: an id (e.g. 3) or a tuple of ids, repeated over the
            # images, the grid's rows and the walks; (): one class per grid row, in order.
            labels=(),
            # A .npy of latents [N, latent_size] to draw instead of random ones (e.g. another
            # implementation's, or a projection's, whose labels.npy beside it gives a
            # conditional G's classes): the grid and PNGs show them in order, and the walk
            # goes through the first `keyframes` of them. num_images then follows N.
            latents=config_dict.placeholder(str),
            output=config_dict.placeholder(str),  # None: <workdir>/generated/<images shown>
        )
    )
    # --mode=project: photos into G's latent space (modes/project.py; docs/evaluation.md).
    config.project = ml_collections.ConfigDict(
        dict(
            images=config_dict.placeholder(str),  # a folder of images (searched recursively)
            output=config_dict.placeholder(str),  # None: <workdir>/projected/<images shown>
            batch_size=8,  # images projected together (one compiled program)
            restarts=4,  # random starting latents per image; the best is kept
            steps=300,  # Adam steps from each
            learning_rate=0.05,
            pixel_weight=1.0,  # MSE on images in [-1, 1]
            # The Inception feature distance's weight (0: pixels only); it needs
            # evals.fid_weights. Layers of the FID network, and the side it sees images at.
            perceptual_weight=0.1,
            layers=("conv_4", "mixed_2", "mixed_7"),
            perceptual_resolution=149,
            # A conditional G's classes: an id for all images or one per image, or the
            # first-level subfolders' classes (names sorted, as in training).
            labels=(),
            labels_from_subfolders=False,
            seed=0,
        )
    )
    config.export = ml_collections.ConfigDict(
        dict(
            platforms=("cpu", "cuda"),  # where the SavedModel can run: cpu, cuda, rocm, tpu
            output=config_dict.placeholder(str),  # None: <workdir>/export/<images shown>
        )
    )

    config.plan = ml_collections.ConfigDict(
        dict(
            # --mode=plan compiles every stage's step for this target: a TPU slice as libtpu
            # names it ('v5e:2x4', 'v4:2x2x1', 'v6e:2x2'; no TPU needed), 'cuda' (lowered
            # only: FLOPs but no memory), or None for this machine's devices.
            topology=config_dict.placeholder(str),
            stages=config_dict.placeholder(tuple),  # None: every stage
            memory_margin=0.1,  # the share of device memory a step must leave free
            assumed_utilisation=0.4,  # of the peak FLOP/s, for the images/s estimate
        )
    )

    config.benchmark = ml_collections.ConfigDict(
        dict(
            stages=config_dict.placeholder(tuple),  # None: every stage
            batch_size=config_dict.placeholder(int),  # None: the schedule's batch per stage
            warmup_steps=2,
            steps=5,
            input_batches=200,  # batches timed by --mode=benchmark_input
            alpha=0.5,
        )
    )
    return config
