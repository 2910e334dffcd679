"""The training loop: schedule -> data -> jitted step -> metrics, samples, checkpoints.

Starting again with the same workdir resumes from its latest checkpoint exactly: the state
holds every parameter, optimizer moment and the RNG key, the progress holds the images shown,
and the data stream is a function of the images shown (see input_pipeline).
"""

import dataclasses
import functools
import logging
import math
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview

from progan_jax.data import input_pipeline
from progan_jax.metrics import evaluators
from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.nets.gan import TrainState
from progan_jax.runtime import (
    agreement,
    collectives,
    interrupt,
    lease,
    parallel,
    paths,
    profiling,
    stages,
)
from progan_jax.runtime.errors import UserError
from progan_jax.training import (
    checkpointing,
    config_checks,
    periodic_evals,
    plan,
    run_report,
    schedule,
    train_step,
)
from progan_jax.training.checkpointing import Progress
from progan_jax.training.periodic_evals import crossed


class NonFiniteLossError(UserError, RuntimeError):
    """The losses went non-finite; the message says which checkpoint is intact."""


class _Decisions:
    """Whether to stop (SIGTERM) or to save (timer) now: the same answer on every process.

    Orbax's save is collective, and so is the next step's all-reduce: processes that disagreed
    would wait for each other in different places for ever. So only process 0's clock times the
    saves, SIGTERM on any process stops all of them, and in a multi-process run the two flags
    are exchanged once per log interval (where the metrics sync the host anyway), never per
    step, which would stall asynchronous dispatch. A single process decides at every step.
    """

    def __init__(self, every_minutes: float, interval_steps: int, held: lease.Lease | None):
        self.every_s = 60.0 * every_minutes
        self.interval_steps = interval_steps
        self.held = held  # process 0's lease of the workdir
        self.last_save = time.monotonic()

    def __call__(self, steps: int) -> tuple[bool, bool]:
        """(stop, save) after `steps` train steps. Raises LeaseError, before anything is
        saved, once another run has taken the workdir over."""
        several = jax.process_count() > 1
        if several and steps % self.interval_steps:
            return False, False
        due = self.every_s > 0 and time.monotonic() - self.last_save > self.every_s
        lost = self.held is not None and self.held.lost.is_set()
        flags = np.array([interrupt.requested(), due and jax.process_index() == 0, lost], np.int32)
        flags = collectives.any_process(flags)
        if flags[2]:
            raise lease.LeaseError(
                "Another run took this workdir's lease over (see the error above): stopped "
                "without saving, so as not to overwrite its checkpoints."
            )
        return bool(flags[0]), bool(flags[1])

    def saved(self) -> None:
        self.last_save = time.monotonic()


STEPS_IN_FLIGHT = 2


@dataclasses.dataclass
class _Interval:
    """Metrics of the steps since the last log line (left on device until then).

    `add` also bounds how far the host runs ahead of the device: it waits for the step
    dispatched `STEPS_IN_FLIGHT` steps earlier. Two keep the device busy; without a bound the
    host queues a whole log interval, and a SIGTERM (or the end of a timed run) would then
    wait for all of it, which at large resolutions outlasts a preemption's grace period.
    """

    metrics: list = dataclasses.field(default_factory=list)
    images: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, metrics: dict, images: int) -> None:
        if len(self.metrics) >= STEPS_IN_FLIGHT:
            jax.block_until_ready(self.metrics[-STEPS_IN_FLIGHT])
        self.metrics.append(metrics)
        self.images += images

    def summary(self) -> dict[str, float]:
        host = jax.device_get(self.metrics)
        means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        means["images_per_s"] = self.images / max(time.perf_counter() - self.started, 1e-9)
        return means


def _transfers_intended(method):
    """Runs a periodic output (samples, SWD, metrics, checkpoints) with host-device copies
    allowed: they copy latents, keys and images on purpose. The loop's transfer guard is for
    the steps, where an implicit copy would cost every step."""

    @functools.wraps(method)
    def allowing(*args, **kwargs):
        with jax.transfer_guard("allow"):
            return method(*args, **kwargs)

    return allowing


class Trainer:
    """Owns the per-run objects; `run` is the loop."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        agreement.check_processes_agree(config)  # first: a lone failure would strand the rest
        config_checks.validate(config, jax.device_count(), jax.process_count())
        self.workdir = paths.resolve(workdir)
        self.lease = lease.hold(self.workdir, config.lease)  # before anything touches the workdir
        config = plan.resolve_batch_sizes(config)  # 'auto': the largest that fit the devices
        self.config = config
        self.gan = gan_lib.GAN.from_config(config)
        self.mesh = parallel.make_mesh()
        self.checkpointer = checkpointing.Checkpointer(self.workdir, config.checkpoint.keep)
        self.writer = metric_writers.create_default_writer(
            str(self.workdir), just_logging=jax.process_index() != 0
        )
        self.schedule = schedule.Schedule.from_config(config)
        grid = config.logging.sample_grid
        self.latents = sampling.fixed_latents(self.gan, config.seed, grid**2)
        self.grid_labels = sampling.grid_labels(self.gan, grid**2, grid)
        self.labels = None  # a conditional run's classes, read with the data (`run`)
        self.label_frequencies = None
        self.reset_optimizers = jax.jit(
            functools.partial(gan_lib.reset_optimizer_states, self.gan),
            out_shardings=parallel.replicated(self.mesh),
            donate_argnums=0,
        )
        self.networks = checkpointing.Networks.of(config)  # with the classes, once read
        model = config.model  # the data named once: a folder's name stats every file
        self.source = input_pipeline.source_of(config.data, model.resolution, model.num_channels)
        self.reals = evaluators.StageReals(self.source, model.label_size)  # and the labels
        self.evals = collectives.together(  # e.g. Inception weights missing on one host
            "loading the evaluators",
            UserError,
            lambda: periodic_evals.PeriodicEvals(config, self.reals, self.checkpointer.best()),
        )
        self.interval = _Interval()
        self.report = run_report.RunReport(self.schedule)
        self.decisions = _Decisions(
            config.checkpoint.every_minutes, config.logging.log_every_steps, self.lease
        )
        self._sampled_at = -1
        self._steps: dict[int, object] = {}

    # ------------------------------------------------------------------ state and progress

    def initial(self) -> tuple[TrainState, Progress]:
        state = gan_lib.create_train_state(
            self.gan, jax.random.key(self.config.seed), parallel.replicated(self.mesh)
        )
        saved_config = checkpointing.saved_config(self.workdir)
        if self.checkpointer.latest_images_shown() is not None and saved_config is not None:
            agreement.check_resume(saved_config, self.config)
        restored = self.checkpointer.restore(state)
        if restored is not None:
            state, progress = restored
            logging.info("Resuming from %d images shown.", progress.images_shown)
            return state, progress
        self._describe_new_run(state)
        return state, Progress(images_shown=0, phase_index=self.schedule.phase_at(0).index)

    def _describe_new_run(self, state: TrainState) -> None:
        checkpointing.write_config(self.workdir, self.config)
        hparams = agreement.config_fields(self.config)
        self.writer.write_hparams({k: _scalar(v) for k, v in hparams.items()})
        for name, params in (
            ("generator", state.generator_params),
            ("critic", state.critic_params),
        ):
            logging.info(
                "%s parameters:\n%s", name, parameter_overview.get_parameter_overview(params)
            )

    def _describe_classes(self, frequencies: np.ndarray) -> None:
        """The class of each label id and its share of the data, kept in every checkpoint
        (and classes.json), so that a class id of the run (generate.labels, an export's
        input) can be read."""
        names = self.labels.names
        shares = {name: round(float(f), 6) for name, f in zip(names, frequencies, strict=True)}
        classes = {"names": list(names), "shares": shares}
        self.networks = checkpointing.Networks.of(self.config, classes)
        checkpointing.write_classes(self.workdir, classes)

    def images_shown_on_mesh(self, images_shown: int) -> jax.Array:
        """The step's count of images shown, copied to every device once per stage: the step
        returns it advanced, so alpha needs no copy from the host per step."""
        return jax.device_put(np.int32(images_shown), parallel.replicated(self.mesh))

    def step_fn(self, stage: int):
        if stage not in self._steps:
            self._steps[stage] = train_step.make_train_step(
                self.gan, self.mesh, self.schedule.stage_schedule(stage), self.label_frequencies
            )
        return self._steps[stage]

    # ------------------------------------------------------------------------- outputs

    @_transfers_intended
    def write_samples(self, state: TrainState, progress: Progress, stage: int, alpha: float):
        if self._sampled_at == progress.images_shown:
            return
        self._sampled_at = progress.images_shown
        images = sampling.host_images(
            self.gan,
            state.generator_ema_params,
            self.latents,
            stage,
            alpha,
            np.uint8,
            self.grid_labels,
        )
        columns, resolution = self.config.logging.sample_grid, self.config.model.resolution
        preview = sampling.image_grid(images, columns, min(resolution, sampling.PREVIEW_TILE))
        self.writer.write_images(progress.images_shown, {"samples": preview[None]})
        if jax.process_index() == 0:
            path = self.workdir / "samples" / f"{progress.images_shown:09d}.png"
            sampling.save_png(path, sampling.image_grid(images, columns, resolution))
            logging.info("Samples: %s", path)

    @_transfers_intended
    def evaluate(self, state: TrainState, progress: Progress, phase, alpha, due) -> None:
        """The due evaluators' metrics of G_ema (TensorBoard `metrics/...`); a new best
        `checkpoint.best_metric` keeps the state as the best checkpoint."""
        generator = sampling.GeneratorSnapshot(
            self.gan,
            state.generator_ema_params,
            phase.stage,
            alpha,
            progress.images_shown,
            self.label_frequencies,
        )
        with interrupt.deferred():  # collective: SIGTERM stops the loop after it, with a save
            results = self.evals.run(due, generator)
        if results:
            self.writer.write_scalars(progress.images_shown, tensorboard_tags(results))
        record = self.evals.improved(results, generator)
        if record is not None:
            progress = self._checked(progress, phase, alpha)
            self.checkpointer.save_best(state, progress, self.networks, record)

    @_transfers_intended
    def flush_metrics(self, progress: Progress, phase: schedule.Phase) -> None:
        """Writes the mean metrics since the last call; stops the run if any is not finite.

        Alpha is among them: the mean of the values the steps faded with, computed on the
        device, so the log shows the fade the losses were computed at, not the host's copy.
        """
        if not self.interval.metrics:
            return
        scalars, self.interval = self.interval.summary(), _Interval()
        if not all(math.isfinite(v) for v in scalars.values()):
            previous = self.checkpointer.latest_images_shown()
            bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
            raise NonFiniteLossError(
                f"Non-finite loss near {progress.images_shown} images shown: {bad}. Stopped "
                f"without saving; the last good checkpoint ({previous} images shown) is in "
                "place. Lower optimizer.learning_rates (or use float32 compute) and start the "
                "same command again to resume from it."
            )
        seconds_left = self.report.estimate.seconds_left(progress.images_shown)
        scalars.update(
            stage=phase.stage,
            resolution=stages.stage_resolution(phase.stage),
            batch_size=self.schedule.batch_size(phase.stage),
            learning_rate=self.schedule.learning_rate(phase.stage),
            kimg=progress.images_shown / 1000,
        )
        if seconds_left is not None:
            scalars["eta_hours"] = seconds_left / 3600
        self.writer.write_scalars(progress.images_shown, tensorboard_tags(scalars))

    def _checked(self, progress: Progress, phase: schedule.Phase, alpha) -> Progress:
        """`progress` as a checkpoint keeps it (with the stage and alpha its G_ema runs at),
        after the metrics not yet logged are checked: never checkpoint a broken state."""
        self.flush_metrics(progress, phase)
        return dataclasses.replace(progress, stage=phase.stage, alpha=float(alpha))

    @_transfers_intended
    def save(self, state, progress: Progress, phase, alpha, *, stage_end: bool = False) -> None:
        progress = self._checked(progress, phase, alpha)
        self.checkpointer.save(state, progress, stage_end=stage_end, networks=self.networks)
        self.decisions.saved()
        logging.info("Checkpoint at %d images shown.", progress.images_shown)

    @_transfers_intended
    def end_stage(self, state, progress: Progress) -> None:
        phase = self.schedule.phases[progress.phase_index]
        alpha = phase.alpha(progress.images_shown)
        self.write_samples(state, progress, phase.stage, alpha)
        self.save(state, progress, phase, alpha, stage_end=True)
        logging.info(
            "End of stage %d at %d images: checkpoint kept.", phase.stage, progress.images_shown
        )

    # --------------------------------------------------------------------------- loop

    def run(self) -> TrainState:
        config, sched = self.config, self.schedule
        every = config.checkpoint.every_images
        profiler = profiling.StepTrace(config.logging, self.workdir)
        stage, batches = None, None
        try:
            state, progress = self.initial()
            steps = int(jax.device_get(state.step))  # counted on the host from here on
            with metric_writers.ensure_flushes(self.writer), jax.transfer_guard("disallow"):
                first_stage = sched.phase_at(progress.images_shown).stage
                source = self.source
                input_pipeline.prepare_all_stages(source, first_stage)  # no box filter mid-run
                self.labels = self.reals.labels  # read once, for the stream and the evaluators
                if self.labels is not None:
                    frequencies = input_pipeline.class_frequencies(self.labels, config.data)
                    self.label_frequencies = frequencies
                    self._describe_classes(frequencies)
                while progress.images_shown < sched.total_images:
                    phase = sched.phase_at(progress.images_shown)
                    if phase.index != progress.phase_index:  # entering a new phase
                        if phase.stage != sched.phases[progress.phase_index].stage:
                            self.end_stage(state, progress)
                        if config.optimizer.reset_at_phase_boundary:
                            state = self.reset_optimizers(state)
                        progress = dataclasses.replace(progress, phase_index=phase.index)
                    if phase.stage != stage:  # a new pipeline and step, nothing else
                        stage, batch = phase.stage, sched.batch_size(phase.stage)
                        res = stages.stage_resolution(stage)
                        logging.info("Stage %d: %dx%d, batch %d.", stage, res, res, batch)
                        local = input_pipeline.stage_train_batches(
                            config, source, stage, progress.images_shown, batch, self.labels
                        )
                        batches = input_pipeline.prefetch_to_mesh(local, self.mesh)
                        shown = self.images_shown_on_mesh(progress.images_shown)

                    alpha = phase.alpha(progress.images_shown)
                    profiler.before_step(stage, state)
                    state, shown, metrics = self.step_fn(stage)(state, next(batches), shown)
                    before, steps = progress.images_shown, steps + 1
                    progress = dataclasses.replace(progress, images_shown=before + batch)
                    self.interval.add(metrics, batch)
                    self.report.update(progress.images_shown, phase, alpha)

                    if steps % config.logging.log_every_steps == 0:
                        self.flush_metrics(progress, phase)
                    if crossed(before, progress.images_shown, config.logging.sample_every_images):
                        self.write_samples(state, progress, stage, alpha)
                    due = self.evals.due(before, progress.images_shown)
                    if due:
                        self.evaluate(state, progress, phase, alpha, due)
                    stopping, timed = self.decisions(steps)
                    if stopping or timed or crossed(before, progress.images_shown, every):
                        self.save(state, progress, phase, alpha)
                    if stopping:
                        self.checkpointer.wait()
                        logging.warning(
                            "Stopped by SIGTERM at %d images shown; checkpoint saved.",
                            progress.images_shown,
                        )
                        return state
                self.end_stage(state, progress)
        finally:
            profiler.stop()
            self.report.close()
            self.evals.close()
            self.checkpointer.close()
            if self.lease is not None:  # held by process 0
                self.lease.release()
        return state


# TensorBoard's sections: each scalar under the group it belongs to (`loss/critic_loss`).
TAG_GROUPS = {
    "loss": (
        "critic_loss", "generator_loss", "wasserstein", "gradient_penalty", "gradient_norm",
        "drift", "real_score", "fake_score", "label_penalty_reals", "label_penalty_fakes",
    ),
    "schedule": ("alpha", "stage", "resolution", "batch_size", "learning_rate", "kimg"),
    "speed": ("images_per_s", "eta_hours"),
}  # fmt: skip


def tensorboard_tags(scalars: dict[str, float]) -> dict[str, float]:
    """`scalars` keyed by TensorBoard tags: `group/name`, with metrics (SWD, FID, MS-SSIM)
    under `metrics/`."""
    group_of = {name: group for group, names in TAG_GROUPS.items() for name in names}
    return {f"{group_of.get(name, 'metrics')}/{name}": value for name, value in scalars.items()}


def _scalar(value):
    """A TensorBoard hparam value: a number, string or bool as it is, anything else as text."""
    return value if isinstance(value, int | float | str | bool) else str(value)


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the run in `workdir` to the end of its schedule (with the evaluators
    that have a cadence on the way); SIGTERM stops it at the next safe point."""
    with interrupt.sigterm_requests_stop():
        return Trainer(config, workdir).run()
