"""Config validation: a bad value is reported with its field before anything is built."""

import pytest

from configs import tiny
from progan_jax.nets import models
from progan_jax.training import config_checks


def _at_256(config, fmap_base: int):
    config.model.resolution = 256
    config.model.fmap_base = fmap_base
    config.optimizer.learning_rates = (2e-3,) * 7
    config.schedule.batch_sizes = (8,) * 7
    return config


def test_fmap_base_too_small_for_the_resolution_names_the_field(tiny_config):
    """fmap_base 64 gives nf(7) = 64 / 2**7 = 0 maps to the 256x256 block (which used to fail
    later with a ZeroDivisionError in the weight scaling)."""
    config = _at_256(tiny_config, 64)
    with pytest.raises(config_checks.ConfigError, match=r"config\.model\.fmap_base: 64 .*256x256"):
        config_checks.validate(config, devices=1)
    with pytest.raises(config_checks.ConfigError, match="use at least 128 for resolution 256"):
        config_checks.validate(config, devices=1)


def test_smallest_fmap_base_for_the_resolution_is_valid(tiny_config):
    config = _at_256(tiny_config, 128)
    config_checks.validate(config, devices=1)
    nf = [models.feature_maps(s, 128, config.model.fmap_max) for s in range(8)]
    assert min(nf) == 1


def test_per_stage_tuple_shorter_than_the_run_says_which_resolutions_it_covers(tiny_config):
    tiny_config.model.resolution = 32  # four stages; tiny's tuples stop at 16x16
    tiny_config.model.fmap_base = 128
    with pytest.raises(
        config_checks.ConfigError,
        match=r"config\.schedule\.batch_sizes: has 3 value\(s\) \(4x4 up to 16x16\) but "
        r"resolution 32 trains 4 stages, 4x4 up to 32x32; give at least 4",
    ):
        config_checks.validate(tiny_config, devices=1)


def test_per_stage_values_past_the_run_are_unused(tiny_config):
    tiny_config.schedule.batch_sizes = (16, 16, 16, 3)  # 3 would not divide by 8 devices
    tiny_config.optimizer.learning_rates = (2e-3, 2e-3, 2e-3, -1.0)
    config_checks.validate(tiny_config, devices=8)


def test_bad_per_stage_value_names_stage_and_resolution(tiny_config):
    tiny_config.schedule.batch_sizes = (16, 12, 16)
    with pytest.raises(config_checks.ConfigError, match=r"batch 12 of stage 1 \(8x8\) does not"):
        config_checks.validate(tiny_config, devices=8)


def test_one_image_per_device_with_minibatch_stddev_is_an_error(tiny_config):
    """A group of one image has no deviation: the layer would feed the critic a constant."""
    tiny_config.schedule.batch_sizes = (16, 8, 16)
    with pytest.raises(
        config_checks.ConfigError,
        match=r"config\.model\.mbstd_group_size: .* batch 8 of stage 1 \(8x8\) gives 1 to each",
    ):
        config_checks.validate(tiny_config, devices=8)
    tiny_config.model.mbstd_group_size = 1  # off: one image per device is fine
    config_checks.validate(tiny_config, devices=8)


def test_config_checks_cover_devices_groups_and_sources():
    config = tiny.get_config()
    config_checks.validate(config, devices=8)
    cases = [
        ("schedule.batch_sizes", (12, 8, 8), 8, "does not divide by the 8 devices"),
        ("benchmark.batch_size", 6, 8, "does not divide by the 8 devices"),
        ("model.mbstd_group_size", 3, 1, "does not divide the per-device batch 16"),
        ("optimizer.learning_rates", (1e-3, 0.0, 1e-3), 1, "must be positive"),
        ("model.num_channels", 2, 1, "must be 1 (grayscale) or 3"),
        ("data.source", "nope", 1, "must be one of"),
        ("ema_decay", 1.0, 1, "must be in [0, 1)"),
        ("checkpoint.keep", 0, 1, "must be >= 1"),
    ]
    for field, value, devices, message in cases:
        config = tiny.get_config()
        section, _, name = field.rpartition(".")
        (config[section] if section else config)[name] = value
        with pytest.raises(config_checks.ConfigError, match=f"config.{field}: .*") as error:
            config_checks.validate(config, devices=devices)
        assert message in str(error.value)
    config = tiny.get_config()
    config.data.source = "image_folder"
    with pytest.raises(config_checks.ConfigError, match=r"config\.data\.path"):
        config_checks.validate(config, devices=1)


def test_batches_must_divide_by_the_processes():
    """Checked once, here: the stream's per-process rows and the mesh's global batches rely on
    it (a batch of 8 over 3 processes would leave rows to no one)."""
    config = tiny.get_config()
    config.schedule.batch_sizes = (24, 24, 24)
    config_checks.validate(config, devices=12, processes=3)
    with pytest.raises(config_checks.ConfigError, match="does not divide by 5 processes"):
        config_checks.validate(config, devices=8, processes=5)


def test_labels_must_suit_the_source_and_the_networks():
    def fails(field: str, message: str, **values) -> None:
        config = tiny.get_config()  # synthetic faces
        for name, value in values.items():
            section, key = name.split("__")
            config[section][key] = value
        with pytest.raises(config_checks.ConfigError, match=f"config.{field}: ") as error:
            config_checks.validate(config, devices=1)
        assert message in str(error.value)

    fails("data.labels", "needs labelled data", model__label_size=3)
    fails("data.labels", "must be one of", data__labels="colour", model__label_size=3)
    fails(
        "data.labels",
        "'subfolders' labels image_folder data, not data.source='synthetic'",
        data__labels="subfolders",
        model__label_size=3,
    )
    fails("model.label_size", "give the number of classes", data__labels="skin_tone")
    fails(
        "model.label_scale",
        "must be positive",
        data__labels="skin_tone",
        model__label_size=3,
        model__label_scale=0.0,
    )
    config = tiny.get_config()
    config.data.labels, config.model.label_size = "skin_tone", 3
    config_checks.validate(config, devices=1)


class _Validated(Exception):
    """Raised by the first step after a mode's checks: the checks passed."""


def _stop(*args, **kwargs):
    raise _Validated


@pytest.mark.parametrize("mode", ["benchmark", "plan"])
def test_modes_that_read_no_data_do_not_ask_for_it(mode, monkeypatch):
    """`--mode=benchmark` times the step on random images and `--mode=plan` compiles it: an
    image folder that is not set yet (configs/short_budget.py) must not stop them."""
    from progan_jax.modes import timing
    from progan_jax.training import plan

    config = tiny.get_config()
    config.data.source, config.data.path = "image_folder", ""
    if mode == "benchmark":
        monkeypatch.setattr(timing.parallel, "make_mesh", _stop)
        run = timing.benchmark_train_step
    else:
        monkeypatch.setattr(plan, "memory_budget", _stop)
        run = plan.plan
    with pytest.raises(_Validated):
        list(run(config))
