"""The progressive schedule, in images shown (as the official code), never in epochs.

Stage 0 stabilizes; every later stage first fades in (alpha rises linearly from 0 to 1 with the
images shown) and then stabilizes. Each of these is a *phase*. A step's stage, alpha, batch
size and learning rate follow from the count of images shown before it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from progan_jax import stages


@dataclasses.dataclass(frozen=True)
class Phase:
    index: int
    stage: int
    fading: bool
    start: int  # images shown when the phase begins
    end: int


def phase_lengths(config: ml_collections.ConfigDict, stage: int) -> tuple[int, int]:
    """Images of `stage`'s fade-in and of its stabilization (before `final_stabilize_images`).

    `schedule.phase_images`, where set, gives each stage its own length for both phases: a
    short run can show many cheap low-resolution images and few costly high-resolution ones.
    """
    sched = config.schedule
    if sched.phase_images is not None:
        return sched.phase_images[stage], sched.phase_images[stage]
    return sched.fade_images, sched.stabilize_images


def phases(config: ml_collections.ConfigDict) -> list[Phase]:
    """Every phase of the run, in order; zero-length fades are left out."""
    last = stages.num_stages(config.model.resolution) - 1
    final = config.schedule.final_stabilize_images
    result, shown = [], 0
    for stage in range(last + 1):
        fade, stabilize = phase_lengths(config, stage)
        fade = fade if stage > 0 else 0
        stabilize = final if stage == last and final is not None else stabilize
        for fading, length in ((True, fade), (False, stabilize)):
            if length > 0:
                result.append(Phase(len(result), stage, fading, shown, shown + length))
                shown += length
    return result


def total_images(config: ml_collections.ConfigDict) -> int:
    return phases(config)[-1].end


def phase_at(config: ml_collections.ConfigDict, images_shown: int) -> Phase:
    """The phase a step starting at `images_shown` belongs to (the last one once past the end)."""
    all_phases = phases(config)
    for phase in all_phases:
        if images_shown < phase.end:
            return phase
    return all_phases[-1]


def alpha(phase: Phase, images_shown: int) -> float:
    """Fade-in weight of the newest stage: linear over a fade, 1 when stabilizing."""
    if not phase.fading:
        return 1.0
    return min(max((images_shown - phase.start) / (phase.end - phase.start), 0.0), 1.0)


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
        """`alpha(phase, images_shown)` of the step starting at `images_shown` (int32), in
        float32: the fade's completed fraction, then 1."""
        length = self.fade_end - self.fade_start
        if length == 0:
            return jnp.ones((), jnp.float32)
        done = (images_shown - self.fade_start).astype(jnp.float32)
        return jnp.clip(done / jnp.float32(length), 0.0, 1.0)


def stage_schedule(
    config: ml_collections.ConfigDict, stage: int, batch: int | None = None
) -> StageSchedule:
    """The stage's schedule, at the config's batch or at `batch` (plans try several)."""
    fades = [p for p in phases(config) if p.stage == stage and p.fading]
    start, end = (fades[0].start, fades[0].end) if fades else (0, 0)
    batch = batch_size(config, stage) if batch is None else batch
    return StageSchedule(stage, batch, learning_rate(config, stage), start, end)


def is_auto(batch_sizes) -> bool:
    """Whether `schedule.batch_sizes` asks for the largest batches that fit (plan.py); the
    command line's `--config.schedule.batch_sizes=auto` arrives as ('auto',)."""
    return batch_sizes == "auto" or tuple(batch_sizes) == ("auto",)


def batch_size(config: ml_collections.ConfigDict, stage: int) -> int:
    """The global batch at `stage`. Per-stage tuples are tables by resolution (stage s trains at
    4 * 2**s whatever the final resolution), so a run reads only their first values and the
    nine-value defaults fit every resolution (see configs/default.py)."""
    return config.schedule.batch_sizes[stage]


def learning_rate(config: ml_collections.ConfigDict, stage: int) -> float:
    """The learning rate at `stage`, read like `batch_size`."""
    return config.optimizer.learning_rates[stage]


def steps_between(config: ml_collections.ConfigDict, start: int, end: int) -> int:
    """How many steps take the count of images shown from `start` to at least `end` (past the
    schedule's end, at the last phase's batch, as `phase_at`)."""
    last = phases(config)[-1]
    steps, shown = 0, start
    while shown < end:
        phase = phase_at(config, shown)
        batch = batch_size(config, phase.stage)
        stop = end if phase == last else min(phase.end, end)
        count = -(-(stop - shown) // batch)  # ceil: a step may overshoot
        steps, shown = steps + count, shown + count * batch
    return steps
