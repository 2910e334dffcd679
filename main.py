"""progan_jax entry point.

    python main.py --config configs/celeba128.py [--workdir DIR] [--mode=train]
    python main.py --config configs/demo.py --config.schedule.batch_sizes='(16,16,16,16)'

Modes: train (default; resumes from the workdir's latest checkpoint), plan (compiles every
stage's step for the target devices, e.g. --config.plan.topology=v5e:2x4, and reports memory
and FLOPs), evaluate (SWD, MS-SSIM, FID of a checkpoint), generate (grid, PNGs, latent walk
of a checkpoint), export (a checkpoint's generator as a TensorFlow SavedModel), import (a
pretrained network file, --config.pretrained.path, as a workdir every mode reads), project
(photos into G's latent space, --config.project.images), benchmark (train-step speed per
stage), benchmark_input (input-pipeline speed per stage), summary (layer tables and parameter
counts), caches (the data cache's files, which are stale, and with
--config.data.remove_stale_caches=True their removal). The workdir defaults to
workdir/<config file stem>.

Multi-host: pass --coordinator_address, --num_processes and --process_id (or --multihost on
TPU pods and SLURM, where JAX finds them itself). The workdir may be a bucket (gs://...).
"""

from progan_jax.runtime import xla_flags

xla_flags.set_default_flags()  # before JAX initialises its backends

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from progan_jax.runtime import errors, interrupt  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, TensorBoard events and samples (default workdir/<config>)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids",
    None,
    "This process's devices, e.g. 0 for one process per GPU (default: all it sees).",
)
_ALLOW_CPU = flags.DEFINE_bool(
    "allow_cpu", False, "Run on the CPU even though this machine has a GPU or TPU."
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Initialise the distributed runtime from the environment (TPU, SLURM)."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds the processes wait for each other at start."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds without a heartbeat before a process counts as lost."
)
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout", 300, "Seconds the processes wait for each other at exit."
)
_STORAGE_TIMEOUT = flags.DEFINE_float(
    "storage_timeout", 120.0, "Seconds to wait for the workdir (a bucket) to answer at start."
)
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    "~/.cache/progan_jax/xla",
    "Persistent XLA compilation cache: a restarted run skips recompiling ('' turns it off).",
)
_QUIET_LIBRARIES = ("/orbax/", "/jax/_src/", "/tensorflow_datasets/")


class _LibraryInfoFilter:
    """Keeps the libraries' INFO chatter (e.g. every Orbax write) out of the training log."""

    def filter(self, record) -> bool:
        import logging as std_logging

        noisy = any(part in record.pathname for part in _QUIET_LIBRARIES)
        return record.levelno >= std_logging.WARNING or not noisy


def _initialize_distributed() -> None:
    import jax

    timeouts = dict(
        initialization_timeout=_INIT_TIMEOUT.value,
        heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
        shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT.value,
    )
    if _LOCAL_DEVICE_IDS.value:
        timeouts["local_device_ids"] = [int(i) for i in _LOCAL_DEVICE_IDS.value]
    if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only setting
        jax.distributed.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, **timeouts
        )
    elif _MULTIHOST.value:
        jax.distributed.initialize(**timeouts)


def _configure_jax() -> None:
    import jax

    if _COMPILATION_CACHE.value:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE.value))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def _hide_gpus_from_tensorflow() -> None:
    """tf.data must not reserve accelerator memory that JAX needs."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def _workdir() -> str:
    """--workdir as given (a local path or a bucket URL), or workdir/<config file stem>."""
    if _WORKDIR.value:
        return _WORKDIR.value
    config_file = config_flags.get_config_filename(flags.FLAGS["config"])
    return os.path.join("workdir", os.path.splitext(os.path.basename(config_file))[0])


def _with_trained_networks(config: ml_collections.ConfigDict, workdir: str, imported_only: bool):
    """The config with the `model` fields of the workdir's checkpoint, if any; with
    `imported_only`, only of a workdir made by --mode=import, whose networks the file chose."""
    from progan_jax.pretrained import importer
    from progan_jax.runtime import paths
    from progan_jax.training import trained

    if imported_only and not (paths.resolve(workdir) / importer.PROVENANCE).exists():
        return config
    return trained.with_trained_networks(config, workdir, config.checkpoint_images_shown)


def _print_lines(lines: Iterable) -> None:
    for line in lines:
        print(line if isinstance(line, str) else json.dumps(line), flush=True)


# Each mode's work: `(config, workdir) -> lines to print` (dicts print as JSON). Imports are
# local: JAX's distributed runtime must start (main) before anything touches a backend.


def _train(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.training import train

    train.train(config, workdir)
    return []


def _evaluate(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import evaluate

    with interrupt.sigterm_requests_stop():  # stops between minibatches
        results = evaluate.evaluate(config, workdir)
    evaluate.write_results(results, workdir)
    return [results]


def _generate(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import generate

    return [generate.write_generated(config, workdir)]


def _export(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import export

    return [export.export_generator(config, workdir)]


def _import(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.pretrained import importer

    return [importer.import_networks(config, workdir)]


def _project(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import project

    with interrupt.sigterm_requests_stop():  # stops between batches; a restart resumes
        return [project.project_images(config, workdir)]


def _plan(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.training import plan

    return plan.plan(config)


def _benchmark(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import timing

    return timing.benchmark_train_step(config)


def _benchmark_input(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import timing

    return timing.benchmark_input(config)


def _summary(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.modes import summary

    return summary.summarize(config)


def _caches(config: ml_collections.ConfigDict, workdir: str) -> Iterable:
    from progan_jax.data import cache_management
    from progan_jax.training import config_checks

    config_checks.validate_cache_management(config.data)
    return cache_management.cache_report(config.data)


@dataclasses.dataclass(frozen=True)
class Mode:
    """A mode's work and what must hold before it starts."""

    run: Callable[[ml_collections.ConfigDict, str], Iterable]
    on_devices: bool = False  # stops on the CPU of a GPU/TPU machine (unless --allow_cpu)
    writes_workdir: bool = False  # the workdir must exist and answer (a bucket may not)
    uses_tensorflow: bool = False  # tf.data or a SavedModel: TF must leave the GPUs to JAX
    # Builds the networks the workdir's run trained ('always'), or those of an imported
    # workdir ('imported': train fine-tunes them; a resumed run keeps its own shape check).
    networks_from_workdir: str = "never"


MODES = {
    "train": Mode(
        _train,
        on_devices=True,
        writes_workdir=True,
        uses_tensorflow=True,
        networks_from_workdir="imported",
    ),
    "import": Mode(_import, writes_workdir=True),
    "plan": Mode(_plan),
    "evaluate": Mode(
        _evaluate,
        on_devices=True,
        writes_workdir=True,
        uses_tensorflow=True,
        networks_from_workdir="always",
    ),
    "generate": Mode(
        _generate, on_devices=True, writes_workdir=True, networks_from_workdir="always"
    ),
    "export": Mode(
        _export,
        on_devices=True,
        writes_workdir=True,
        uses_tensorflow=True,
        networks_from_workdir="always",
    ),
    "project": Mode(_project, on_devices=True, writes_workdir=True, networks_from_workdir="always"),
    "benchmark": Mode(_benchmark, on_devices=True),
    "benchmark_input": Mode(_benchmark_input, uses_tensorflow=True),
    "summary": Mode(_summary, networks_from_workdir="always"),
    "caches": Mode(_caches),
}
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _configure_jax()
    _initialize_distributed()
    from progan_jax.runtime import accelerators, paths

    mode, workdir = MODES[_MODE.value], _workdir()
    try:
        if mode.on_devices:
            accelerators.check_platform(_ALLOW_CPU.value)
        if mode.writes_workdir:
            paths.ensure_directory(paths.resolve(workdir), _STORAGE_TIMEOUT.value)
        if mode.uses_tensorflow:
            _hide_gpus_from_tensorflow()
        config = _CONFIG.value
        if mode.networks_from_workdir != "never":
            imported_only = mode.networks_from_workdir == "imported"
            config = _with_trained_networks(config, workdir, imported_only)
        _print_lines(mode.run(config, workdir))
    except interrupt.Interrupted as stopped:
        logging.warning("%s", stopped)  # preemption: exit 0, a restart continues
    except errors.UserError as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
