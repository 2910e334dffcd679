"""The resumable, locked build of a `.npy` cache of uint8 images, and reading it back.

A cache is one array `[N, R, R, C]` of uint8 on disk, a `.npy` file (its header holds shape and
dtype: `numpy.load` reads it, no sidecar) read through a memory map. `sources.Source.load_images`
caches a source's decoded images with it, `input_pipeline.stage_images` their box-filtered
stages.

Building a cache can outlast a preemption's grace period, so it is resumable: `<name>.partial`
starts with a `.npy` header, images are appended to it and committed every ~`CHUNK_BYTES` (the
data flushed to disk, then `<stem>.progress.json` replaced). SIGTERM (`interrupt.check` between
images) or an error cuts the partial file back to its last commit and stops the decoding
threads; the next build continues after that commit, and the finished partial file, its header
rewritten in place for the final count, becomes the cache by a rename (no copy, no second
full-size file). A build where more than `MAX_SKIPPED_FRACTION` of the items could not be used
is an error. One process at a time builds in a cache folder (a `flock` on its `.lock`; the
others wait, then read); the builder first removes the `*.tmp` files that a killed process
left. `cache_management` lists the caches and removes the stale ones.
"""

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import math
import os
import pathlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import numpy as np

from progan_jax.runtime import interrupt, progress_bar
from progan_jax.runtime.errors import DataSetMissingError

CHUNK_BYTES = 256 << 20  # images committed at a time while building a cache (~5,500 at 128x128)
# A source where more than this share of the files cannot be decoded is an error, not a run on
# the few left: it is the wrong folder, or its files are in a format that is not read.
MAX_SKIPPED_FRACTION = 0.5
_LOCK_POLL_S = 0.2

# Reads a source from item `start` on: per item, its image, or why it could not be used.
Reader = Callable[[int], Iterator[np.ndarray | str]]


def _skipped_path(path: pathlib.Path) -> pathlib.Path:
    """The files a cache's build skipped, written only if there were any."""
    return path.with_suffix(".skipped.json")


def read_array_cache(path: pathlib.Path) -> tuple[np.ndarray, list[str]] | None:
    """The cached images (a read-only memory map) and the files skipped, or None if absent."""
    if not path.exists():
        return None
    images = np.lib.format.open_memmap(path, mode="r")
    skipped_path = _skipped_path(path)
    skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else []
    _mark_used(path, skipped_path)
    return images, skipped


def _mark_used(*paths: pathlib.Path) -> None:
    """Sets the access time, which `cache_management.list_caches` reads as the last use (also
    on noatime mounts, where reading does not set it); the modification time stays that of the
    build."""
    for path in paths:
        with contextlib.suppress(OSError):  # absent, or another user's read-only cache
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))


def chunk_items(shape: Sequence[int]) -> int:
    """Items of `shape` (uint8) per commit of a build: about `CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // math.prod(shape))


def reported(read: Reader, total: Callable[[], int | None], what: str) -> Reader:
    """`read` whose items are reported as a build consumes them: `what: N of total`. `total`
    is counted only when a build starts (listing a folder is work a cached run skips)."""
    return lambda start: progress_bar.track(read(start), total(), what, done=start)


def cached_array(
    path: pathlib.Path,
    read: Reader,
    shape: Sequence[int],
    *,
    chunk: int,
    limit: int | None = None,
    what: str,
) -> tuple[np.ndarray, list[str]]:
    """The images cached at `path`, built first from `read` if missing (see the module doc).

    `shape` is one image's; a commit follows every `chunk` items read; `limit` caps the
    number of images; `what` names the work in logs and errors.
    """
    cached = read_array_cache(path)
    if cached is None:
        with _build_lock(path.parent):
            if read_array_cache(path) is None:  # or another process built it while we waited
                _remove_stale_temps(path.parent)
                _build(path, read, shape, chunk, limit, what)
        cached = read_array_cache(path)
    return cached


@dataclasses.dataclass
class _Progress:
    """What the committed part of a build holds."""

    consumed: int = 0  # source items read: images and skipped files
    count: int = 0  # images written
    skipped: list[str] = dataclasses.field(default_factory=list)


def _temp_path(path: pathlib.Path) -> pathlib.Path:
    """A name no other writer uses, on any host or container (PIDs repeat across containers)."""
    unique = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
    return path.with_name(f"{path.name}.{unique}.tmp")


def _write_json(path: pathlib.Path, value: dict | list) -> None:
    """Writes atomically: readers see the old file or the new one, never a part."""
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _try_lock(file: BinaryIO) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # no locks on this file system (e.g. Lustre without -o flock)
        logging.warning("Cannot lock %s (%s): builds there are not exclusive.", file.name, error)
    return True


@contextlib.contextmanager
def _build_lock(directory: pathlib.Path) -> Iterator[None]:
    """Holds the folder's build lock, waiting (interruptibly) while another process builds.

    The kernel releases the lock when its holder dies, so a killed builder never blocks the
    next one, which then resumes its work. A lock file that a clean-up (`list_caches`) removed
    with its emptied folder while we waited on it locks nothing: then the folder is made again.
    """
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "ab") as lock:
            _wait_for_lock(lock, directory)
            if os.fstat(lock.fileno()).st_nlink:  # still the folder's lock file
                yield
                return


def _wait_for_lock(lock: BinaryIO, directory: pathlib.Path) -> None:
    if not _try_lock(lock):
        logging.info("Waiting for another process that builds %s.", directory)
        while not _try_lock(lock):
            interrupt.check(f"the wait for {directory}")
            time.sleep(_LOCK_POLL_S)


@contextlib.contextmanager
def lock_if_idle(folder: pathlib.Path) -> Iterator[bool]:
    """Holds the folder's build lock if no process builds there (True), else yields False: a
    clean-up (`cache_management`) must not remove what a live build writes."""
    with open(folder / ".lock", "ab") as lock:
        yield _try_lock(lock)


def _remove_stale_temps(directory: pathlib.Path) -> None:
    """Under the build lock no `*.tmp` is a live writer's: they are what killed ones left."""
    for path in directory.glob("*.tmp"):
        logging.info("Removing %s, left by a process that was killed.", path)
        path.unlink(missing_ok=True)


def _committed(progress_path: pathlib.Path) -> _Progress:
    if progress_path.exists():
        return _Progress(**json.loads(progress_path.read_text()))
    return _Progress()


def _build(
    path: pathlib.Path, read: Reader, shape: Sequence[int], chunk: int, limit: int | None, what: str
) -> None:
    """Builds the cache at `path`, from the last commit of an earlier build if there is one."""
    partial = path.with_name(f"{path.name}.partial")
    progress_path = path.with_suffix(".progress.json")
    try:
        with open(partial, "ab") as out:
            progress = _resume(out, progress_path, shape)
            logging.info("%s into %s (once), from item %d.", what, path, progress.consumed)
            with contextlib.closing(read(progress.consumed)) as items:
                _append(out, items, progress, progress_path, chunk, limit, what)
    except BaseException:
        _roll_back(partial, progress_path, shape)
        raise
    _finish(path, partial, progress_path, progress, shape, what)


def _npy_header(shape: Sequence[int], count: int) -> bytes:
    """The `.npy` header of `count` uint8 images of `shape`.

    Its length does not depend on `count` (numpy pads it for an array that grows along its
    first axis), so the partial file starts with it and `_finish` rewrites it in place.
    """
    header = io.BytesIO()
    fields = {"descr": "|u1", "fortran_order": False, "shape": (count, *shape)}
    np.lib.format.write_array_header_1_0(header, fields)
    return header.getvalue()


def _partial_size(shape: Sequence[int], count: int) -> int:
    """The bytes of a partial file holding `count` images: the header, then the images."""
    return len(_npy_header(shape, 0)) + count * math.prod(shape)


def _resume(out: BinaryIO, progress_path: pathlib.Path, shape: Sequence[int]) -> _Progress:
    """The last commit of an earlier build, the partial file cut back to it (or started)."""
    progress = _committed(progress_path)
    kept = _partial_size(shape, progress.count)
    if progress.consumed and os.fstat(out.fileno()).st_size >= kept:
        out.truncate(kept)
        return progress
    progress_path.unlink(missing_ok=True)  # nothing committed, or not this file's record
    out.truncate(0)
    out.write(_npy_header(shape, 0))
    return _Progress()


def _append(
    out: BinaryIO,
    items: Iterator[np.ndarray | str],
    progress: _Progress,
    progress_path: pathlib.Path,
    chunk: int,
    limit: int | None,
    what: str,
) -> None:
    """Writes the items' images, committing every `chunk` items; stops on SIGTERM."""
    for item in items:
        if progress.count == limit:  # data.max_images
            break
        interrupt.check(what)
        progress.consumed += 1
        if isinstance(item, str):
            progress.skipped.append(item)
        else:
            out.write(np.ascontiguousarray(item, np.uint8).data)
            progress.count += 1
        if progress.consumed % chunk == 0:
            _commit(out, progress, progress_path)
            logging.info("%s: %d images cached.", what, progress.count)
    _commit(out, progress, progress_path)


def _commit(out: BinaryIO, progress: _Progress, progress_path: pathlib.Path) -> None:
    """Makes the images durable before recording them: a crash never records more."""
    out.flush()
    os.fsync(out.fileno())
    _write_json(progress_path, dataclasses.asdict(progress))


def _roll_back(partial: pathlib.Path, progress_path: pathlib.Path, shape: Sequence[int]) -> None:
    """Cuts the partial file back to its last commit, or removes it if there is none."""
    committed = _committed(progress_path)
    size = partial.stat().st_size if partial.exists() else 0
    kept = _partial_size(shape, committed.count)
    if committed.consumed and kept <= size:  # never pad with zeros
        os.truncate(partial, kept)
    else:
        partial.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)


def _finish(
    path: pathlib.Path,
    partial: pathlib.Path,
    progress_path: pathlib.Path,
    progress: _Progress,
    shape: Sequence[int],
    what: str,
) -> None:
    """The partial file, its header rewritten for the final count, becomes the cache by a
    rename (the skipped files' list first, so that a reader of the cache finds it)."""
    unusable = _unusable(progress, what)
    if unusable:
        partial.unlink()
        progress_path.unlink()
        raise DataSetMissingError(unusable)
    with open(partial, "r+b") as out:
        out.write(_npy_header(shape, progress.count))
        out.flush()
        os.fsync(out.fileno())
    if progress.skipped:
        _write_json(_skipped_path(path), progress.skipped)
    else:
        _skipped_path(path).unlink(missing_ok=True)
    os.replace(partial, path)
    progress_path.unlink()


def _unusable(progress: _Progress, what: str) -> str | None:
    """Why the build's images are not a data set to train on, or None if they are."""
    skipped = progress.skipped
    examples = "; ".join(skipped[:3])
    if not progress.count:
        return f"{what}: no usable image ({len(skipped)} file(s) could not be decoded" + (
            f", e.g. {examples})." if skipped else ")."
        )
    if len(skipped) > MAX_SKIPPED_FRACTION * progress.consumed:
        return (
            f"{what}: {len(skipped)} of {progress.consumed} files could not be decoded, more "
            f"than {MAX_SKIPPED_FRACTION:.0%}; e.g. {examples}. Fix or remove them."
        )
    return None
