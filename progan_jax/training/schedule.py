"""The progressive schedule, in images shown (as the official code), never in epochs.

Stage 0 stabilizes; every later stage first fades in (alpha rises linearly from 0 to 1 with the
images shown) and then stabilizes. Each of these is a *phase*. A step's stage, alpha, batch
size and learning rate follow from the count of images shown before it: `Schedule`, built once
from the config, answers them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from progan_jax.runtime import stages


@dataclasses.dataclass(frozen=True)
class Phase:
    index: int
    stage: int
    fading: bool
    start: int  # images shown when the phase begins
    end: int

    def alpha(self, images_shown: int) -> float:
        """Fade-in weight of the newest stage at `images_shown`: linear over a fade, then 1."""
        if not self.fading:
            return 1.0
        return min(max((images_shown - self.start) / (self.end - self.start), 0.0), 1.0)


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """What one stage's train step needs of the schedule, as compile-time constants.

    The batch and learning rate are fixed within a stage, and so is where its fade lies in
    images shown; alpha is then a function of the images shown alone, which the step computes
    on the device from a count it carries, so no per-step value crosses from the host.
    """

    stage: int
    batch_size: int
    learning_rate: float
    fade_start: int  # images shown when the stage's fade-in begins
    fade_end: int  # ... and ends; equal to fade_start when the stage does not fade in

    def alpha(self, images_shown: jax.Array) -> jax.Array:
        """`Phase.alpha` of the step starting at `images_shown` (int32), in float32 on the
        device: the fade's completed fraction, then 1."""
        length = self.fade_end - self.fade_start
        if length == 0:
            return jnp.ones((), jnp.float32)
        done = (images_shown - self.fade_start).astype(jnp.float32)
        return jnp.clip(done / jnp.float32(length), 0.0, 1.0)


def is_auto(batch_sizes) -> bool:
    """Whether `schedule.batch_sizes` asks for the largest batches that fit (plan.py); the
    command line's `--config.schedule.batch_sizes=auto` arrives as ('auto',)."""
    return batch_sizes == "auto" or tuple(batch_sizes) == ("auto",)


def _phase_lengths(config: ml_collections.ConfigDict, stage: int) -> tuple[int, int]:
    """Images of `stage`'s fade-in and of its stabilization (before `final_stabilize_images`).

    `schedule.phase_images`, where set, gives each stage its own length for both phases: a
    short run can show many cheap low-resolution images and few costly high-resolution ones.
    """
    sched = config.schedule
    if sched.phase_images is not None:
        return sched.phase_images[stage], sched.phase_images[stage]
    return sched.fade_images, sched.stabilize_images


def _phases(config: ml_collections.ConfigDict, count: int) -> tuple[Phase, ...]:
    """Every phase of a run of `count` stages, in order; zero-length fades are left out."""
    final = config.schedule.final_stabilize_images
    result, shown = [], 0
    for stage in range(count):
        fade, stabilize = _phase_lengths(config, stage)
        fade = fade if stage > 0 else 0
        stabilize = final if stage == count - 1 and final is not None else stabilize
        for fading, length in ((True, fade), (False, stabilize)):
            if length > 0:
                result.append(Phase(len(result), stage, fading, shown, shown + length))
                shown += length
    return tuple(result)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's phases, batch sizes and learning rates, read from the config once.

    Answers, for a count of images shown, the phase (so the stage), alpha, batch and learning
    rate of the step that starts there. Per-stage tuples in the config are tables by resolution
    (stage s trains at 4 * 2**s whatever the final resolution), so only their first
    `num_stages` values are read, and the nine-value defaults fit every resolution.
    """

    phases: tuple[Phase, ...]
    batch_sizes: tuple[int, ...] | None  # per stage; None while 'auto' is not resolved (plan)
    learning_rates: tuple[float, ...]

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "Schedule":
        count = stages.num_stages(config.model.resolution)
        batches = config.schedule.batch_sizes
        return cls(
            phases=_phases(config, count),
            batch_sizes=None if is_auto(batches) else tuple(batches[:count]),
            learning_rates=tuple(config.optimizer.learning_rates[:count]),
        )

    @property
    def total_images(self) -> int:
        return self.phases[-1].end

    def phase_at(self, images_shown: int) -> Phase:
        """The phase of the step starting at `images_shown` (the last one once past the end)."""
        for phase in self.phases:
            if images_shown < phase.end:
                return phase
        return self.phases[-1]

    def batch_size(self, stage: int) -> int:
        """The global batch at `stage`."""
        if self.batch_sizes is None:
            raise ValueError("schedule.batch_sizes is 'auto': resolve it first (plan.py)")
        return self.batch_sizes[stage]

    def learning_rate(self, stage: int) -> float:
        return self.learning_rates[stage]

    def fades_in(self, stage: int) -> bool:
        return any(p.fading for p in self.phases if p.stage == stage)

    def stage_schedule(self, stage: int, batch: int | None = None) -> StageSchedule:
        """The stage's step constants, at the config's batch or at `batch` (plans try several)."""
        fades = [p for p in self.phases if p.stage == stage and p.fading]
        start, end = (fades[0].start, fades[0].end) if fades else (0, 0)
        batch = self.batch_size(stage) if batch is None else batch
        return StageSchedule(stage, batch, self.learning_rate(stage), start, end)

    def steps_between(self, start: int, end: int) -> int:
        """How many steps take the count of images shown from `start` to at least `end` (past
        the schedule's end, at the last phase's batch, as `phase_at`)."""
        last = self.phases[-1]
        steps, shown = 0, start
        while shown < end:
            phase = self.phase_at(shown)
            batch = self.batch_size(phase.stage)
            stop = end if phase == last else min(phase.end, end)
            count = -(-(stop - shown) // batch)  # ceil: a step may overshoot
            steps, shown = steps + count, shown + count * batch
        return steps
