"""Several processes of one run agree: on when to save, when to stop and on the config.

Two processes on loopback (JAX's distributed runtime, gloo collectives), one CPU device each.
"""

import re
import signal
import sys

import numpy as np
import pytest
from jax.experimental import multihost_utils

from progan_jax.training import train
from tests.runs import ROOT, free_port, multiprocess_flags, start, wait_for

_SAVED = re.compile(r"Checkpoint at (\d+) images shown")


def _two_processes(tmp_path, cache, *overrides, per_process=((), ()), programs=((), ())):
    workdir, port = tmp_path / "run", free_port()
    processes, logs = [], []
    for index in range(2):
        log_path = tmp_path / f"process{index}.log"
        log = open(log_path, "w")  # noqa: SIM115
        flags = (*multiprocess_flags(port, index), *overrides, *per_process[index])
        processes.append(start(workdir, cache, log, *flags, program=programs[index]))
        logs.append((log, log_path))
    return workdir, processes, logs


def _finish(processes, logs, timeout=600) -> list[str]:
    """Waits for both (killing both on a hang) and returns their logs."""
    try:
        for process in processes:
            process.wait(timeout=timeout)
    except Exception:
        for process in processes:
            process.kill()
        raise
    finally:
        for log, _ in logs:
            log.close()
    return [path.read_text() for _, path in logs]


@pytest.mark.slow
def test_timed_checkpoints_agree_when_clocks_disagree(tmp_path, compile_cache):
    """Process 1's clock runs 7x fast: deciding saves by each process's clock deadlocks. The
    best SWD's checkpoint is saved by both too, though each process measures its own shard."""
    skewed = (sys.executable, str(ROOT / "tests" / "skewed_clock.py"), "7")
    overrides = (
        "--config.checkpoint.every_minutes=0.003",
        "--config.checkpoint.every_images=0",
        "--config.checkpoint.best_metric=swd_x1e3_avg",
    )
    workdir, processes, logs = _two_processes(
        tmp_path, compile_cache, *overrides, programs=((), skewed)
    )
    texts = _finish(processes, logs, timeout=300)
    assert [p.returncode for p in processes] == [0, 0], texts[1][-3000:]
    saved = [[int(n) for n in _SAVED.findall(text)] for text in texts]
    assert saved[0] == saved[1]
    timed = [n for n in saved[0] if n not in (64, 192, 320)]  # besides the stage ends
    assert timed, saved
    assert [p.name for p in (workdir / "best_checkpoint").iterdir()] in (["256"], ["320"])


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, compile_cache):
    _workdir, processes, logs = _two_processes(
        tmp_path, compile_cache, "--config.checkpoint.every_images=0"
    )
    wait_for(logs[1][1], "Stage 1", processes[1])
    processes[1].send_signal(signal.SIGTERM)
    texts = _finish(processes, logs, timeout=300)
    assert [p.returncode for p in processes] == [0, 0], texts[0][-3000:]
    stopped = [re.findall(r"Stopped by SIGTERM at (\d+) images", text) for text in texts]
    assert stopped[0] and stopped[0] == stopped[1]
    assert int(stopped[0][0]) % (2 * 8) == 0  # at a log interval (2 steps of 8 images)


@pytest.mark.slow
def test_processes_with_different_configs_refuse_to_start(tmp_path, compile_cache):
    _workdir, processes, logs = _two_processes(
        tmp_path, compile_cache, per_process=((), ("--config.loss.gp_weight=5.0",))
    )
    texts = _finish(processes, logs, timeout=300)
    assert [p.returncode for p in processes] == [1, 1]
    for text in texts:
        assert "config.loss.gp_weight: the processes of this run resolved different configs" in text
        assert "process 1 differs from process 0 in loss.gp_weight (10.0 vs 5.0)" in text


def test_decisions_exchange_flags_once_per_log_interval(monkeypatch):
    """No host sync per step: the flags cross processes only every `interval_steps` steps."""
    gathered = []

    def allgather(flags):
        gathered.append(flags.copy())
        return np.stack([flags, np.zeros_like(flags)])

    monkeypatch.setattr(train.jax, "process_count", lambda: 2)
    monkeypatch.setattr(train.jax, "process_index", lambda: 0)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    decisions = train._Decisions(every_minutes=0.0, interval_steps=5, held=None)
    answers = [decisions(step) for step in range(1, 21)]
    assert len(gathered) == 4  # steps 5, 10, 15, 20
    assert answers == [(False, False)] * 20


@pytest.mark.parametrize("index", [0, 1])
def test_process_0_clock_alone_times_the_saves(monkeypatch, index):
    monkeypatch.setattr(train.jax, "process_count", lambda: 2)
    monkeypatch.setattr(train.jax, "process_index", lambda: index)
    monkeypatch.setattr(
        multihost_utils, "process_allgather", lambda flags: np.stack([flags, np.zeros_like(flags)])
    )
    decisions = train._Decisions(every_minutes=1e-9, interval_steps=1, held=None)
    stop, save = decisions(1)
    assert not stop and save == (index == 0)


@pytest.mark.slow
def test_a_data_failure_on_one_process_stops_both(tmp_path, compile_cache):
    """Process 1's half of the folder is unreadable: both exit with an error, none waits."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (16, 16), (200, 100, 50)).save(folder / f"{name}.png")
    for name in ("c", "d"):
        (folder / f"{name}.png").write_bytes(b"not an image")
    folder_flags = (
        "--config.data.source=image_folder",
        f"--config.data.path={folder}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    )
    _workdir, processes, logs = _two_processes(tmp_path, compile_cache, *folder_flags)
    texts = _finish(processes, logs, timeout=240)
    assert [p.returncode for p in processes] == [1, 1], texts[0][-3000:]
    assert "Data preparation failed on process(es) 1" in texts[0]
    assert "no usable image" in texts[1]
