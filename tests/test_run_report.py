"""What a person watching a run sees: the ETA from images per stage, a bar or log lines."""

import logging
import re

import pytest
from absl import logging as absl_logging

from progan_jax.training import run_report, schedule
from tests.test_progress_bar import BAR_REDRAWN, RECORD, logging_to, on_a_pty, screen

pytestmark = pytest.mark.usefixtures("isolated_logging")


def test_estimate_adds_each_stages_rate_over_its_images_left(tiny_config):
    """Stage 0 measured at 100 images/s, stage 1 at 50: the time left of a run in stage 1 is
    its phases' images over their stage's rate, and stage 2 borrows stage 1's rate / 4."""
    config = tiny_config  # phases: s0 [0,64), s1 fade [64,128), s1 [128,192), s2 fade, s2
    estimate = run_report.Estimate(schedule.Schedule.from_config(config))
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
    run_schedule = schedule.Schedule.from_config(tiny_config)
    report = run_report.RunReport(run_schedule, every_s=0)
    phase = run_schedule.phase_at(80)
    report.update(72, phase, 0.125)
    report.update(80, phase, 0.25)
    report.close()
    assert "Progress: 80/320 images (25.0%), stage 1 (8x8) fade-in alpha 0.25" in caplog.text
    assert "ETA" in caplog.text


def test_a_record_logged_under_the_run_bar_prints_whole_and_the_bar_redraws(tiny_config, caplog):
    caplog.set_level(logging.INFO)
    run_schedule = schedule.Schedule.from_config(tiny_config)
    phase = run_schedule.phase_at(80)
    root = logging.getLogger()
    with on_a_pty(100) as terminal, logging_to(logging.StreamHandler(terminal.stream)) as handler:
        handlers = list(root.handlers)
        report = run_report.RunReport(run_schedule, every_s=0)
        report.update(72, phase, 0.125)
        absl_logging.info(RECORD)
        line = handler.format(caplog.records[-1])
        report.update(80, phase, 0.25)
        report.close()
        assert root.handlers == handlers  # the log writes to its stream again
        output = terminal.output()
    assert line == RECORD and line in screen(output)  # its first character intact
    assert re.match(BAR_REDRAWN, output.split(line + "\r\n")[1])


def test_a_terminal_of_no_columns_gets_the_progress_lines(tiny_config, caplog):
    """A pty whose size was never set: a bar there would show nothing."""
    caplog.set_level(logging.INFO)
    run_schedule = schedule.Schedule.from_config(tiny_config)
    phase = run_schedule.phase_at(80)
    with on_a_pty(0) as terminal:
        report = run_report.RunReport(run_schedule, every_s=0)
        report.update(72, phase, 0.125)
        report.update(80, phase, 0.25)
        report.close()
        assert terminal.output() == ""  # no bar
    assert "Progress: 80/320 images (25.0%), stage 1 (8x8) fade-in alpha 0.25" in caplog.text
