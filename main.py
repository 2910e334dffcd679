"""progan_jax entry point.

    python main.py --config configs/celeba128.py [--workdir DIR] [--mode=train]
    python main.py --config configs/demo.py --config.schedule.batch_sizes='(16,16,16,16)'

Modes: train (default; resumes from the workdir's latest checkpoint), plan (compiles every
stage's step for the target devices, e.g. --config.plan.topology=v5e:2x4, and reports memory
and FLOPs), evaluate (SWD, MS-SSIM, FID of a checkpoint), generate (grid, PNGs, latent walk
of a checkpoint), export (a checkpoint's generator as a TensorFlow SavedModel), benchmark
(train-step speed per stage), benchmark_input (input-pipeline speed per stage), summary (layer
tables and parameter counts), caches (the data cache's files, which are stale, and with
--config.data.remove_stale_caches=True their removal). The workdir defaults to
workdir/<config file stem>.

Multi-host: pass --coordinator_address, --num_processes and --process_id (or --multihost on
TPU pods and SLURM, where JAX finds them itself). The workdir may be a bucket (gs://...).
"""

from progan_jax import xla_flags

xla_flags.set_default_flags()  # before JAX initialises its backends

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Configuration file.", lock_config=True)
_MODES = [
    "train",
    "plan",
    "evaluate",
    "generate",
    "export",
    "benchmark",
    "benchmark_input",
    "summary",
    "caches",
]
_MODE = flags.DEFINE_enum("mode", "train", _MODES, "What to run.")
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


def _print_lines(lines) -> None:
    for line in lines:
        print(line if isinstance(line, str) else json.dumps(line), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _configure_jax()
    _initialize_distributed()
    config = _CONFIG.value
    from progan_jax import (
        accelerators,
        benchmark,
        checkpointing,
        config_checks,
        evaluate,
        export,
        generate,
        interrupt,
        lease,
        paths,
        plan,
        summary,
        train,
    )
    from progan_jax.data import cache_management, errors, input_pipeline

    expected = (
        accelerators.AcceleratorUnusedError,
        config_checks.ConfigError,
        errors.DataSetMissingError,
        input_pipeline.DataPreparationError,
        checkpointing.CheckpointWriteError,
        train.NonFiniteLossError,
        paths.UnreachableError,
        lease.LeaseError,
        FileNotFoundError,
    )
    workdir = _workdir()
    try:
        if _MODE.value in ("train", "evaluate", "generate", "export", "benchmark"):
            accelerators.check_platform(_ALLOW_CPU.value)
        if _MODE.value in ("train", "evaluate", "generate", "export"):
            paths.ensure_directory(paths.resolve(workdir), _STORAGE_TIMEOUT.value)
        if _MODE.value == "train":
            _hide_gpus_from_tensorflow()
            train.train_and_evaluate(config, workdir)
        elif _MODE.value == "evaluate":
            _hide_gpus_from_tensorflow()
            with interrupt.sigterm_requests_stop():  # stops between minibatches
                results = evaluate.evaluate(config, workdir)
            evaluate.write_results(results, workdir)
            _print_lines([results])
        elif _MODE.value == "generate":
            _print_lines([generate.write_generated(config, workdir)])
        elif _MODE.value == "export":
            _hide_gpus_from_tensorflow()
            _print_lines([export.export_generator(config, workdir)])
        elif _MODE.value == "plan":
            _print_lines(plan.plan(config))
        elif _MODE.value == "benchmark":
            _print_lines(benchmark.benchmark_train_step(config))
        elif _MODE.value == "benchmark_input":
            _hide_gpus_from_tensorflow()
            _print_lines(benchmark.benchmark_input(config))
        elif _MODE.value == "caches":
            config_checks.validate_cache_management(config.data)
            _print_lines(cache_management.cache_report(config.data))
        else:
            _print_lines(summary.summarize(config))
    except interrupt.Interrupted as stopped:
        logging.warning("%s", stopped)  # preemption: exit 0, a restart continues
    except expected as error:
        logging.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
