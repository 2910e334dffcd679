"""What a person watching a run sees: a live bar on a terminal, plain log lines otherwise.

Only process 0 reports. The time left is estimated from images, not steps: a step at 128x128
costs a thousand times one at 4x4, so a step-based ETA (clu's) is wrong at every stage change.
`Estimate` measures each stage's images/s and adds up, phase by phase, the images left over the
rate of their stage; a stage not reached yet borrows the latest measured rate, scaled by its
pixel count (the work per image grows with the pixels).
"""

import contextlib
import logging
import time

import tqdm

from progan_jax.runtime import progress_bar, stages
from progan_jax.training import schedule

_BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"


class Estimate:
    """Images/s per stage, measured between updates, and the time left from them.

    The first interval of each stage is left out: it holds the stage's compilation.
    """

    def __init__(self, run_schedule: schedule.Schedule):
        self.phases = run_schedule.phases
        self.images: dict[int, int] = {}
        self.seconds: dict[int, float] = {}
        self._last: tuple[int, float, int] | None = None  # images shown, time, stage

    def update(self, images_shown: int, stage: int, now: float) -> None:
        if self._last is not None and self._last[2] == stage:
            last_images, last_time, _ = self._last
            self.images[stage] = self.images.get(stage, 0) + images_shown - last_images
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - last_time
        self._last = (images_shown, now, stage)

    def rate(self, stage: int) -> float | None:
        """Measured images/s of `stage`, else the latest measured stage's scaled by pixels."""
        if self.seconds.get(stage, 0.0) > 0:
            return self.images[stage] / self.seconds[stage]
        measured = [s for s in self.seconds if self.seconds[s] > 0]
        if not measured:
            return None
        known = max(measured)
        scale = (stages.stage_resolution(known) / stages.stage_resolution(stage)) ** 2
        return self.images[known] / self.seconds[known] * scale

    def seconds_left(self, images_shown: int) -> float | None:
        total = 0.0
        for phase in self.phases:
            left = phase.end - max(phase.start, images_shown)
            if left <= 0:
                continue
            rate = self.rate(phase.stage)
            if rate is None:
                return None
            total += left / rate
        return total


class RunReport:
    """The training loop's report: stage, phase, alpha, images shown of total, images/s, ETA.

    On a terminal a tqdm bar redraws in place, the log printing above it; elsewhere (a log file,
    a job scheduler) a plain line goes to the log every `every_s` seconds.
    """

    def __init__(self, run_schedule: schedule.Schedule, every_s: float = 60):
        self.total = run_schedule.total_images
        self.enabled = progress_bar.reports()
        self.estimate = Estimate(run_schedule)
        self.every_s = every_s
        self._logged = time.monotonic()
        self._bar: tqdm.tqdm | None = None
        self._closing = contextlib.ExitStack()  # the bar, once shown

    def describe(self, images_shown: int, phase: schedule.Phase, alpha: float) -> str:
        res = stages.stage_resolution(phase.stage)
        kind = "fade-in" if phase.fading else "stabilize"
        rate = self.estimate.rate(phase.stage)
        left = self.estimate.seconds_left(images_shown)
        eta = "?" if left is None else progress_bar.format_duration(left)
        return (
            f"stage {phase.stage} ({res}x{res}) {kind} alpha {alpha:.2f} | "
            f"{rate or 0:,.0f} images/s | ETA {eta}"
        )

    def update(self, images_shown: int, phase: schedule.Phase, alpha: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self.estimate.update(images_shown, phase.stage, now)
        if self._bar is None and progress_bar.on_terminal():
            bar = progress_bar.terminal_bar(
                total=self.total, initial=images_shown, unit="images", unit_scale=True,
                bar_format=_BAR_FORMAT, dynamic_ncols=True,
            )  # fmt: skip
            self._bar = self._closing.enter_context(bar)
        if self._bar is not None:
            self._bar.update(images_shown - self._bar.n)
            self._bar.set_postfix_str(self.describe(images_shown, phase, alpha), refresh=False)
        elif now - self._logged >= self.every_s:
            self._logged = now
            share = 100.0 * images_shown / self.total
            logging.info(
                "Progress: %s/%s images (%.1f%%), %s",
                f"{images_shown:,}", f"{self.total:,}", share,
                self.describe(images_shown, phase, alpha),
            )  # fmt: skip

    def close(self) -> None:
        self._closing.close()
