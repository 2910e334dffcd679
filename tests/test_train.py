"""The training loop in this process: a whole tiny run, its outputs, its progress report.

Kill, resume and multi-process runs need processes of their own (tests/test_main.py,
tests/test_multihost.py); everything else about a run is checked here, where it is fast.
"""

import logging

import jax
import numpy as np
import pytest

from progan_jax import checkpointing, evaluate, reporting, schedule, train, train_step


def guard_transfers(monkeypatch) -> list:
    """Makes every train step run under `jax.transfer_guard("disallow")`: an implicit copy of
    its inputs (a Python float for alpha, a host array) raises. Returns the steps' call log."""
    calls = []
    make = train_step.make_train_step

    def guarded_make(*args, **kwargs):
        step = make(*args, **kwargs)

        def guarded(*inputs):
            calls.append(len(inputs))
            with jax.transfer_guard("disallow"):
                return step(*inputs)

        return guarded

    monkeypatch.setattr(train_step, "make_train_step", guarded_make)
    return calls


def test_tiny_run_in_process(tmp_path, tiny_config, caplog, monkeypatch):
    """Trains all three stages with every copy to the devices explicit, then evaluates it."""
    config = tiny_config
    config.logging.profile_steps = 2
    config.logging.profile_stage = 1
    caplog.set_level(logging.INFO)
    calls = guard_transfers(monkeypatch)
    state = train.train_and_evaluate(config, str(tmp_path))

    total = schedule.total_images(config)
    assert int(state.step) == schedule.steps_between(config, 0, total) == len(calls)
    checkpointer = checkpointing.Checkpointer(tmp_path)
    try:
        assert checkpointer.latest_images_shown() == total
    finally:
        checkpointer.close()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        f"{n:09d}.png"
        for n in (64, 192, 320)  # the ends of the three stages
    ]
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert "Profiling 2 steps of stage 1" in caplog.text

    config.eval.swd_images = 64
    config.eval.ms_ssim_images = 16
    results = evaluate.evaluate(config, str(tmp_path))
    assert results["images_shown"] == total and results["resolution"] == 16
    assert all(np.isfinite(v) for k, v in results.items() if k.startswith(("swd", "ms_ssim")))


def test_the_guard_catches_an_implicit_copy(tiny_config, monkeypatch):
    from progan_jax import gan as gan_lib
    from progan_jax import parallel

    guard_transfers(monkeypatch)
    mesh = parallel.make_mesh()
    gan, state = gan_lib.initialize(tiny_config, mesh)
    reals = parallel.global_batch(np.zeros((8, 4, 4, 3), np.float32), mesh)
    step = train_step.make_train_step(gan, mesh, 0)
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        step(state, reals, 1.0, 1e-3)


def test_estimate_adds_each_stages_rate_over_its_images_left(tiny_config):
    """Stage 0 measured at 100 images/s, stage 1 at 50: the time left of a run in stage 1 is
    its phases' images over their stage's rate, and stage 2 borrows stage 1's rate / 4."""
    config = tiny_config  # phases: s0 [0,64), s1 fade [64,128), s1 [128,192), s2 fade, s2
    estimate = reporting.Estimate(config)
    estimate.update(0, stage=0, now=0.0)
    estimate.update(40, stage=0, now=0.4)  # 100 images/s
    assert estimate.rate(0) == pytest.approx(100)
    assert estimate.rate(2) == pytest.approx(100 / 16)  # borrowed, 16x the pixels
    estimate.update(72, stage=1, now=5.0)  # a stage's first interval holds its compile
    estimate.update(96, stage=1, now=5.48)  # 50 images/s
    assert estimate.rate(1) == pytest.approx(50)
    expected = (192 - 96) / 50 + (320 - 192) / (50 / 4)
    assert estimate.seconds_left(96) == pytest.approx(expected)


def test_progress_lines_in_a_log(tiny_config, caplog):
    caplog.set_level(logging.INFO)
    report = reporting.RunProgress(tiny_config, every_s=0)
    phase = schedule.phase_at(tiny_config, 80)
    report.update(72, phase, 0.125)
    report.update(80, phase, 0.25)
    report.close()
    assert "Progress: 80/320 images (25.0%), stage 1 (8x8) fade-in alpha 0.25" in caplog.text
    assert "ETA" in caplog.text


def test_format_duration():
    assert [reporting.format_duration(s) for s in (4.4, 245, 3720, -1)] == [
        "4s",
        "4m05s",
        "1h02m",
        "0s",
    ]
