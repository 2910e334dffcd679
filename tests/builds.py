"""Calls counted, slowed or interrupted, and what a cache build leaves on disk: shared by the
data tests (test_cache.py, test_input_pipeline.py, test_sources.py)."""

import os
import pathlib
import signal
import time


def leftovers(cache_root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    return {
        "temp": sorted(cache_root.rglob("*.tmp")),
        "partial": sorted(cache_root.rglob("*.partial")),
        "progress": sorted(cache_root.rglob("*.progress.json")),
    }


def counting(monkeypatch, module, name: str, on_call=None, delay: float = 0.0) -> list[int]:
    """Counts calls of `module.name`, slowed by `delay` s; `on_call(n)` runs after the n-th."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        time.sleep(delay)
        result = original(*args, **kwargs)
        calls.append(len(calls) + 1)
        if on_call:
            on_call(len(calls))
        return result

    monkeypatch.setattr(module, name, wrapper)
    return calls


def sigterm_at(call: int):
    def on_call(n):
        if n == call:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_call
