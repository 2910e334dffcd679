"""Evaluators (progan_jax.metrics.evaluators): the same objects in training and in
--mode=evaluate, and the best checkpoint they rank."""

import math

import pytest

from progan_jax.metrics import evaluators
from progan_jax.modes import evaluate, generate
from progan_jax.nets.sampling import GeneratorSnapshot
from progan_jax.runtime.errors import ConfigError
from progan_jax.training import checkpointing, periodic_evals, train, trained
from tests.runs import random_inception_weights


def _scalars(workdir, tag: str) -> dict[int, float]:
    import tensorflow as tf

    values = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_training_fid_at_its_cadence_equals_evaluate_mode_and_ranks_the_best(tmp_path, tiny_config):
    """FID every 128 images writes metrics/fid at 128 (stage 1) and 256 (stage 2);
    --mode=evaluate on the checkpoint at 256 gives the same value; it is the best of the last
    stage, kept, and `checkpoint_images_shown=best` draws it."""
    config = tiny_config
    random_inception_weights(tmp_path / "inception.npz")
    config.evals.fid_weights = str(tmp_path / "inception.npz")
    config.evals.fid.every_images = 128
    config.evals.fid.images = 8
    config.evals.swd.every_images = 0
    config.checkpoint.keep = 10
    config.data.cache_dir = str(tmp_path / "cache")
    workdir = tmp_path / "run"
    workdir.mkdir()
    train.train(config, str(workdir))

    fids = _scalars(workdir, "metrics/fid")
    assert sorted(fids) == [128, 256]
    assert all(math.isfinite(v) and v > 0 for v in fids.values())
    assert fids[128] != pytest.approx(fids[256], rel=1e-3)
    config.evals.evaluate = ("fid",)
    config.checkpoint_images_shown = 256
    results = evaluate.evaluate(config, str(workdir))
    assert results["fid"] == pytest.approx(fids[256], rel=1e-4)

    best = 256  # the last stage's only evaluation, whatever stage 1's value
    assert [p.name for p in (workdir / checkpointing.BEST).iterdir()] == [str(best)]
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        record = checkpointer.best()
    finally:
        checkpointer.close()
    want = dict(metric="fid", value=pytest.approx(fids[best]), images_shown=best, stage=2, images=8)
    assert record == want
    config.checkpoint_images_shown = "best"
    assert trained.load_generator(config, str(workdir), "best").images_shown == best
    config.generate.num_images, config.generate.grid, config.generate.keyframes = 2, 1, 1
    assert generate.write_generated(config, str(workdir))["images_shown"] == best


def _snapshot(stage: int, images_shown: int) -> GeneratorSnapshot:
    return GeneratorSnapshot(None, None, stage, 1.0, images_shown)


def test_the_best_checkpoint_is_the_best_of_the_latest_stage(tiny_config):
    """Values at two resolutions do not compare: a later stage's first value is the best; a
    worse value, a NaN, an infinity or an earlier stage's value is not; nor a record of the
    metric on another count of images."""
    evals = periodic_evals.PeriodicEvals(tiny_config, None, best=None)
    assert evals.improved({"fid": 50.0}, _snapshot(1, 100))["value"] == 50.0
    assert evals.improved({"fid": 60.0}, _snapshot(1, 200)) is None
    assert evals.improved({"fid": 90.0}, _snapshot(2, 300))["images_shown"] == 300
    assert evals.improved({"fid": 1.0}, _snapshot(1, 400)) is None
    assert evals.improved({"fid": float("nan")}, _snapshot(2, 500)) is None
    assert evals.improved({"fid": float("inf")}, _snapshot(3, 550)) is None
    assert evals.improved({"swd_x1e3_avg": 1.0}, _snapshot(2, 600)) is None  # not the metric
    assert evals.improved({"fid": 80.0}, _snapshot(2, 700))["value"] == 80.0
    assert evals.best == dict(metric="fid", value=80.0, images_shown=700, stage=2, images=50000)
    resumed = periodic_evals.PeriodicEvals(tiny_config, None, best=evals.best)
    assert resumed.improved({"fid": 85.0}, _snapshot(2, 800)) is None
    tiny_config.evals.fid.images = 10000  # a resumed run measuring another way starts afresh
    other = periodic_evals.PeriodicEvals(tiny_config, None, best=evals.best)
    assert other.improved({"fid": 85.0}, _snapshot(2, 800))["value"] == 85.0


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("evals.evaluate", ("swd", "is"), "evals.evaluate: unknown evaluators ['is']"),
        ("evals.swd.images", 1, "evals.swd.images: must be at least 2"),
        ("checkpoint.best_metric", "ms_ssim", "checkpoint.best_metric: 'ms_ssim' does not rank"),
    ],
)
def test_evaluator_settings_are_checked_by_name(tiny_config, field, value, says):
    section, *rest = field.split(".")
    target = tiny_config[section]
    for name in rest[:-1]:
        target = target[name]
    target[rest[-1]] = value
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        evaluators.validate(tiny_config)


def test_fid_while_training_needs_its_weights_at_the_start(tiny_config):
    """A plan or a benchmark of the same config does not: only training asks for them."""
    tiny_config.evals.fid.every_images = 1000
    evaluators.validate(tiny_config)
    with pytest.raises(ConfigError, match=r"evals\.fid\.every_images: FID while training needs"):
        periodic_evals.PeriodicEvals(tiny_config, None, best=None)


def test_training_runs_the_evaluators_with_a_cadence(tiny_config):
    tiny_config.evals.ms_ssim.every_images = 100
    assert evaluators.in_training(tiny_config) == ("swd", "ms_ssim")  # tiny: SWD every 64


def test_each_evaluator_skips_what_it_cannot_measure(tiny_config):
    names = ("swd", "class_swd", "ms_ssim")
    built = {e.name: e for e in evaluators.build(tiny_config, names, None)}
    assert "needs 16x16 images or more" in built["swd"].skip_reason(_snapshot(1, 0))
    assert built["swd"].skip_reason(_snapshot(2, 0)) is None
    assert built["class_swd"].skip_reason(_snapshot(2, 0)) == "the generator is unconditional"
    assert built["ms_ssim"].skip_reason(_snapshot(2, 0)) is None
    assert evaluators.run(built.values(), _snapshot(0, 0), quiet=True) == {}  # 4x4: none apply
