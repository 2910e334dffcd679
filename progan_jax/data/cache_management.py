"""`--mode=caches`: the files in the cache folders, which are stale, and their removal.

A separate job from building caches (`cache`): it runs on its own, over every cache folder of
every config and data set, and takes a folder's build lock only to leave live builds alone.
"""

import contextlib
import dataclasses
import datetime
import os
import pathlib
import re
import time

import ml_collections
import numpy as np

from progan_jax.data import cache, sources

_KEY_PATTERN = re.compile(
    rf"({'|'.join(sources.SOURCES)})-\d+px-\d+ch-[0-9a-f]{{12}}(-shard\d+of\d+)?"
)
_OLD_FORMAT = re.compile(r"images_\d+\.(u8|u8\.partial|json)")  # raw arrays, .json sidecars
_DAY_S = 86400.0


@dataclasses.dataclass(frozen=True)
class CacheFile:
    """A file in a cache folder (`<cache_dir>/<cache key>/`), as `--mode=caches` lists it."""

    path: pathlib.Path
    shape: tuple[int, ...] | None  # of a .npy array
    dtype: str | None
    size: int  # bytes
    modified: float  # seconds since the epoch
    used: float  # last read or written
    stale: str  # why it may be removed; "" if it is kept

    def line(self, root: pathlib.Path) -> dict:
        """The JSON line that describes it."""
        return {
            "name": str(self.path.relative_to(root)),
            "shape": self.shape,
            "dtype": self.dtype,
            "bytes": self.size,
            "modified": _iso(self.modified),
            "last_used": _iso(self.used),
            "stale": bool(self.stale),
            "reason": self.stale,
        }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def list_caches(
    data: ml_collections.ConfigDict, *, remove: bool = False, now: float | None = None
) -> list[CacheFile]:
    """Every file in the cache folders, each with why it is stale; removes those if `remove`.

    Stale: a file in the format before `.npy` caches; what a killed or interrupted build left
    (`.tmp`, `.partial`, `.progress.json`) while no process builds in its folder (a rerun
    would resume from a `.partial`, so removing one costs only that decoding again); any other
    file not read or written for more than `data.stale_cache_days`. The cache folder is
    shared by every config and data set, so "not this config's key" would remove caches that
    other runs still use; an image folder's superseded caches (its key changes with its files)
    age out instead. A folder where a process builds now is left alone. Runs mark the caches
    they read (`cache.read_array_cache`).
    """
    now = time.time() if now is None else now
    max_age_s = data.stale_cache_days * _DAY_S
    root, found = sources.cache_dir(data), []
    for folder in _cache_folders(root):
        with cache.lock_if_idle(folder) as idle:
            files = [_describe(path, idle, max_age_s, now) for path in _cache_files(folder)]
            if remove and idle:
                _remove_stale(folder, files)
        found += files
    return found


def _cache_folders(root: pathlib.Path) -> list[pathlib.Path]:
    """The folders named by a cache key (not, e.g., the XLA compilation cache next to them)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _KEY_PATTERN.fullmatch(p.name))


def _cache_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != ".lock")


def _describe(path: pathlib.Path, idle: bool, max_age_s: float, now: float) -> CacheFile:
    stat = path.stat()
    used = max(stat.st_atime, stat.st_mtime)
    shape, dtype, stale = None, None, ""
    if path.suffix == ".npy":
        try:
            shape, dtype = _npy_shape(path)
        except (OSError, ValueError) as error:
            stale = f"unreadable: {error}"
        with contextlib.suppress(OSError):  # listing a cache is not using it
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if idle:
        stale = stale or _stale_reason(path.name, now - used, max_age_s)
    return CacheFile(path, shape, dtype, stat.st_size, stat.st_mtime, used, stale)


def _npy_shape(path: pathlib.Path) -> tuple[tuple[int, ...], str]:
    """The shape and dtype in a `.npy` file's header (which its whole size must match)."""
    array = np.lib.format.open_memmap(path, mode="r")
    return tuple(array.shape), str(array.dtype)


def _stale_reason(name: str, unused_s: float, max_age_s: float) -> str:
    """Why a file in a folder where no process builds is stale, or ""."""
    if _OLD_FORMAT.fullmatch(name):
        return "old format (a raw array or its .json sidecar, from before .npy caches)"
    if name.endswith(".tmp"):
        return "left by a killed writer"
    if name.endswith((".partial", ".progress.json")):
        return "an interrupted build that no process continues now"
    if unused_s > max_age_s:
        return f"not used for {unused_s / _DAY_S:.0f} days (data.stale_cache_days)"
    return ""


def _remove_stale(folder: pathlib.Path, files: list[CacheFile]) -> None:
    """Removes the stale files (we hold the folder's lock), and the folder if that empties it."""
    for file in files:
        if file.stale:
            file.path.unlink(missing_ok=True)
    if all(file.stale for file in files):
        (folder / ".lock").unlink(missing_ok=True)  # a builder waiting on it makes a new one
        with contextlib.suppress(OSError):  # a file appeared: the folder stays
            folder.rmdir()


def cache_report(data: ml_collections.ConfigDict) -> list[dict]:
    """What `--mode=caches` prints: a line per file, then the totals (and what was removed,
    with `data.remove_stale_caches`)."""
    root, remove = sources.cache_dir(data), data.remove_stale_caches
    files = list_caches(data, remove=remove)
    stale = [file for file in files if file.stale]
    freed = sum(file.size for file in stale) if remove else 0
    summary = {
        "cache_dir": str(root),
        "files": len(files),
        "bytes": sum(file.size for file in files),
        "stale": len(stale),
        "stale_bytes": sum(file.size for file in stale),
        "removed": len(stale) if remove else 0,
        "bytes_freed": freed,
    }
    if stale and not remove:
        summary["hint"] = "--config.data.remove_stale_caches=True removes the stale files"
    return [{**file.line(root), "removed": remove and bool(file.stale)} for file in files] + [
        summary
    ]
