"""Data at pod scale: two processes on loopback (JAX's distributed runtime, gloo collectives),
one CPU device each, running tests/data_process.py on a tiny synthetic set."""

import os
import pathlib
import subprocess
import sys

import data_process as worker
import numpy as np
import pytest

from progan_jax.data import input_pipeline, synthetic
from progan_jax.training import train_step
from tests.runs import free_port

pytestmark = pytest.mark.slow  # two processes on the distributed runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGE_FILES = ["images_16.npy", "images_4.npy", "images_8.npy"]  # every stage of 16x16


def _run_two(mode: str, cache: pathlib.Path, tmp_path: pathlib.Path) -> list[dict]:
    """Runs both processes to the end; what each saved."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    port, program = free_port(), [sys.executable, str(ROOT / "tests" / "data_process.py")]
    outs, logs = ([tmp_path / f"process{i}.{ext}" for i in range(2)] for ext in ("npz", "log"))
    processes = []
    for i in range(2):
        with open(logs[i], "w") as log:  # a file, not a pipe: neither process blocks on output
            processes.append(
                subprocess.Popen(
                    [*program, str(port), str(i), mode, str(cache), str(outs[i])],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    return [dict(np.load(out), log=log.read_text()) for out, log in zip(outs, logs, strict=True)]


def _cache_files(cache: pathlib.Path) -> dict[str, list[str]]:
    return {
        "keys": sorted(p.name for p in cache.iterdir()),
        "stages": sorted({p.name for p in cache.glob("*/images_*.npy")}),
        "leftovers": sorted(
            p.name
            for pattern in ("*.tmp", "*.partial", "*.progress.json")
            for p in cache.rglob(pattern)
        ),
    }


@pytest.fixture(scope="module")
def whole_set() -> np.ndarray:
    return synthetic.draw_faces(worker.SIZE, 16)


def test_each_process_caches_and_streams_only_its_half(tmp_path, whole_set):
    cache = tmp_path / "cache"
    runs = _run_two("shard", cache, tmp_path)

    files = _cache_files(cache)
    assert [key.rsplit("-", 1)[1] for key in files["keys"]] == ["shard0of2", "shard1of2"]
    assert files["leftovers"] == []
    assert files["stages"] == STAGE_FILES
    half = worker.SIZE // 2
    assert [r["filtered"] for r in runs] == [2 * half, 2 * half]  # stages 0 and 1 of a half
    for key in files["keys"]:
        assert np.load(cache / key / "images_16.npy", mmap_mode="r").shape[0] == half
    # The halves are disjoint and make up the whole set.
    np.testing.assert_array_equal(np.concatenate([r["images"] for r in runs]), whole_set)
    assert [sorted(r["draws"]) for r in runs] == [list(range(half)), list(range(half, 2 * half))]

    for index, run in enumerate(runs):
        assert f"Input: {worker.SIZE} images, {half} in this process's shard" in run["log"]
        # The stream is a function of (seed, position, process index) over the own shard only.
        want = input_pipeline.train_batches(
            run["stage1"],
            seed=0,
            start=0,
            batch_size=worker.BATCH,
            process_index=index,
            process_count=2,
            sharded=True,
        )
        for batch in run["stream"]:
            np.testing.assert_array_equal(batch, train_step.decode_reals(next(want), np))
        as_uint8 = np.rint((run["stream"] + 1) * 127.5).astype(np.uint8).reshape(-1, 8, 8, 3)
        own = {x.tobytes() for x in run["stage1"]} | {x[:, ::-1].tobytes() for x in run["stage1"]}
        assert {x.tobytes() for x in as_uint8} <= own
        np.testing.assert_array_equal(run["resumed"], run["stream"][worker.RESUME_AT :])


def test_a_shared_cache_is_built_once_and_read_by_both(tmp_path, whole_set):
    cache = tmp_path / "cache"
    runs = _run_two("shared", cache, tmp_path)

    assert [len(r["draws"]) for r in runs] == [worker.SIZE, 0]  # process 0 built, 1 waited
    assert [r["filtered"] for r in runs] == [2 * worker.SIZE, 0]  # every stage, by process 0
    files = _cache_files(cache)
    assert len(files["keys"]) == 1 and files["leftovers"] == []
    assert files["stages"] == STAGE_FILES
    for run in runs:
        np.testing.assert_array_equal(run["images"], whole_set)
        np.testing.assert_array_equal(run["stage1"], runs[0]["stage1"])
        assert f"Input: {worker.SIZE} images, on every process" in run["log"]
        assert "process 0: 10, process 1: 11 images" in str(run["mismatch"])
