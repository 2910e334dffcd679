"""One training run per workdir: a lease file that the run holds and renews while it lives.

A restarted job often starts while the old process lingers, and two runs on one workdir break
each other's checkpoints: one prunes what the other is about to restore, or removes the
temporary directory of the other's save. So a run takes `<workdir>/lease.json` before it
touches anything else there, renews it every `renew_seconds` on a daemon thread and removes it
when it ends. A second run stops at once with an error that names the holder. A lease is stale,
and taken over with a warning, when it was not renewed for `stale_after_seconds` (its run hung,
or died on another machine), or at once when its process has ended on this machine.

The file is JSON: `host`, `pid`, `started` and `renewed` (Unix seconds), `token` (unique to
the run), and what makes the pid checkable: `pid_namespace` (kernel boot and PID namespace)
and `process_started` (the process's start time, which tells it from a later process that got
the same pid, as every container's first process does).

What is guaranteed. On a local or mounted disk with hard links, a free workdir's lease is
created exclusively: of two runs that start at once, exactly one takes it. Taking over a stale
lease, and any take on a bucket (`gs://`: a write replaces the object, and these storage
clients have no exclusive create), is write, wait `SETTLE_S`, read back: the last writer wins
and the others stop. That holds while no contender takes longer than `SETTLE_S` from reading
the lease to writing it; a slower one may also believe it holds the lease, until its first
renewal finds the other's token, logs an error and stops renewing. Staleness trusts the
machines' wall clocks to agree to within a small part of `stale_after_seconds` (NTP does).
"""

import atexit
import dataclasses
import datetime
import functools
import json
import logging
import os
import pathlib
import socket
import threading
import time
import uuid
from collections.abc import Callable

import jax
import ml_collections
from etils import epath

from progan_jax.runtime import collectives, paths
from progan_jax.runtime.errors import UserError

FILE = "lease.json"
SETTLE_S = 2.0  # between writing a non-exclusive lease and reading it back


class LeaseError(UserError, RuntimeError):
    """Another run holds the workdir, or this run could not take its lease."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """A run that holds (or held) a workdir's lease, as the lease file records it."""

    host: str
    pid: int
    started: float
    renewed: float
    token: str
    pid_namespace: str | None
    process_started: str | None

    def describe(self, now: float) -> str:
        return (
            f"host {self.host}, pid {self.pid}, since {_when(self.started, now)}, "
            f"last renewed {_when(self.renewed, now)}"
        )


def _utc(seconds: float) -> str:
    return f"{datetime.datetime.fromtimestamp(seconds, datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _when(seconds: float, now: float) -> str:
    return f"{_utc(seconds)} ({now - seconds:.0f} s ago)"


def _pid_namespace() -> str | None:
    """This kernel boot and PID namespace: a recorded pid names a process here only if its
    holder ran in the same one (None where /proc does not say)."""
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat field 22), or
    None if there is no such process."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields from the 3rd on follow the name's ")"


def _this_run(now: float) -> Holder:
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        renewed=now,
        token=uuid.uuid4().hex,
        pid_namespace=_pid_namespace(),
        process_started=_process_started(os.getpid()),
    )


def _read(path: epath.Path) -> Holder | None:
    """The recorded holder, or None if there is no lease."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError) as error:
        raise LeaseError(
            f"{path} is not a lease this program wrote ({error}). If no run uses this "
            "workdir, delete it and start again."
        ) from error


def _write(path: epath.Path, holder: Holder, *, create: bool) -> bool:
    """Writes the record whole (readers never see a part of it); returns whether the write
    was an exclusive creation, which raises FileExistsError if a lease exists.

    A local file is written beside the lease and then linked (`create`) or renamed to it; a
    bucket replaces the object whole, never exclusively.
    """
    text = json.dumps(dataclasses.asdict(holder), indent=1)
    if paths.is_remote(path):
        path.write_text(text)
        return False
    temporary = path.with_name(f"{path.name}.{holder.token}.tmp")
    temporary.write_text(text)
    try:
        if create and _link(temporary, path):
            return True
        os.replace(temporary, path)
        return False
    finally:
        temporary.unlink(missing_ok=True)


def _link(source: epath.Path, target: epath.Path) -> bool:
    """Creates `target` as a hard link to `source`, exclusively (FileExistsError if it
    exists); False where the file system has no hard links (some FUSE mounts)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        return False
    return True


def _stale_because(holder: Holder, now: float, stale_after_seconds: float) -> str | None:
    """Why `holder` no longer holds its lease, or None if it may still."""
    if now - holder.renewed > stale_after_seconds:
        return f"not renewed for more than lease.stale_after_seconds={stale_after_seconds:g}"
    here = holder.pid_namespace is not None and holder.pid_namespace == _pid_namespace()
    if here and holder.process_started != _process_started(holder.pid):
        return f"its process {holder.pid} on this machine has ended"
    return None


def _held_error(path: epath.Path, holder: Holder, now: float, stale_after: float) -> LeaseError:
    return LeaseError(
        f"Another run holds the workdir {path.parent}: {holder.describe(now)}. Stop it (or let "
        "it finish) and start this command again, or train in another --workdir. If that run "
        f"is gone (its machine died), a run started after {_utc(holder.renewed + stale_after)} "
        f"takes over its lease, or delete {path} to take over now."
    )


class Lease:
    """The workdir's lease, held by this run: renewed on a daemon thread until `release`.

    `release` runs at interpreter exit too, so that an error between taking the lease and
    the training loop's own clean-up does not leave it held (a killed process leaves it; the
    next run takes it over as stale).
    """

    def __init__(
        self,
        path: epath.Path,
        holder: Holder,
        renew_seconds: float,
        clock: Callable[[], float],
    ):
        self.path = path
        self.holder = holder
        self.lost = threading.Event()  # set once another run has taken the lease over
        self._clock = clock
        self._stop = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_every, args=(renew_seconds,), name="workdir-lease", daemon=True
        )
        self._renewer.start()
        atexit.register(self.release)

    def renew(self) -> bool:
        """Records the time now; False (with an error logged) if another run took it over."""
        current = _read(self.path)
        if current is None or current.token != self.holder.token:
            taker = current.describe(self._clock()) if current else "none (the file is gone)"
            logging.error(
                "This run lost the lease of %s; its holder now: %s. Stop this run: another one "
                "writes the same checkpoints.",
                self.path.parent,
                taker,
            )
            self.lost.set()
            return False
        self.holder = dataclasses.replace(self.holder, renewed=self._clock())
        _write(self.path, self.holder, create=False)
        return True

    def _renew_every(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                if not self.renew():
                    return
            except Exception as error:  # e.g. a bucket out of reach for a while: retry
                logging.warning("Could not renew the lease %s: %s", self.path, error)

    def release(self) -> None:
        """Stops renewing and removes the lease if it is still this run's (once; never raises,
        so that it cannot hide the error a run stops with)."""
        atexit.unregister(self.release)
        self._stop.set()
        self._renewer.join()
        try:
            current = _read(self.path)
            if current is not None and current.token == self.holder.token:
                self.path.unlink(missing_ok=True)
        except Exception as error:
            logging.warning("Could not release the lease %s: %s", self.path, error)


def acquire(
    workdir: epath.Path,
    *,
    renew_seconds: float,
    stale_after_seconds: float,
    clock: Callable[[], float] = time.time,
    settle_s: float = SETTLE_S,
) -> Lease:
    """Takes `workdir`'s lease or raises `LeaseError` naming its holder (see the module)."""
    path = workdir / FILE
    held = _read(path)
    if held is not None:
        now = clock()
        reason = _stale_because(held, now, stale_after_seconds)
        if reason is None:
            raise _held_error(path, held, now, stale_after_seconds)
        logging.warning(
            "Taking over the lease of %s from %s: %s.", workdir, held.describe(now), reason
        )
    me = _this_run(clock())
    try:
        exclusive = _write(path, me, create=held is None)
    except FileExistsError:  # another run created it since it was read: it holds it now
        exclusive, settle_s = False, 0.0
    if not exclusive:
        time.sleep(settle_s)
        current = _read(path)
        if current is None or current.token != me.token:
            who = f"now {current.describe(clock())}" if current else "it is gone"
            raise LeaseError(
                f"The lease of {workdir} changed hands while this run took it ({who}): another "
                "run is starting there. Start one run per workdir."
            )
    return Lease(path, me, renew_seconds, clock)


def hold(workdir: epath.Path, config: ml_collections.ConfigDict) -> Lease | None:
    """Process 0 takes the run's lease (None on the others); all stop if it could not."""
    take = functools.partial(
        acquire,
        workdir,
        renew_seconds=config.renew_seconds,
        stale_after_seconds=config.stale_after_seconds,
    )
    first = jax.process_index() == 0
    return collectives.together(
        "taking the workdir's lease", LeaseError, take if first else lambda: None
    )
