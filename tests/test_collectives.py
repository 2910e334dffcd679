"""Exchanges between processes (progan_jax.runtime.collectives), with two processes simulated: the
all-gather answers for both, this one being process 0."""

import numpy as np
import pytest
from jax.experimental import multihost_utils

from progan_jax.runtime import collectives, interrupt


@pytest.fixture
def two_processes(monkeypatch):
    """Process 0 of 2, whose partner's values the test sets: `partner["value"]`."""
    partner = {}

    def allgather(value, tiled=False):
        value = np.asarray(value)
        other = np.asarray(partner.get("value", value), value.dtype)
        if other.shape != value.shape:  # padded byte strings: the partner pads to the same size
            other = np.resize(other, value.shape)
        return np.stack([value, other])

    monkeypatch.setattr(collectives.jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    return partner


def test_one_process_runs_alone():
    assert collectives.process_values(7) == [7]
    assert collectives.allgather_bytes(b"abc") == [b"abc"]
    np.testing.assert_array_equal(collectives.any_process(np.int32([1, 0])), [1, 0])
    assert collectives.together("work", RuntimeError, lambda: 5) == 5


def test_values_and_flags_come_back_in_process_order(two_processes):
    two_processes["value"] = 9
    assert collectives.process_values(7) == [7, 9]
    two_processes["value"] = np.int32([0, 1, 0])
    np.testing.assert_array_equal(collectives.any_process(np.int32([1, 0, 0])), [1, 1, 0])


def test_bytes_of_different_lengths_come_back_whole(two_processes, monkeypatch):
    gathered = []

    def allgather(value, tiled=False):
        value = np.asarray(value)
        if value.ndim == 0:  # the lengths
            return np.stack([value, np.asarray(5, value.dtype)])
        gathered.append(value)
        other = np.zeros_like(value)
        other[:5] = np.frombuffer(b"hello", np.uint8)
        return np.stack([value, other])

    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    assert collectives.allgather_bytes(b"hi") == [b"hi", b"hello"]
    assert gathered[0].shape == (5,)  # padded to the longest


def test_a_failure_elsewhere_stops_this_process_too(two_processes):
    two_processes["value"] = np.int32(2)  # the partner failed
    with pytest.raises(RuntimeError, match=r"Data preparation failed on process\(es\) 1"):
        collectives.together("data preparation", RuntimeError, lambda: "done here")


def test_an_interruption_elsewhere_stops_this_process_cleanly(two_processes):
    two_processes["value"] = np.int32(1)  # SIGTERM on the partner
    with pytest.raises(interrupt.Interrupted, match="another process"):
        collectives.together("data preparation", RuntimeError, lambda: "done here")


def test_this_process_raises_its_own_error_after_telling_the_others(two_processes):
    two_processes["value"] = np.int32(0)

    def fails():
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        collectives.together("data preparation", RuntimeError, fails)
