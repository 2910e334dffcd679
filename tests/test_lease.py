"""One run per workdir: the lease, its renewal and take-over, and what a clash reports."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from etils import epath
from jax.experimental import multihost_utils

from progan_jax.data import input_pipeline
from progan_jax.runtime import lease, paths
from progan_jax.training import config_checks, train
from tests.gcs_emulator import gcs_emulator
from tests.runs import ROOT, run, start, wait_for

TIMINGS = dict(renew_seconds=30.0, stale_after_seconds=300.0)


def _acquire(workdir, **overrides) -> lease.Lease:
    return lease.acquire(epath.Path(workdir), **{**TIMINGS, "settle_s": 0.0, **overrides})


@pytest.fixture
def config(tiny_config):
    """The tiny config, valid on the 8 test devices whatever minibatch-stddev asks of them."""
    tiny_config.schedule.batch_sizes = (16,) * 3
    return tiny_config


def _record(workdir) -> dict:
    return json.loads((workdir / lease.FILE).read_text())


def test_a_second_run_on_a_held_workdir_fails_naming_the_holder(tmp_path, config):
    held = _acquire(tmp_path)
    with pytest.raises(lease.LeaseError) as error:
        train.Trainer(config, str(tmp_path))
    message = str(error.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since " in message
    assert "last renewed" in message and "s ago" in message
    assert f"delete {tmp_path / lease.FILE}" in message and "another --workdir" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [lease.FILE]  # nothing else touched
    held.release()
    assert not (tmp_path / lease.FILE).exists()


@pytest.mark.slow
def test_the_trainer_releases_its_lease_when_the_run_fails(tmp_path, config, monkeypatch):
    trainer = train.Trainer(config, str(tmp_path))
    assert _record(tmp_path)["pid"] == os.getpid()

    def broken(*args, **kwargs):
        raise RuntimeError("the data went away")

    monkeypatch.setattr(input_pipeline, "stage_train_batches", broken)
    with pytest.raises(RuntimeError, match="the data went away"):
        trainer.run()
    assert not (tmp_path / lease.FILE).exists()


@pytest.mark.slow
def test_a_lease_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = (
        "import sys, time; from etils import epath; from progan_jax.runtime import lease; "
        f"lease.acquire(epath.Path(sys.argv[1]), **{TIMINGS!r}); print('held', flush=True); "
        "time.sleep(600)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "held\n"
        with pytest.raises(lease.LeaseError, match=f"pid {child.pid}, since"):
            _acquire(tmp_path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    taken = _acquire(tmp_path)
    assert f"pid {child.pid}" in caplog.text and "on this machine has ended" in caplog.text
    assert _record(tmp_path)["token"] == taken.holder.token
    taken.release()


def test_a_lease_not_renewed_in_time_is_taken_over_and_its_old_holder_lets_go(tmp_path, caplog):
    """This process holds both leases, so only the clock can make the first one stale."""
    now = [1000.0]
    first = _acquire(tmp_path, clock=lambda: now[0])
    now[0] += 299.0
    with pytest.raises(lease.LeaseError, match=r"last renewed .* \(299 s ago\)"):
        _acquire(tmp_path, clock=lambda: now[0])
    now[0] += 2.0
    second = _acquire(tmp_path, clock=lambda: now[0])
    assert "not renewed for more than lease.stale_after_seconds=300" in caplog.text
    decisions = train._Decisions(every_minutes=0.0, interval_steps=1, held=first)
    assert decisions(1) == (False, False)
    assert not first.renew()  # it finds the other's token, and stops renewing
    assert "lost the lease" in caplog.text and first.lost.is_set()
    with pytest.raises(lease.LeaseError, match="stopped without saving"):
        decisions(2)  # the loop stops before its next save
    first.release()  # leaves the new holder's lease alone
    assert _record(tmp_path)["token"] == second.holder.token
    second.release()
    assert not (tmp_path / lease.FILE).exists()


def test_renewal_updates_the_time_in_the_file(tmp_path):
    now = [1000.0]
    held = _acquire(tmp_path, clock=lambda: now[0])
    now[0] = 1030.0
    assert held.renew()
    assert (_record(tmp_path)["started"], _record(tmp_path)["renewed"]) == (1000.0, 1030.0)
    held.release()
    running = _acquire(tmp_path, renew_seconds=0.01)
    started = _record(tmp_path)["renewed"]
    deadline = time.monotonic() + 10.0
    while _record(tmp_path)["renewed"] == started:  # the daemon thread renews by itself
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running.release()


_IN_A_BUCKET = """
import sys
from etils import epath
from progan_jax.runtime import lease

workdir, timings = epath.Path(sys.argv[1]), dict(renew_seconds=30.0, stale_after_seconds=300.0)
held = lease.acquire(workdir, **timings)
print(held.renew(), held.holder.token in (workdir / lease.FILE).read_text())
try:
    lease.acquire(workdir, **timings)
except lease.LeaseError as error:
    print(error)
held.release()
"""


@pytest.mark.slow
def test_a_lease_in_a_bucket_is_held_renewed_refused_and_released():
    """gs:// through the emulator, in a subprocess: TensorFlow's GCS client reads the
    emulator's environment when it starts."""
    with gcs_emulator("progan-lease") as gcs:
        result = subprocess.run(
            [sys.executable, "-c", _IN_A_BUCKET, "gs://progan-lease/run"],
            env=gcs.subprocess_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert gcs.list_objects("run/") == []
    renewed, refused = result.stdout.splitlines()
    assert renewed == "True True"
    assert refused.startswith("Another run holds the workdir gs://progan-lease/run: host ")


@pytest.mark.parametrize("bucket", [False, True], ids=["exclusive_create", "read_back"])
def test_of_runs_starting_at_once_exactly_one_takes_the_lease(tmp_path, monkeypatch, bucket):
    """Locally the lease is created exclusively; a bucket's writes are read back after a wait
    (here the local disk stands in for the bucket)."""
    monkeypatch.setattr(paths, "is_remote", lambda path: bucket)
    if bucket:  # a bucket replaces an object whole; a local write_text truncates, then writes
        path_type = type(epath.Path(str(tmp_path)))
        write_text = path_type.write_text

        def replace_whole(self, text, *args, **kwargs):
            part = path_type(f"{self}.{threading.get_ident()}.part")
            write_text(part, text, *args, **kwargs)
            os.replace(part, self)

        monkeypatch.setattr(path_type, "write_text", replace_whole)
    start, outcomes = threading.Barrier(6), []

    def contend():
        start.wait()
        try:
            outcomes.append(_acquire(tmp_path, settle_s=0.5))
        except lease.LeaseError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if isinstance(o, lease.Lease)]
    assert len(winners) == 1, outcomes
    assert _record(tmp_path)["token"] == winners[0].holder.token
    winners[0].release()


@pytest.mark.parametrize("index", [0, 1])
def test_every_process_stops_when_process_0_cannot_take_the_lease(
    tmp_path, config, monkeypatch, index
):
    held = _acquire(tmp_path)
    monkeypatch.setattr(lease.jax, "process_count", lambda: 2)
    monkeypatch.setattr(lease.jax, "process_index", lambda: index)
    failed_on_0 = np.array([2, 0])  # the statuses `collectives.together` gathers
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda status: failed_on_0)
    with pytest.raises(lease.LeaseError) as error:
        lease.hold(epath.Path(tmp_path), config.lease)
    expected = "Another run holds" if index == 0 else "lease failed on process(es) 0"
    assert expected in str(error.value)
    held.release()


def test_timings_that_would_make_a_live_lease_look_stale_are_refused(config):
    config.lease.stale_after_seconds = 50.0
    with pytest.raises(config_checks.ConfigError, match=r"config\.lease\.stale_after_seconds"):
        config_checks.validate(config, devices=8)


@pytest.mark.slow
def test_main_refuses_a_second_run_and_the_first_releases_at_sigterm(tmp_path, compile_cache):
    """main.py twice on one workdir: the second stops at once, naming the first. The first
    is caught decoding a large data set (after it took the lease, before any step), where
    SIGTERM stops it cleanly."""
    workdir, log_path = tmp_path / "run", tmp_path / "first.log"
    slow_data = ("--config.data.synthetic_size=50000", f"--config.data.cache_dir={tmp_path}")
    with open(log_path, "w") as log:
        first = start(workdir, compile_cache, log, *slow_data)
        try:
            wait_for(log_path, "decoding synthetic into", first)
            second = run(workdir, compile_cache, timeout=300)
            assert first.poll() is None, "the first run ended before the second one started"
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=120) == 0, log_path.read_text()[-3000:]
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"error: Another run holds the workdir {workdir}: host " in second.stderr
    assert f"pid {first.pid}, since" in second.stderr and "Traceback" not in second.stderr
    assert not (workdir / lease.FILE).exists()
