"""What a run leaves in its workdir, written and read here alone: checkpoints, config.json,
classes.json and the best checkpoint.

    <workdir>/config.json                        the run's config (for people, resume checks)
    <workdir>/classes.json                       a conditional run's classes and their shares
    <workdir>/checkpoints/<images shown>/        periodic, on SIGTERM and at stage ends (last N)
    <workdir>/stage_checkpoints/<images shown>/  the end of every stage, kept for good
    <workdir>/best_checkpoint/<images shown>/    the best of `checkpoint.best_metric` so far

Each checkpoint holds `state` (G, the critic, G_ema, both Adam states, the RNG key, the step
count), `progress` (JSON: images shown, phase, stage and alpha of the last step) and what its
parameters mean, `networks` (JSON: the networks' `model` fields and a conditional run's
`classes`); the best one also its `metric` record. `trained.load_generator` reads G_ema alone,
in the networks the checkpoint names, for evaluation, generation, export and projection;
checkpoints from before `networks` was kept read them from config.json and classes.json.
The workdir may be a bucket (`gs://...`). Saves are atomic: a process killed mid-save leaves a
temporary directory that is ignored and cleaned up, and the previous checkpoint stays intact.
"""

import dataclasses
import errno
import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from progan_jax.nets.gan import TrainState
from progan_jax.runtime import paths
from progan_jax.runtime.errors import ConfigError, MissingFileError, UserError

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


@dataclasses.dataclass(frozen=True)
class Networks:
    """What a checkpoint's parameters mean: the networks' `config.model` fields, and a
    conditional run's classes (`{"names": [...], "shares": {name: share}}`, None otherwise)."""

    model: dict
    classes: dict | None = None

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, classes: dict | None = None) -> "Networks":
        return cls(config.model.to_dict(), classes)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return None if self.classes is None else tuple(self.classes["names"])


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written; the message says why and what to do."""


_ITEMS = ("state", "progress", "networks")


def _manager(
    directory: epath.Path, keep: int | None, items: tuple[str, ...] = _ITEMS
) -> ocp.CheckpointManager:
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
    return ocp.CheckpointManager(directory, options=options, item_names=items)


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


PERIODIC, STAGE_ENDS, BEST = "checkpoints", "stage_checkpoints", "best_checkpoint"
CONFIG, CLASSES = "config.json", "classes.json"


def holds_checkpoints(workdir: str | epath.PathLike) -> bool:
    """Whether the workdir holds anything in its checkpoint folders, without creating them
    (a `Checkpointer` does)."""
    workdir = paths.resolve(workdir)
    return any(
        (workdir / name).exists() and any((workdir / name).iterdir())
        for name in (PERIODIC, STAGE_ENDS, BEST)
    )


class Checkpointer:
    """Saves and restores (TrainState, Progress) under a workdir, on every process, with what
    the parameters mean (`Networks`) beside them."""

    def __init__(self, workdir: str | epath.PathLike, keep: int = 3):
        workdir = paths.resolve(workdir)
        self.directory = workdir / PERIODIC
        self._periodic = _manager(self.directory, keep)
        self._stages = _manager(workdir / STAGE_ENDS, None)
        self._best = _manager(workdir / BEST, 1, (*_ITEMS, "metric"))

    def latest_images_shown(self) -> int | None:
        return self._periodic.latest_step()

    def _find(self, which: int | str | None) -> tuple[ocp.CheckpointManager, int] | None:
        """The manager holding the latest checkpoint (None), the given one (images shown) or the
        best one ('best'), and its step; None when there is no checkpoint yet."""
        if which == "best":
            step = self._best.latest_step()
            return None if step is None else (self._best, step)
        step = self._periodic.latest_step() if which is None else which
        if step is None:
            return None
        for manager in (self._periodic, self._stages, self._best):
            if step in manager.all_steps():
                return manager, step
        available = sorted(
            set(self._periodic.all_steps())
            | set(self._stages.all_steps())
            | set(self._best.all_steps())
        )
        raise MissingFileError(
            f"No checkpoint at {step} images shown under {self.directory.parent}; "
            f"there are: {available or 'none'}."
        )

    def _restore_fields(
        self, which: int | str | None, fields: dict, *, partial: bool
    ) -> tuple[dict, Progress] | None:
        """The named TrainState `fields` (abstract arrays with their shardings) of a checkpoint,
        and its progress. With `partial`, only those fields are read from storage; without,
        they must be all the checkpoint holds."""
        found = self._find(which)
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

    def _json_item(self, which: int | str | None, item: str) -> dict | None:
        """A JSON item of a checkpoint, or None where the checkpoint (or the item) is absent."""
        found = self._find(which)
        if found is None:
            return None
        manager, step = found
        manager.wait_until_finished()
        if not (manager.directory / str(step) / item).exists():
            return None  # written before the item was kept
        args = ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        return manager.restore(step, args=args)[item]

    def networks(self, which: int | str | None = None) -> Networks | None:
        """What the checkpoint's parameters mean, or None for one written before it was kept."""
        saved = self._json_item(which, "networks")
        return None if saved is None else Networks(saved["model"], saved.get("classes"))

    def best(self) -> dict | None:
        """The best checkpoint's record (`metric`, `value`, `images_shown`, `stage`, `images`),
        or None."""
        return self._json_item("best", "metric")

    def restore(self, target: TrainState, images_shown: int | str | None = None):
        """(state, progress) of the latest (or given) checkpoint, placed like `target`; or None."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(TrainState)}
        restored = self._restore_fields(images_shown, fields, partial=False)
        if restored is None:
            return None
        values, progress = restored
        return TrainState(**values), progress

    def restore_generator_ema(self, target: dict, which: int | str | None = None):
        """(G_ema's parameters, progress) of the latest (or given, or best) checkpoint, placed
        like `target` (abstract arrays); or None. The rest of the state is not read."""
        restored = self._restore_fields(which, {"generator_ema_params": target}, partial=True)
        if restored is None:
            return None
        values, progress = restored
        return values["generator_ema_params"], progress

    def _save(self, manager: ocp.CheckpointManager, step: int, items: dict, previous) -> None:
        try:
            manager.save(step, args=ocp.args.Composite(**items), force=True)
        except OSError as error:
            raise _explain(error, manager.directory, previous) from error

    def _items(self, state, progress: Progress, networks: Networks | None) -> dict:
        items = dict(
            state=ocp.args.PyTreeSave(state), progress=ocp.args.JsonSave(progress.to_json())
        )
        if networks is not None:
            items["networks"] = ocp.args.JsonSave(dataclasses.asdict(networks))
        return items

    def save(
        self,
        state: TrainState,
        progress: Progress,
        *,
        stage_end: bool = False,
        networks: Networks | None = None,
    ) -> None:
        managers = [self._periodic] + ([self._stages] if stage_end else [])
        previous = self._periodic.latest_step()
        for manager in managers:
            if progress.images_shown in manager.all_steps():
                continue  # e.g. the stage-end checkpoint a resumed run already has
            self._save(
                manager, progress.images_shown, self._items(state, progress, networks), previous
            )

    def save_best(
        self, state: TrainState, progress: Progress, networks: Networks, metric: dict
    ) -> None:
        """Replaces the best checkpoint with this one, its `metric` record beside it (unless
        it is this one already: a resumed run that replays the steps after a kill)."""
        if progress.images_shown in self._best.all_steps():
            return
        items = self._items(state, progress, networks)
        items["metric"] = ocp.args.JsonSave(metric)
        self._save(self._best, progress.images_shown, items, self._best.latest_step())

    def wait(self) -> None:
        """Blocks until background writes are done (and reports their errors)."""
        for manager in (self._periodic, self._stages, self._best):
            try:
                manager.wait_until_finished()
            except OSError as error:
                raise _explain(error, manager.directory, None) from error

    def close(self) -> None:
        self.wait()
        for manager in (self._periodic, self._stages, self._best):
            manager.close()


def checkpoint_choice(value) -> int | str | None:
    """`config.checkpoint_images_shown` checked: None (the latest), a count of images shown,
    'best' or 'untrained'."""
    if value is None or value in ("best", "untrained"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ConfigError(
        f"checkpoint_images_shown: {value!r} names no checkpoint; give a count of images shown, "
        "'best', 'untrained', or leave it unset for the latest"
    )


def write_config(workdir: str | epath.PathLike, config: ml_collections.ConfigDict) -> None:
    """<workdir>/config.json: the run's resolved config (process 0 writes it)."""
    if jax.process_index() == 0:
        (paths.resolve(workdir) / CONFIG).write_text(config.to_json_best_effort(indent=2))


def saved_config(workdir: str | epath.PathLike) -> dict | None:
    """The config.json of the workdir's run, or None."""
    path = paths.resolve(workdir) / CONFIG
    return json.loads(path.read_text()) if path.exists() else None


def write_classes(workdir: str | epath.PathLike, classes: dict) -> None:
    """<workdir>/classes.json: a conditional run's classes (process 0 writes it), so that a
    class id of the run (generate.labels, an export's input) can be read by people too."""
    if jax.process_index() == 0:
        (paths.resolve(workdir) / CLASSES).write_text(json.dumps(classes, indent=2))


def trained_networks(
    workdir: str | epath.PathLike, which: int | str | None = None
) -> Networks | None:
    """The networks of a workdir's checkpoint (the latest by default): those the checkpoint
    names, else (a checkpoint from before they were kept) config.json's `model` and
    classes.json; None for a workdir without either."""
    workdir, which = paths.resolve(workdir), checkpoint_choice(which)
    if which != "untrained" and holds_checkpoints(workdir):
        checkpointer = Checkpointer(workdir)
        try:
            networks = checkpointer.networks(which)
        finally:
            checkpointer.close()
        if networks is not None:
            return networks
    config = saved_config(workdir)
    if config is None:
        return None
    classes_path = workdir / CLASSES
    classes = json.loads(classes_path.read_text()) if classes_path.exists() else None
    return Networks(config.get("model", {}), classes)
