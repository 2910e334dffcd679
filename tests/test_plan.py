"""--mode=plan and batch_sizes='auto': the step compiled for a TPU slice without a TPU, for
CUDA by lowering, and for this machine's devices, at tiny widths (paper widths take minutes a
stage: benchmarks/plan_tpu.py)."""

import dataclasses
import json

import jax
import pytest

from progan_jax.runtime import accelerators
from progan_jax.training import config_checks, plan, schedule


@pytest.fixture
def compile_once(monkeypatch):
    """`plan.compile_step` remembered by (target, stage, batch) for the test: the programs do
    not depend on the plan's margins, and TPU compiles take seconds each."""
    compiled = {}
    compile_step = plan.compile_step

    def remembered(config, target, stage, per_device_batch):
        key = (target.name, stage, per_device_batch)
        if key not in compiled:
            compiled[key] = compile_step(config, target, stage, per_device_batch)
        return compiled[key]

    monkeypatch.setattr(plan, "compile_step", remembered)
    return remembered


@pytest.fixture
def tpu_config(tiny_config):
    tiny_config.model.conv_gradients = "auto"
    tiny_config.schedule.batch_sizes = (16, 16, 32)
    tiny_config.plan.topology = "v5e:2x2"
    return tiny_config


@pytest.mark.slow
def test_plan_compiles_each_stage_for_a_tpu_slice(tpu_config):
    tpu_config.plan.stages = (0, 2)
    lines = list(plan.plan(tpu_config))
    assert [line["stage"] for line in lines] == [0, 2]
    first, last = lines
    assert (first["platform"], first["device_kind"], first["devices"]) == ("tpu", "TPU v5 lite", 4)
    assert (last["global_batch"], last["per_device_batch"]) == (32, 8)
    assert last["phases"] == ["fade", "stabilize"] and first["phases"] == ["stabilize"]
    for line in lines:
        json.dumps(line, allow_nan=False)  # a JSON line, no NaN
        assert line["fits"] is True
        assert 0 < line["peak_bytes"] < line["device_memory_bytes"]
        assert line["peak_bytes"] >= line["argument_bytes"] > 0
    # 16x16 images cost more than 4x4 ones, and the estimate follows the FLOPs.
    assert last["gflop_per_image"] > 4 * first["gflop_per_image"] > 0
    assert first["peak_tflops_per_device"] == 197.0
    expected = 0.4 * 197e12 * 4 / (last["gflop_per_image"] * 1e9)
    assert last["imgs_per_s_at_assumed"] == pytest.approx(expected, rel=1e-2)


def test_auto_gradient_rules_follow_the_target_not_this_machine(tpu_config):
    tpu_gan = plan.target_gan(tpu_config, plan.make_target("v5e:2x2"))
    here = plan.target_gan(tpu_config, plan.make_target(None))
    assert (tpu_gan.critic.conv_gradients, here.critic.conv_gradients) == ("xla", "matmul")


@pytest.mark.slow
def test_a_stage_that_does_not_fit_is_an_error_naming_it_and_the_batch_that_fits(
    tpu_config, compile_once
):
    """With the budget set between the peaks of 4 and 8 images per device, the plan reports
    stage 0 as not fitting at 8 and finds the largest batch under the budget."""
    target = plan.make_target("v5e:2x2")
    peaks = {b: compile_once(tpu_config, target, 0, b).peak_bytes for b in (2, 4, 8)}
    assert peaks[2] < peaks[4] < peaks[8]
    budget = (peaks[4] + peaks[8]) / 2
    tpu_config.plan.memory_margin = 1 - budget / target.spec.memory_bytes
    tpu_config.plan.stages = (0,)
    tpu_config.schedule.batch_sizes = (32, 16, 16)
    lines = []
    with pytest.raises(plan.PlanError) as error:
        lines.extend(plan.plan(tpu_config))
    assert lines[0]["fits"] is False and lines[0]["global_batch"] == 32
    message = str(error.value)
    assert "stage 0 (4x4) at batch 32" in message
    assert "the largest that fits is 16" in message
    assert isinstance(error.value, config_checks.ConfigError)  # main.py: exit 1, no traceback


def test_largest_fitting_walks_down_from_the_linear_prediction():
    """Peak memory 10 + 3 per image, but 1 more from 6 images on (a layout change): the line
    through 2 and 8 predicts 5.33, and 4 is the largest batch under 26."""
    compiled = []

    def compile_at(batch):
        compiled.append(batch)
        peak = 10 + 3 * batch + (batch >= 6)
        return plan.Compiled(batch, 0.0, 1.0, exhausted_bytes=peak)

    candidates = [2, 4, 6, 8]
    assert plan.largest_fitting(compile_at, candidates, 26).per_device_batch == 4
    assert compiled == [8, 2, 4]
    assert plan.largest_fitting(compile_at, candidates, 100).per_device_batch == 8
    assert plan.largest_fitting(compile_at, candidates, 15) is None


def test_valid_per_device_batches_give_minibatch_stddev_two_images(tiny_config):
    assert plan.valid_per_device_batches(tiny_config, 9) == [2, 3, 4, 8]  # groups of 4
    tiny_config.model.mbstd_group_size = 1
    assert plan.valid_per_device_batches(tiny_config, 3) == [1, 2, 3]


def test_out_of_memory_compile_errors_are_read_as_sizes():
    error = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (18.50G) exceeds available HBM (15.75G)."
    )
    assert plan._exhausted_bytes(error) == int(18.5 * 2**30)
    assert plan._exhausted_bytes(RuntimeError("INTERNAL: something else")) is None


@pytest.mark.slow
def test_cuda_is_lowered_for_and_counted_but_its_memory_is_not_claimed(tiny_config):
    tiny_config.plan.topology = "cuda"
    tiny_config.plan.stages = (1,)
    (line,) = plan.plan(tiny_config)
    assert line["platform"] == "cuda" and line["gflop_per_image"] > 0
    assert not {"peak_bytes", "fits", "device_memory_bytes"} & line.keys()


def test_an_unknown_topology_is_a_config_error(tiny_config):
    tiny_config.plan.topology = "v99:2x2"
    with pytest.raises(config_checks.ConfigError, match=r"config\.plan\.topology: .*v99:2x2"):
        list(plan.plan(tiny_config))


@pytest.mark.slow
def test_auto_batch_sizes_take_the_largest_that_fit_this_machine(
    tiny_config, monkeypatch, compile_once
):
    """Eight CPU devices with a budget between 4 and 8 images per device at 16x16: the last
    stage gets 4 per device (global 32), the cheaper stages the cap of 8 (global 64)."""
    target = plan.make_target(None)
    peaks = {b: compile_once(tiny_config, target, 2, b).peak_bytes for b in (4, 8)}
    small = dataclasses.replace(target, spec=accelerators.DeviceSpec(1.0, None, None, "test"))
    monkeypatch.setattr(plan, "make_target", lambda topology: small)
    tiny_config.plan.memory_margin = 1 - (peaks[4] + peaks[8]) / 2
    tiny_config.schedule.batch_sizes = ("auto",)
    tiny_config.schedule.max_batch_per_device = 8
    config_checks.validate(tiny_config, jax.device_count())
    resolved = plan.resolve_batch_sizes(tiny_config)
    assert resolved.schedule.batch_sizes[2] == 32
    assert resolved.schedule.batch_sizes[0] == 64
    config_checks.validate(resolved, jax.device_count())
    assert schedule.is_auto(tiny_config.schedule.batch_sizes)  # the given config is unchanged
