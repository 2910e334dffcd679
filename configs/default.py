"""Defaults shared by every config: the paper's networks and training at 128x128 on CelebA.

Per-stage values are tuples indexed by stage (stage 0 is 4x4), so they can be overridden from
the command line, e.g. `--config.schedule.batch_sizes='(64,64,32,16,16,8)'`.
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
            normalize_latents=True,
            use_pixelnorm=True,
            pixelnorm_epsilon=1e-8,
            use_wscale=True,  # equalized learning rate
            mbstd_group_size=4,  # 0 or 1 disables minibatch stddev
            fused_scale=True,  # resampling fused into the convolutions (same maths, fewer FLOPs)
            compute_dtype="float32",  # 'bfloat16' for GPU/TPU; parameters stay float32
        )
    )

    config.loss = ml_collections.ConfigDict(dict(gp_weight=10.0, gp_target=1.0, drift_weight=1e-3))
    config.optimizer = ml_collections.ConfigDict(
        dict(
            b1=0.0,
            b2=0.99,
            eps=1e-8,
            learning_rates=(1e-3,) * 6,  # per stage
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
            batch_sizes=(16,) * 6,  # global batch per stage
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
        )
    )
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

    config.eval = ml_collections.ConfigDict(
        dict(
            checkpoint=config_dict.placeholder(int),  # images shown (None: latest; 0: untrained)
            metrics=("swd", "ms_ssim"),  # add "fid" once eval.fid_weights is set
            batch_size=64,
            swd_images=16384,  # official: 16384 images, 128 neighbourhoods each per level
            noise_floor=True,  # SWD between two draws of reals
            ms_ssim_images=20000,  # official: 10k consecutive pairs
            fid_images=50000,
            fid_weights=config_dict.placeholder(
                str
            ),  # .npz from `python -m progan_jax.metrics.convert_fid_weights`
            fid_stats_dir=config_dict.placeholder(str),  # reals' statistics (None: data cache dir)
            swd_every_images=0,  # periodic SWD while training (0: off)
            swd_train_images=2048,  # images per periodic SWD
        )
    )
    config.generate = ml_collections.ConfigDict(
        dict(
            checkpoint=config_dict.placeholder(int),  # images shown (None: latest)
            seed=0,
            num_images=64,  # single PNGs
            grid=8,  # grid.png of grid x grid images
            truncation=config_dict.placeholder(float),  # e.g. 1.5: latents in [-1.5, 1.5]
            keyframes=5,  # latent walk through this many points (1: no animation)
            frames_per_keyframe=12,
            interpolation_grid=3,
            fps=12,
            output=config_dict.placeholder(str),  # None: <workdir>/generated/<images shown>
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
