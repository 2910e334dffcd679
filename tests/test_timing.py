"""`--mode=benchmark`: the step's speed set against the machine's matrix-product rate."""

import pytest

from progan_jax.modes import timing


def test_gemm_peak_is_the_fastest_shapes_rate(monkeypatch):
    seconds = iter([2.0, 0.5])  # the first product takes 4x longer per FLOP than the second
    monkeypatch.setattr(timing, "median_seconds", lambda *a, **k: next(seconds))
    peak = timing.gemm_peak(((4, 8, 16), (2, 2, 2)))
    assert peak == pytest.approx(max(2 * 4 * 8 * 16 / 2.0, 2 * 2 * 2 * 2 / 0.5))


@pytest.mark.slow
def test_benchmark_lines_relate_step_flops_to_the_gemm_peak(tiny_config, monkeypatch):
    # A slow machine's peak (0.01 GFLOP/s), so that the rounded figures of a tiny step keep
    # their digits.
    monkeypatch.setattr(timing, "gemm_peak", lambda: 1e7)
    tiny_config.benchmark.stages = (1,)
    tiny_config.benchmark.warmup_steps = 0
    tiny_config.benchmark.steps = 1
    (line,) = timing.benchmark_train_step(tiny_config)
    step_flops = line["batch"] * 1e7 / line["ceiling_imgs_per_s"]
    step_s = line["batch"] / line["imgs_per_s"]
    assert line["of_gemm_peak"] == pytest.approx(step_flops / step_s / 1e7, rel=0.02)
    assert line["of_gemm_peak"] > 1  # the step outruns the made-up peak: the ceiling is lower
    assert line["ceiling_imgs_per_s"] < line["imgs_per_s"]


def test_benchmark_input_times_the_uint8_stream_per_stage(tiny_config, tmp_path):
    tiny_config.data.synthetic_size = 16
    tiny_config.data.cache_dir = str(tmp_path)
    tiny_config.benchmark.stages = (0, 2)
    tiny_config.benchmark.input_batches = 3
    lines = list(timing.benchmark_input(tiny_config))
    assert [(line["stage"], line["resolution"]) for line in lines] == [(0, 4), (2, 16)]
    assert all(line["imgs_per_s"] > 0 and line["prepare_s"] >= 0 for line in lines)
