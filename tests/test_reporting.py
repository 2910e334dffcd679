"""What a person watching sees: the ETA from images per stage, log lines, preparations."""

import logging

import pytest

from progan_jax import reporting, schedule


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


def test_track_reports_a_long_preparation_and_closes_its_source(caplog):
    caplog.set_level(logging.INFO)
    closed = []

    def source():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    tracked = reporting.track(source(), 12, "box-filtering", done=2, every_s=0)
    assert [next(tracked) for _ in range(3)] == [0, 1, 2]
    tracked.close()  # a SIGTERM or an error stops the consumer early
    assert closed == [True]
    assert "box-filtering: 3 of 12" in caplog.text and "box-filtering: 4 of 12" in caplog.text
