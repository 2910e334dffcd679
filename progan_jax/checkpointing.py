"""Orbax checkpoints of the whole training state plus the progress through the schedule.

    <workdir>/checkpoints/<images shown>/        periodic, on SIGTERM and at stage ends (last N)
    <workdir>/stage_checkpoints/<images shown>/  the end of every stage, kept for good

Each holds `state` (G, the critic, G_ema, both Adam states, the RNG key, the step count) and
`progress` (JSON: images shown, phase, stage and alpha of the last step). `load_generator`
reads G_ema alone, for evaluation, generation and export. The workdir may be a bucket
(`gs://...`). Saves are atomic: a process killed mid-save leaves a
temporary directory that is ignored and cleaned up, and the previous checkpoint stays intact.
"""

import dataclasses
import errno

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from progan_jax import gan as gan_lib
from progan_jax import parallel, paths, sampling, schedule, stages
from progan_jax.errors import MissingFileError, UserError
from progan_jax.gan import TrainState

# TrainState fields under the names of checkpoints written before the networks were named
# `generator` and `critic` throughout: such checkpoints still restore.
_EARLIER_NAMES = {
    "generator_params": "g_params",
    "critic_params": "d_params",
    "generator_ema_params": "g_ema_params",
    "generator_opt_state": "g_opt_state",
    "critic_opt_state": "d_opt_state",
}


@dataclasses.dataclass(frozen=True)
class Progress:
    images_shown: int
    phase_index: int  # the phase of the last step taken (optimizer resets happen on entry)
    # The networks as the last step ran them; None in checkpoints written before they were kept.
    stage: int | None = None
    alpha: float | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> "Progress":
        known = {f.name for f in dataclasses.fields(cls)}  # older ones also kept `steps`
        return cls(**{k: v for k, v in fields.items() if k in known})


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written; the message says why and what to do."""


def _manager(directory: epath.Path, keep: int | None) -> ocp.CheckpointManager:
    """A manager whose multi-host barriers are named after its directory.

    A stage end saves the same step to both managers; Orbax names its barriers by step, so
    without distinct prefixes the second save collides with the first on several hosts.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=directory.name
        ),
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "progress"))


def _explain(error: OSError, directory: epath.Path, previous: int | None) -> CheckpointWriteError:
    """Says what failed and what to do about it, from the error itself, not from a guess.

    Only a full disk (ENOSPC) calls for space. A file of the save that vanished while Orbax
    wrote it (FileNotFoundError) means the directory changed underneath: typically another
    process writing (and pruning) the same workdir.
    """
    kept = (
        f"The checkpoint {previous} is intact"
        if previous is not None
        else "There is no earlier checkpoint"
    )
    if error.errno == errno.ENOSPC:
        reason = "the disk is full"
        advice = "free some space (or point --workdir elsewhere) and start the same command again"
    elif isinstance(error, FileNotFoundError):
        reason = f"{error}; the checkpoint directory changed while it was written"
        advice = (
            "another process may be writing this workdir (an earlier run still alive, or a run "
            "started twice); stop it, then start the same command again"
        )
    else:
        reason = str(error)
        advice = "once that is fixed, start the same command again"
    return CheckpointWriteError(
        f"Could not write a checkpoint to {directory}: {reason}. {kept}; {advice} to resume."
    )


PERIODIC, STAGE_ENDS = "checkpoints", "stage_checkpoints"  # the workdir's two folders


def holds_checkpoints(workdir: str | epath.PathLike) -> bool:
    """Whether the workdir holds anything in its checkpoint folders, without creating them
    (a `Checkpointer` does)."""
    workdir = paths.resolve(workdir)
    return any(
        (workdir / name).exists() and any((workdir / name).iterdir())
        for name in (PERIODIC, STAGE_ENDS)
    )


class Checkpointer:
    """Saves and restores (TrainState, Progress) under a workdir, on every process."""

    def __init__(self, workdir: str | epath.PathLike, keep: int = 3):
        workdir = paths.resolve(workdir)
        self.directory = workdir / PERIODIC
        self._periodic = _manager(self.directory, keep)
        self._stages = _manager(workdir / STAGE_ENDS, None)

    def latest_images_shown(self) -> int | None:
        return self._periodic.latest_step()

    def _find(self, images_shown: int | None) -> tuple[ocp.CheckpointManager, int] | None:
        """The manager holding the latest (or the given) checkpoint, and its step; None when
        there is no checkpoint yet."""
        step = self._periodic.latest_step() if images_shown is None else images_shown
        if step is None:
            return None
        periodic, stages_kept = self._periodic.all_steps(), self._stages.all_steps()
        if step not in periodic and step not in stages_kept:
            available = sorted(set(periodic) | set(stages_kept))
            raise MissingFileError(
                f"No checkpoint at {step} images shown under {self.directory.parent}; "
                f"there are: {available or 'none'}."
            )
        return (self._periodic if step in periodic else self._stages), step

    def _restore_fields(
        self, images_shown: int | None, fields: dict, *, partial: bool
    ) -> tuple[dict, Progress] | None:
        """The named TrainState `fields` (abstract arrays with their shardings) of a checkpoint,
        and its progress. With `partial`, only those fields are read from storage; without,
        they must be all the checkpoint holds."""
        found = self._find(images_shown)
        if found is None:
            return None
        manager, step = found
        manager.wait_until_finished()  # a save of this step may still be writing
        tree = ocp.StandardCheckpointHandler().metadata(manager.directory / str(step) / "state")
        saved_as = {
            name: name if name in tree.tree else _EARLIER_NAMES.get(name, name) for name in fields
        }
        abstract = {saved_as[name]: value for name, value in fields.items()}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=partial,
                ),
                progress=ocp.args.JsonRestore(),
            ),
        )
        values = {name: restored.state[saved_as[name]] for name in fields}
        return values, Progress.from_json(restored.progress)

    def restore(self, target: TrainState, images_shown: int | None = None):
        """(state, progress) of the latest (or given) checkpoint, placed like `target`; or None."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(TrainState)}
        restored = self._restore_fields(images_shown, fields, partial=False)
        if restored is None:
            return None
        values, progress = restored
        return TrainState(**values), progress

    def restore_generator_ema(self, target: dict, images_shown: int | None = None):
        """(G_ema's parameters, progress) of the latest (or given) checkpoint, placed like
        `target` (abstract arrays); or None. The rest of the state is not read."""
        restored = self._restore_fields(
            images_shown, {"generator_ema_params": target}, partial=True
        )
        if restored is None:
            return None
        values, progress = restored
        return values["generator_ema_params"], progress

    def save(self, state: TrainState, progress: Progress, *, stage_end: bool = False) -> None:
        managers = [self._periodic] + ([self._stages] if stage_end else [])
        previous = self._periodic.latest_step()
        for manager in managers:
            if progress.images_shown in manager.all_steps():
                continue  # e.g. the stage-end checkpoint a resumed run already has
            args = ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                progress=ocp.args.JsonSave(progress.to_json()),
            )
            try:
                manager.save(progress.images_shown, args=args, force=True)
            except OSError as error:
                raise _explain(error, manager.directory, previous) from error

    def wait(self) -> None:
        """Blocks until background writes are done (and reports their errors)."""
        for manager in (self._periodic, self._stages):
            try:
                manager.wait_until_finished()
            except OSError as error:
                raise _explain(error, manager.directory, None) from error

    def close(self) -> None:
        self.wait()
        self._periodic.close()
        self._stages.close()


def load_generator(
    config: ml_collections.ConfigDict, workdir: str, images_shown: int | None
) -> sampling.GeneratorSnapshot:
    """G_ema of the latest checkpoint, of the one at `images_shown`, or (0) the untrained G at
    the final stage, replicated over all devices, at the stage and alpha of its last step.

    Only G_ema's parameters are read: the critic, G's training copy and both Adam states are
    about five times their bytes, which evaluation, generation and export never use.
    """
    gan = gan_lib.GAN.from_config(config)
    sharding = parallel.replicated(parallel.make_mesh())
    if images_shown == 0:
        state = gan_lib.create_train_state(gan, jax.random.key(config.seed), sharding)
        last_stage = stages.num_stages(config.model.resolution) - 1
        return sampling.GeneratorSnapshot(gan, state.generator_ema_params, last_stage, 1.0, 0)
    shapes = jax.eval_shape(lambda: gan_lib.create_train_state(gan, jax.random.key(0)))
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes.generator_ema_params,
    )
    checkpointer = Checkpointer(workdir)
    try:
        restored = checkpointer.restore_generator_ema(target, images_shown)
    finally:
        checkpointer.close()
    if restored is None:
        raise MissingFileError(f"No checkpoint in {workdir}/checkpoints; train first.")
    params, progress = restored
    if progress.alpha is None:  # a checkpoint from before progress kept stage and alpha
        phase = schedule.Schedule.from_config(config).phases[progress.phase_index]
        progress = dataclasses.replace(
            progress, stage=phase.stage, alpha=phase.alpha(progress.images_shown)
        )
    return sampling.GeneratorSnapshot(
        gan, params, progress.stage, progress.alpha, progress.images_shown
    )
