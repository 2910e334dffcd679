"""What a person watching a run sees: a live bar on a terminal, plain log lines otherwise.

Only process 0 reports. The time left is estimated from images, not steps: a step at 128x128
costs a thousand times one at 4x4, so a step-based ETA (clu's) is wrong at every stage change.
`Estimate` measures each stage's images/s and adds up, phase by phase, the images left over the
rate of their stage; a stage not reached yet borrows the latest measured rate, scaled by its
pixel count (the work per image grows with the pixels).
"""

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import jax
import ml_collections
import tqdm

from progan_jax import models, schedule

T = TypeVar("T")

_BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"


def _reports() -> bool:
    return jax.process_index() == 0


def _on_terminal() -> bool:
    return sys.stderr.isatty()


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s`, `12s`: a person's reading of a duration."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Estimate:
    """Images/s per stage, measured between updates, and the time left from them.

    The first interval of each stage is left out: it holds the stage's compilation.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.phases = schedule.phases(config)
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
        scale = (models.stage_resolution(known) / models.stage_resolution(stage)) ** 2
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


class RunProgress:
    """The training loop's report: stage, phase, alpha, images shown of total, images/s, ETA.

    On a terminal a tqdm bar redraws in place; elsewhere (a log file, a job scheduler) a plain
    line goes to the log every `every_s` seconds.
    """

    def __init__(self, config: ml_collections.ConfigDict, every_s: float = 60):
        self.total = schedule.total_images(config)
        self.enabled = _reports()
        self.estimate = Estimate(config)
        self.every_s = every_s
        self._logged = time.monotonic()
        self._bar: tqdm.tqdm | None = None

    def describe(self, images_shown: int, phase: schedule.Phase, alpha: float) -> str:
        res = models.stage_resolution(phase.stage)
        kind = "fade-in" if phase.fading else "stabilize"
        rate = self.estimate.rate(phase.stage)
        left = self.estimate.seconds_left(images_shown)
        return (
            f"stage {phase.stage} ({res}x{res}) {kind} alpha {alpha:.2f} | "
            f"{rate or 0:,.0f} images/s | ETA {'?' if left is None else format_duration(left)}"
        )

    def update(self, images_shown: int, phase: schedule.Phase, alpha: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self.estimate.update(images_shown, phase.stage, now)
        if self._bar is None and _on_terminal():
            self._bar = tqdm.tqdm(
                total=self.total, initial=images_shown, unit="images", unit_scale=True,
                bar_format=_BAR_FORMAT, dynamic_ncols=True, file=sys.stderr,
            )  # fmt: skip
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
        if self._bar is not None:
            self._bar.close()


def track(
    items: Iterable[T], total: int | None, description: str, done: int = 0, every_s: float = 30
) -> Iterator[T]:
    """`items`, reporting `description: N of total` while a long preparation consumes them (a
    bar on a terminal, else a log line every `every_s` seconds; process 0 only). `done` items
    were consumed before (a resumed build); `total` None: unknown. Closing this generator
    closes `items` (a reader's worker threads stop with it)."""
    iterator = iter(items)
    try:
        if not _reports():
            yield from iterator
        elif _on_terminal():
            bar = tqdm.tqdm(iterator, total=total, initial=done, desc=description, leave=False)
            yield from bar
        else:
            started = last = time.monotonic()
            of = "" if total is None else f" of {total}"
            for count, item in enumerate(iterator, done + 1):
                yield item
                now = time.monotonic()
                if now - last >= every_s:
                    last = now
                    elapsed = format_duration(now - started)
                    logging.info("%s: %d%s (%s)", description, count, of, elapsed)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
