"""Runs of main.py in subprocesses, and the checkpoints they leave (shared by the test files).

Runs use configs/tiny.py (16x16, three stages, 320 images) on synthetic data, with a shared
persistent compilation cache so that only the first run of each program pays for XLA.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from configs import tiny
from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import parallel
from progan_jax.training import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL_IMAGES = 320  # tiny: 64 + 2 x (64 + 64)


def env(devices: int = 1, extra: dict | None = None) -> dict:
    variables = dict(os.environ)
    variables["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    variables["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # compile time dominates a tiny run
    variables["PYTHONUNBUFFERED"] = "1"
    variables.update(extra or {})
    return variables


def command(workdir, cache, *overrides, program=()) -> list[str]:
    """main.py on configs/tiny.py; `program` replaces `python main.py` (e.g. a wrapper)."""
    return [
        *(program or (sys.executable, str(ROOT / "main.py"))),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--compilation_cache={cache}",
        f"--config.data.cache_dir={cache.parent / 'data_cache'}",
        *overrides,
    ]


def run(workdir, cache, *overrides, devices=1, timeout=900, extra_env=None, cwd=None):
    return subprocess.run(
        command(workdir, cache, *overrides),
        env=env(devices, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def start(workdir, cache, log, *overrides, devices=1, program=(), extra_env=None, cwd=None):
    return subprocess.Popen(
        command(workdir, cache, *overrides, program=program),
        env=env(devices, extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


def wait_for(path: pathlib.Path, text: str, process: subprocess.Popen, timeout=600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(
                f"exited ({process.returncode}) before {text!r}:\n{path.read_text()}"
            )
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} after {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multiprocess_flags(port: int, index: int, count: int = 2) -> tuple[str, ...]:
    return (
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={count}",
        f"--process_id={index}",
    )


def final_state(workdir, images_shown=None):
    _, target = gan_lib.initialize(tiny.get_config(), parallel.make_mesh(jax.devices()[:1]))
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        return checkpointer.restore(target, images_shown)
    finally:
        checkpointer.close()


def assert_same_state(a, b, atol=0.0) -> None:
    """Equal states; bit for bit unless given a tolerance."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0.0, atol=atol)


def random_inception_weights(path) -> None:
    """An Inception .npz in the converter's layout (dotted module paths), random weights."""
    from progan_jax.metrics import inception

    x = jax.numpy.zeros((1, 75, 75, 3))
    params = inception.InceptionV3().init(jax.random.key(0), x)["params"]
    flat = {
        ".".join(str(getattr(k, "key", k)) for k in path_): np.asarray(leaf)
        for path_, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    np.savez(path, **flat)
