"""Orbax checkpoints of the whole training state plus the progress through the schedule.

    <workdir>/checkpoints/<images shown>/        periodic, on SIGTERM and at stage ends (last N)
    <workdir>/stage_checkpoints/<images shown>/  the end of every stage, kept for good

Each holds `state` (G, D, G_ema, both Adam states, the RNG key, the step count) and `progress`
(JSON: images shown, phase, stage and alpha of the last step). The workdir may be a bucket
(`gs://...`). Saves are atomic: a process killed mid-save leaves a
temporary directory that is ignored and cleaned up, and the previous checkpoint stays intact.
"""

import dataclasses
import errno

import jax
import orbax.checkpoint as ocp
from etils import epath

from progan_jax import paths
from progan_jax.errors import MissingFileError, UserError
from progan_jax.gan import TrainState


@dataclasses.dataclass(frozen=True)
class Progress:
    images_shown: int
    phase_index: int  # the phase of the last step taken (optimizer resets happen on entry)
    steps: int  # train steps taken
    # The networks as the last step ran them; None in checkpoints written before they were kept.
    stage: int | None = None
    alpha: float | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> "Progress":
        known = {f.name for f in dataclasses.fields(cls)}
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


class Checkpointer:
    """Saves and restores (TrainState, Progress) under a workdir, on every process."""

    def __init__(self, workdir: str | epath.PathLike, keep: int = 3):
        workdir = paths.resolve(workdir)
        self.directory = workdir / "checkpoints"
        self._periodic = _manager(self.directory, keep)
        self._stages = _manager(workdir / "stage_checkpoints", None)

    def latest_images_shown(self) -> int | None:
        return self._periodic.latest_step()

    def restore(self, target: TrainState, images_shown: int | None = None):
        """(state, progress) of the latest (or given) checkpoint, placed like `target`; or None."""
        step = self._periodic.latest_step() if images_shown is None else images_shown
        if step is None:
            return None
        periodic, stages = self._periodic.all_steps(), self._stages.all_steps()
        if step not in periodic and step not in stages:
            available = sorted(set(periodic) | set(stages))
            raise MissingFileError(
                f"No checkpoint at {step} images shown under {self.directory.parent}; "
                f"there are: {available or 'none'}."
            )
        manager = self._periodic if step in periodic else self._stages
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
            ),
        )
        return restored.state, Progress.from_json(restored.progress)

    def save(self, state: TrainState, progress: Progress, *, stage_end: bool = False) -> None:
        managers = [self._periodic] + ([self._stages] if stage_end else [])
        previous = self._periodic.latest_step()
        for manager in managers:
            if progress.images_shown in manager.all_steps():
                continue  # e.g. the stage-end checkpoint a resumed run already has
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state),
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
