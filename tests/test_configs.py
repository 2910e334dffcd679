"""The configs: the paper configs hold the official preset's numbers, and every resolution from
8 to 1024 runs with only `--config.model.resolution` changed."""

import importlib
import pathlib

import pytest

from configs import celeba128, celeba_hq1024, default, image_folder
from progan_jax.runtime import stages
from progan_jax.training import config_checks, schedule

# Official config.py:99, `preset-v1-1gpu` (the paper's configuration), with train.py:93-99 for
# what it leaves at the defaults (learning rates 0.001, no per-resolution lrate_dict).
PRESET_V1_1GPU = dict(
    minibatch_base=16,
    minibatch_dict={256: 14, 512: 6, 1024: 3},
    lrate=0.001,
    mbstd_group_size=16,
    lod_training_kimg=800,
    lod_transition_kimg=800,
    total_kimg=19000,
)

# Official config.py:103, `preset-v2-8gpus`, under config.py:106's fp32 per-GPU caps times 8
# ({256: 128, 512: 64, 1024: 32}, none of which binds), with train.py:91-92's 600k phases and
# config.py:103's G/D lrate_dict (the same for both networks).
PRESET_V2_8GPUS = dict(
    minibatch_base=32,
    minibatch_dict={4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
    lrate_dict={128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
    lrate=0.001,
    mbstd_group_size=4,
    lod_training_kimg=600,
    lod_transition_kimg=600,
    total_kimg=12000,
)

# configs/default.py: train.py's schedule (minibatch_base 16, no minibatch_dict, lr 0.001) on
# one GPU under config.py:106's fp32 per-GPU caps.
OFFICIAL_DEFAULTS = dict(minibatch_base=16, minibatch_dict={512: 8, 1024: 4}, lrate=0.001)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESOLUTIONS = [2**n for n in range(3, 11)]  # 8 .. 1024


def _stages(config) -> range:
    return range(stages.num_stages(config.model.resolution))


def _assert_per_stage_values(config, preset: dict) -> None:
    for stage in _stages(config):
        res = stages.stage_resolution(stage)
        want = preset["minibatch_dict"].get(res, preset["minibatch_base"])
        assert schedule.Schedule.from_config(config).batch_size(stage) == want, res
        assert schedule.Schedule.from_config(config).learning_rate(stage) == preset["lrate"], res


@pytest.mark.parametrize("module", [celeba128, celeba_hq1024])
def test_paper_configs_hold_the_official_preset(module):
    config = module.get_config()
    preset = PRESET_V1_1GPU
    _assert_per_stage_values(config, preset)
    assert config.model.mbstd_group_size == preset["mbstd_group_size"]
    assert config.schedule.stabilize_images == preset["lod_training_kimg"] * 1000
    assert config.schedule.fade_images == preset["lod_transition_kimg"] * 1000
    assert schedule.Schedule.from_config(config).total_images == preset["total_kimg"] * 1000
    assert config.data.mirror_augment  # config.py's CelebA and CelebA-HQ lines
    assert (config.evals.fid.every_images, config.evals.fid.images) == (500_000, 50_000)
    assert config.checkpoint.best_metric == "fid"
    config_checks.validate(config, devices=1)  # FID's weights are asked for by training alone


def test_cpu_configs_compute_no_fid_while_training():
    from configs import demo, short_budget

    for module in (demo, short_budget, image_folder, default):
        assert module.get_config().evals.fid.every_images == 0


def test_eight_device_config_holds_preset_v2_8gpus():
    from configs import celeba_hq1024_8dev

    config = celeba_hq1024_8dev.get_config()
    preset = PRESET_V2_8GPUS
    for stage in _stages(config):
        res = stages.stage_resolution(stage)
        assert schedule.Schedule.from_config(config).batch_size(stage) == preset[
            "minibatch_dict"
        ].get(res, preset["minibatch_base"])
        assert schedule.Schedule.from_config(config).learning_rate(stage) == preset[
            "lrate_dict"
        ].get(res, preset["lrate"])
    assert config.model.mbstd_group_size == preset["mbstd_group_size"]
    assert config.schedule.stabilize_images == preset["lod_training_kimg"] * 1000
    assert config.schedule.fade_images == preset["lod_transition_kimg"] * 1000
    assert schedule.Schedule.from_config(config).total_images == preset["total_kimg"] * 1000
    for devices in (8, 16):
        config_checks.validate(config, devices=devices)
    with pytest.raises(config_checks.ConfigError, match="needs at least 2 images per device"):
        config_checks.validate(config, devices=32)  # 1024x1024: 32 images on 32 devices


def test_the_one_device_paper_config_stops_on_eight_devices():
    """batch 14 at 256x256 does not split over 8 devices: the reason for the 8-device preset."""
    with pytest.raises(config_checks.ConfigError, match="batch 14 of stage 6"):
        config_checks.validate(celeba_hq1024.get_config(), devices=8)


def _with_resolution(module, resolution: int):
    """The config as `--config.model.resolution=R` leaves it: set after `get_config()`."""
    config = module.get_config()
    if module is image_folder:
        config.data.path = "/data/faces"  # required by this config, not per-stage
    config.model.resolution = resolution
    return config


# (config, the per-stage values it holds, the largest resolution of its data set)
RESOLUTION_CASES = [
    (module, preset, resolution)
    for module, preset, largest in [
        (default, OFFICIAL_DEFAULTS, 128),  # celeb_a crops are 128x128
        (image_folder, OFFICIAL_DEFAULTS, 1024),
        (celeba128, PRESET_V1_1GPU, 128),
        (celeba_hq1024, PRESET_V1_1GPU, 1024),
    ]
    for resolution in RESOLUTIONS
    if resolution <= largest
]


@pytest.mark.parametrize(
    "module, preset, resolution",
    RESOLUTION_CASES,
    ids=[f"{m.__name__.split('.')[-1]}-{r}" for m, _, r in RESOLUTION_CASES],
)
def test_any_resolution_with_one_flag(module, preset, resolution):
    config = _with_resolution(module, resolution)
    config_checks.validate(config, devices=1)
    _assert_per_stage_values(config, preset)


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
)
def test_every_shipped_config_validates(name, tmp_path):
    """A recipe edited by hand (the demo, short_budget) must still pass the run's own checks."""
    config = importlib.import_module(f"configs.{name}").get_config()
    if config.data.source == "image_folder":
        config.data.path = str(tmp_path)  # the one field a folder config leaves to the user
    config_checks.validate(config, devices=1)
