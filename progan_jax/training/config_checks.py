"""Validation of a run's configuration before anything expensive starts.

Every error names the field (`config.schedule.batch_sizes: ...`) and says what would be valid.
"""

import ml_collections

from progan_jax.data import sources
from progan_jax.metrics import evaluators
from progan_jax.nets import conv, losses, models
from progan_jax.runtime import stages
from progan_jax.runtime.errors import ConfigError
from progan_jax.training import schedule


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.{field}: {message}")


def _stage(stage: int) -> str:
    res = stages.stage_resolution(stage)
    return f"stage {stage} ({res}x{res})"


def _per_stage(config, field: str, count: int, check, what: str) -> None:
    """A per-stage tuple holds one value per resolution from 4x4 on, at least up to the run's;
    values past it are unused, which is how the nine-value defaults fit any resolution."""
    section, name = field.split(".")
    values = config[section][name]
    res = config.model.resolution
    if not isinstance(values, tuple | list):
        _fail(field, f"must be a tuple with one value per stage (4x4, 8x8, ...), got {values!r}")
    if len(values) < count:
        last = stages.stage_resolution(len(values) - 1)
        given = f"4x4 up to {last}x{last}" if values else "none"
        _fail(
            field,
            f"has {len(values)} value(s) ({given}) but resolution {res} trains {count} stages, "
            f"4x4 up to {res}x{res}; give at least {count} (values past the run's resolution "
            "are unused)",
        )
    for stage, value in enumerate(values[:count]):
        if not check(value):
            _fail(field, f"value {value!r} for {_stage(stage)} must be {what}")


def validate_cache_management(data: ml_collections.ConfigDict) -> None:
    """The fields of --mode=caches, which needs no devices and so not the rest of `validate`."""
    if not data.stale_cache_days >= 0:
        _fail("data.stale_cache_days", f"must be >= 0 days, got {data.stale_cache_days}")


def minibatch_stddev_accepts(per_device: int, group_size: int) -> bool:
    """Whether minibatch stddev (groups of `group_size`; <= 1: off) runs on `per_device` images
    per device: at least 2 (a group of one has no deviation), split into whole groups."""
    return group_size <= 1 or (per_device >= 2 and per_device % min(group_size, per_device) == 0)


def _check_batch_sizes(config, count: int, devices: int, processes: int) -> None:
    """Each stage's global batch splits evenly over devices and processes, and gives every
    device's minibatch-stddev groups at least two images (a group of one has no deviation:
    the layer would silently feed the critic a constant)."""
    model = config.model
    _per_stage(
        config,
        "schedule.batch_sizes",
        count,
        lambda b: isinstance(b, int) and b > 0,
        "a positive int",
    )
    for stage in range(count):
        batch = config.schedule.batch_sizes[stage]
        if batch % devices:
            _fail(
                "schedule.batch_sizes",
                f"batch {batch} of {_stage(stage)} does not divide by the {devices} devices; "
                f"use multiples of {devices}",
            )
        if batch % processes:
            _fail("schedule.batch_sizes", f"batch {batch} does not divide by {processes} processes")
        per_device = batch // devices
        if minibatch_stddev_accepts(per_device, model.mbstd_group_size):
            continue
        if per_device < 2:
            _fail(
                "model.mbstd_group_size",
                f"minibatch stddev (groups of {model.mbstd_group_size}) needs at least 2 images "
                f"per device, but batch {batch} of {_stage(stage)} gives {per_device} to each "
                f"of the {devices} devices; use a batch of at least {2 * devices} or "
                "model.mbstd_group_size=1 (off)",
            )
        _fail(
            "model.mbstd_group_size",
            f"{model.mbstd_group_size} does not divide the per-device batch {per_device} of "
            f"{_stage(stage)}; use a divisor of it",
        )


def validate_data(config: ml_collections.ConfigDict) -> sources.Source:
    """Raises ConfigError for the first invalid `data` field (the source checks its own) or a
    count of classes that the data's labels cannot give; returns the resolved source."""
    model, data = config.model, config.data
    if data.labels is None and model.label_size:
        _fail(
            "data.labels",
            f"model.label_size={model.label_size} needs labelled data: set data.labels to "
            f"one of {', '.join(sources.LABEL_SOURCES)}, or model.label_size=0",
        )
    source = sources.resolve(data, model.resolution, model.num_channels)
    if data.labels is not None and model.label_size < 1:
        _fail("model.label_size", "data.labels is set: give the number of classes (>= 1)")
    return source


def validate_model(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first invalid `model` field."""
    model = config.model
    res = model.resolution
    if not isinstance(res, int) or res < 4 or res & (res - 1):
        _fail("model.resolution", f"must be a power of two >= 4, got {res!r}")
    count = stages.num_stages(res)
    if model.label_size < 0:
        _fail("model.label_size", f"must be >= 0 (0: unconditional), got {model.label_size}")
    if model.num_channels not in (1, 3):
        _fail("model.num_channels", f"must be 1 (grayscale) or 3 (RGB), got {model.num_channels}")
    for field in ("latent_size", "fmap_base", "fmap_max"):
        if model[field] < 1:
            _fail(f"model.{field}", f"must be positive, got {model[field]}")
    # nf(s) feeds the blocks of stage s - 1 (and s, in the critic), up to nf(count).
    nf = [models.feature_maps(s, model.fmap_base, model.fmap_max, model.fmap_decay) for s in
          range(count + 1)]  # fmt: skip
    if 0 in nf:
        empty = nf.index(0)
        need = -(-(2.0 ** (count * model.fmap_decay)) // 1)  # the ceiling
        block = stages.stage_resolution(empty - 1)
        _fail(
            "model.fmap_base",
            f"{model.fmap_base} leaves the {block}x{block} layers with no feature maps "
            f"(nf({empty}) = fmap_base / 2**({empty} * fmap_decay) < 1); use at least "
            f"{int(need)} for resolution {res}",
        )
    if model.compute_dtype == "float16":
        _fail(
            "model.compute_dtype",
            "float16 is not supported: there is no loss scaling, so its gradients would "
            "underflow; use bfloat16 (float32's range) or float32",
        )
    if model.compute_dtype not in ("float32", "bfloat16"):
        _fail("model.compute_dtype", f"must be float32 or bfloat16, got {model.compute_dtype!r}")
    if model.label_size and not model.label_scale > 0:
        _fail("model.label_scale", f"must be positive (the official 1), got {model.label_scale}")
    if model.conv_gradients not in ("auto", *conv.GRADIENT_RULES):
        _fail(
            "model.conv_gradients",
            f"must be 'auto' or one of {conv.GRADIENT_RULES}, got {model.conv_gradients!r}",
        )


def validate_data_resolution(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError if the data source has no images at the networks' resolution: for
    networks made for the data without reading it (`--mode=import`), so nothing else of
    `data` is checked."""
    kind = sources.KINDS.get(config.data.source)
    if kind is not None:
        kind.check_resolution(config.model.resolution)


def validate_schedule_lengths(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a phase length that cannot work."""
    sched, count = config.schedule, stages.num_stages(config.model.resolution)
    for field in ("stabilize_images", "fade_images"):
        if sched[field] < 0:
            _fail(f"schedule.{field}", f"must be >= 0, got {sched[field]}")
    if sched.stabilize_images == 0:
        _fail("schedule.stabilize_images", "must be positive")
    if sched.phase_images is not None:
        _per_stage(
            config,
            "schedule.phase_images",
            count,
            lambda n: isinstance(n, int) and n > 0,
            "a positive int",
        )
    if sched.final_stabilize_images is not None and sched.final_stabilize_images < 0:
        _fail("schedule.final_stabilize_images", "must be >= 0")


def validate_schedule(config: ml_collections.ConfigDict, devices: int, processes: int) -> None:
    """`schedule` (batch sizes for the devices and processes, phase lengths, the total) and
    the per-stage learning rates and EMA of `optimizer`."""
    sched, count = config.schedule, stages.num_stages(config.model.resolution)
    if schedule.is_auto(sched.batch_sizes):
        if sched.max_batch_per_device < 1:
            _fail(
                "schedule.max_batch_per_device",
                f"must be >= 1, got {sched.max_batch_per_device}",
            )
    else:
        _check_batch_sizes(config, count, devices, processes)
    _per_stage(config, "optimizer.learning_rates", count, lambda lr: lr > 0, "positive")
    validate_schedule_lengths(config)
    total = schedule.Schedule.from_config(config).total_images
    if total >= 2**31:
        _fail(
            "schedule",
            f"{total} images in all; the step counts images shown in "
            "int32, so a run may show at most 2**31 - 1",
        )
    if not 0.0 <= config.ema_decay < 1.0:
        _fail("ema_decay", f"must be in [0, 1), got {config.ema_decay}")


def validate_benchmark(config: ml_collections.ConfigDict, devices: int) -> None:
    bench_batch = config.benchmark.batch_size
    if bench_batch is not None and (bench_batch < 1 or bench_batch % devices):
        _fail(
            "benchmark.batch_size",
            f"{bench_batch} does not divide by the {devices} devices; use a multiple of {devices}",
        )


def validate_outputs(config: ml_collections.ConfigDict) -> None:
    """`checkpoint` and `logging`: cadences and counts."""
    ckpt, logs = config.checkpoint, config.logging
    for field in (
        "checkpoint.every_images",
        "checkpoint.every_minutes",
        "logging.sample_every_images",
    ):
        section, name = field.split(".")
        if config[section][name] < 0:
            _fail(field, f"must be >= 0 (0 turns it off), got {config[section][name]}")
    for field, value in (
        ("checkpoint.keep", ckpt.keep),
        ("logging.log_every_steps", logs.log_every_steps),
        ("logging.sample_grid", logs.sample_grid),
    ):
        if value < 1:
            _fail(field, f"must be >= 1, got {value}")


def validate_lease(lease: ml_collections.ConfigDict) -> None:
    renew, stale_after = lease.renew_seconds, lease.stale_after_seconds
    if not renew > 0:
        _fail("lease.renew_seconds", f"must be positive, got {renew}")
    if not stale_after >= 2 * renew:
        _fail(
            "lease.stale_after_seconds",
            f"must be at least twice lease.renew_seconds ({renew}), or a live run's lease looks "
            f"stale between two renewals; got {stale_after}",
        )


def validate(
    config: ml_collections.ConfigDict, devices: int, processes: int = 1, *, reads_data: bool = True
) -> None:
    """Raises ConfigError for the first invalid value, section by section. A mode that reads
    no data (the step's benchmark and plan run on random images) passes `reads_data=False`: its
    `data` section need not name a data set."""
    validate_model(config)
    if reads_data:
        validate_data(config)
    validate_schedule(config, devices, processes)
    validate_benchmark(config, devices)
    losses.WGANGP.from_config(config.loss)  # the loss checks its own settings
    validate_outputs(config)
    evaluators.validate(config)
    validate_lease(config.lease)
