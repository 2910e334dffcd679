"""SIGTERM as a request to stop, visible to long preparations and to the training loop.

Preemption (a TPU VM's maintenance event, a SLURM time limit, `kill`) arrives as SIGTERM with a
grace period of seconds to minutes. Work that takes longer than that (decoding a data set,
box-filtering it, FID statistics) polls `check()` between chunks and stops with `Interrupted`;
the training loop reads `requested()` and saves before it stops. `main.py` turns `Interrupted`
into exit status 0: nothing was lost that a restart would not redo.
"""

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

_REQUESTED = threading.Event()
_DEFERRED = threading.Event()


class Interrupted(Exception):
    """SIGTERM arrived during a preparation; it stopped cleanly and a restart resumes it."""


def requested() -> bool:
    return _REQUESTED.is_set()


def check(what: str = "preparation") -> None:
    """Raises `Interrupted` if SIGTERM has arrived (call between chunks of long work), unless
    within `deferred()`."""
    if _REQUESTED.is_set() and not _DEFERRED.is_set():
        raise Interrupted(f"SIGTERM during {what}: stopped; the same command resumes it.")


def _handle(signum, frame) -> None:
    logging.warning("SIGTERM received: stopping at the next safe point.")
    _REQUESTED.set()


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[None]:
    """Within the block, SIGTERM sets the stop request instead of killing the process."""
    previous = signal.signal(signal.SIGTERM, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, long work runs to its end despite SIGTERM; the request stays for the
    caller to act on after it. For work that every process must finish together (an
    evaluation while training is collective: a process that left it alone would strand the
    others), after which the loop saves and stops on every process."""
    _DEFERRED.set()
    try:
        yield
    finally:
        _DEFERRED.clear()


def reset() -> None:
    """Forgets an earlier request (tests run several programs in one process)."""
    _REQUESTED.clear()
