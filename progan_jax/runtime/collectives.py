"""Every exchange between the processes of a run, in one place.

Each function is a collective: every process must call it, in the same order, or the run
waits for ever. All of them answer at once in a single-process run.
"""

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from progan_jax.runtime import interrupt

T = TypeVar("T")


def process_values(value: int) -> list[int]:
    """Every process's `value`, in process order."""
    if jax.process_count() == 1:
        return [value]
    return [int(v) for v in multihost_utils.process_allgather(np.int64(value))]


def summed(values: np.ndarray) -> np.ndarray:
    """`values` added up over the processes (e.g. each shard's images per class)."""
    if jax.process_count() == 1:
        return values
    return np.sum(multihost_utils.process_allgather(values), axis=0)


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's `data` (of any length), in process order."""
    if jax.process_count() == 1:
        return [data]
    lengths = process_values(len(data))
    padded = np.zeros(max(lengths), np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(row[:n]) for row, n in zip(gathered, lengths, strict=True)]


def any_process(flags: np.ndarray) -> np.ndarray:
    """Each of `flags` (int32) set if it is set on any process: the stop and save decisions,
    which must be the same everywhere (a collective save, or a step's all-reduce, that one
    process skips leaves the others waiting)."""
    if jax.process_count() == 1:
        return flags
    return np.max(multihost_utils.process_allgather(flags), axis=0)


def from_process_0(values: list[int]) -> list[int]:
    """Process 0's `values` on every process (the same length everywhere)."""
    if jax.process_count() == 1:
        return values
    return [int(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))]


def gather_rows(array: jax.Array) -> np.ndarray:
    """A row-split global array whole on every process, as NumPy."""
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


_OK, _INTERRUPTED, _FAILED = 0, 1, 2


def together(what: str, error: type[Exception], work: Callable[[], T]) -> T:
    """Runs `work` here and stops every process if it failed or was interrupted anywhere.

    A process that failed alone would leave the others waiting in the next collective until the
    runtime's heartbeat timeout, and a SIGTERM would no longer mean a clean exit 0. So the
    processes exchange how their `work` ended (one all-gather, which is also a barrier) and all
    stop the same way: `Interrupted` if any was, else the failed processes with their own error
    and the others with `error`, naming `what` failed where.
    """
    if jax.process_count() == 1:
        return work()
    result, status, failure = None, _OK, None
    try:
        result = work()
    except interrupt.Interrupted as stopped:
        status, failure = _INTERRUPTED, stopped
    except Exception as raised:
        status, failure = _FAILED, raised
    statuses = np.asarray(multihost_utils.process_allgather(np.int32(status)))
    if failure is not None:
        raise failure
    if (statuses == _INTERRUPTED).any():
        raise interrupt.Interrupted(f"SIGTERM on another process during {what}: stopped.")
    if (statuses == _FAILED).any():
        failed = ", ".join(str(i) for i in np.flatnonzero(statuses == _FAILED))
        raise error(f"{what.capitalize()} failed on process(es) {failed}; their logs say why.")
    return result
