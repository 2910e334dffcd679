"""Data sources, decoded once into a cache of uint8 images at the final resolution.

Every source (TFDS CelebA, TFDS CelebA-HQ, any TFDS image data set, an image folder, the
built-in synthetic faces) ends up as one array `[N, R, R, C]` of uint8 on disk, a `.npy` file
(its header holds shape and dtype: `numpy.load` reads it, no sidecar) read through a memory
map. Decoding happens once, not once per stage or per epoch; the per-stage arrays are
box-filtered from it (`input_pipeline.stage_images`). A process may decode only its `Shard` of
the source (1/N of it: per-host caches on a pod). Image files are decoded by `decode`; a folder
where more than `MAX_SKIPPED_FRACTION` of them fail is an error.

Building a cache can outlast a preemption's grace period, so it is resumable: `<name>.partial`
starts with a `.npy` header, images are appended to it and committed every ~`CHUNK_BYTES` (the
data flushed to disk, then `<stem>.progress.json` replaced). SIGTERM (`interrupt.check` between
images) or an error cuts the partial file back to its last commit and stops the decoding
threads; the next build continues after that commit, and the finished partial file, its header
rewritten in place for the final count, becomes the cache by a rename (no copy, no second
full-size file). One process at a time builds in a cache folder (a `flock` on its `.lock`; the
others wait, then read); the builder first removes the `*.tmp` files that a killed process
left. `list_caches` (`--mode=caches`) lists the caches and removes the stale ones.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import ml_collections
import numpy as np
from PIL import Image

from progan_jax import interrupt
from progan_jax.data import decode, synthetic

CELEBA_CROP_CENTER = (121, 89)  # (row, column) of the official 128x128 crop, dataset_tool.py
CELEBA_CROP = 128
CELEBA_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)
SOURCES = ("synthetic", "celeb_a", "celeb_a_hq", "tfds", "image_folder")
CHUNK_BYTES = 256 << 20  # images committed at a time while building a cache (~5,500 at 128x128)
# Decoding threads: each may hold an image of up to Image.MAX_IMAGE_PIXELS (several hundred MB
# as RGBA), so many cores must not mean many huge images in memory at once.
MAX_DECODE_WORKERS = 8
# A source where more than this share of the files cannot be decoded is an error, not a run on
# the few left: it is the wrong folder, or its files are in a format that is not read.
MAX_SKIPPED_FRACTION = 0.5
_LOCK_POLL_S = 0.2

# Reads a source from item `start` on: per item, its image, or why it could not be used.
Reader = Callable[[int], Iterator[np.ndarray | str]]


class DataSetMissingError(RuntimeError):
    """The configured data set is not where it should be; the message says how to place it."""


@dataclasses.dataclass(frozen=True)
class CachedImages:
    images: np.ndarray  # [N, R, R, C] uint8 (a read-only memory map)
    skipped: tuple[str, ...]  # files that could not be decoded


@dataclasses.dataclass(frozen=True)
class Shard:
    """Process `index` of `count` decodes and caches only this share of the source."""

    index: int = 0
    count: int = 1

    def bounds(self, total: int) -> tuple[int, int]:
        """Items `[first, last)` of `total`: contiguous, as `tfds.even_splits`."""
        return self.index * total // self.count, (self.index + 1) * total // self.count

    def limit(self, max_images: int | None) -> int | None:
        """The share of `data.max_images` (rounded up, so that no share is empty)."""
        return None if max_images is None else -(-max_images // self.count)


WHOLE = Shard()


# --------------------------------------------------------------------------- image helpers


def celeba_crop(image: np.ndarray) -> np.ndarray:
    """The official 128x128 CelebA crop centred at (x=89, y=121) of a 218x178 aligned image."""
    row, col = CELEBA_CROP_CENTER
    half = CELEBA_CROP // 2
    return image[row - half : row + half, col - half : col + half]


def box_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """`factor` x `factor` box filter of uint8 images (= repeated 2x2 averaging), rounded.

    Sums of at most 4**8 uint8 values and divisions by powers of two are exact in float32, so
    this equals the official tool's repeated 2x2 float averaging followed by rint.
    """
    if factor == 1:
        return np.asarray(images)
    n, h, w, c = images.shape
    blocks = images.reshape(n, h // factor, factor, w // factor, factor, c)
    mean = blocks.sum(axis=(2, 4), dtype=np.float32) * np.float32(1.0 / (factor * factor))
    return np.clip(np.rint(mean), 0, 255).astype(np.uint8)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    return np.asarray(Image.fromarray(image).convert("L"), np.uint8)[..., None]


# --------------------------------------------------------------------------------- sources


def _synthetic(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard, start: int
) -> Iterator[np.ndarray]:
    first, last = shard.bounds(data.synthetic_size)
    for i in range(first + start, last):
        yield _to_channels(synthetic.draw_face(i, resolution, data.synthetic_seed), channels)


def _find_images(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in _files(root) if p.suffix.lower() in decode.IMAGE_SUFFIXES)


def _files(root: pathlib.Path) -> Iterator[pathlib.Path]:
    return (p for p in root.rglob("*") if p.is_file())


def _warn_about_other_files(root: pathlib.Path) -> None:
    """Names the files that are not read as images, so that none is left out silently."""
    others = sorted(p for p in _files(root) if p.suffix.lower() not in decode.IMAGE_SUFFIXES)
    if others:
        counts = collections.Counter(p.suffix.lower() or "(none)" for p in others)
        logging.warning(
            "Ignoring %d file(s) under %s whose extension is not one of %s (%s), e.g. %s",
            len(others),
            root,
            ", ".join(decode.IMAGE_SUFFIXES),
            ", ".join(f"{suffix}: {n}" for suffix, n in counts.most_common()),
            ", ".join(str(p) for p in others[:3]),
        )


def _parallel_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """`map(fn, items)` on `workers` threads, in order, at most `2 * workers` items ahead.

    `Executor.map` submits every item at once, and leaving its pool waits for all of them;
    closing this generator (SIGTERM, an error) cancels what has not started, so the threads
    stop within one item each.
    """
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _image_folder(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard, start: int
) -> Iterator[np.ndarray | str]:
    if not data.path:
        raise ValueError("data.path: set the image folder, e.g. --config.data.path=/data/faces")
    root = pathlib.Path(data.path).expanduser()
    if not root.is_dir():
        raise DataSetMissingError(f"data.path: {root} is not a directory.")
    paths = _find_images(root)
    if not paths:
        raise DataSetMissingError(
            f"data.path: no image files ({', '.join(decode.IMAGE_SUFFIXES)}) under {root}."
        )
    if not start:  # once per build, not again when it resumes
        _warn_about_other_files(root)
    first, last = shard.bounds(len(paths))
    read = functools.partial(decode.decode_file, resolution=resolution, channels=channels)
    workers = min(MAX_DECODE_WORKERS, os.cpu_count() or 1)
    yield from _parallel_map(read, paths[first + start : last], workers)


def _tfds_name(data: ml_collections.ConfigDict, resolution: int) -> str:
    if data.source == "celeb_a":
        return "celeb_a"
    if data.source == "celeb_a_hq":
        return f"celeb_a_hq/{resolution}"
    if not data.tfds_name:
        raise ValueError("data.tfds_name: name the TFDS data set, e.g. 'lsun/bedroom'.")
    return data.tfds_name


def _missing_message(name: str, data_dir: str, manual_dir: str) -> str:
    if name == "celeb_a":
        return (
            f"CelebA is not prepared in the TFDS data dir {data_dir}. TFDS fetches it from "
            "Google Drive, which often fails on quota. Download these files by hand (CelebA "
            f"site, 'Align&Cropped Images'): {', '.join(CELEBA_FILES)}; put them into "
            f"{manual_dir} and run again with --config.data.download=True: TFDS then builds "
            "the data set from them, without the network (checksums are verified)."
        )
    if name.startswith("celeb_a_hq"):
        res = name.split("/")[1]
        return (
            f"{name} is not prepared in the TFDS data dir {data_dir}. CelebA-HQ cannot be "
            f"downloaded: build data{res}x{res}.tar with the official dataset tool (see "
            "github.com/tkarras/progressive_growing_of_gans, 'Preparing datasets'), put it "
            f"into {manual_dir} and run again with --config.data.download=True."
        )
    return (
        f"TFDS data set {name} is not prepared in {data_dir}. Run again with "
        f"--config.data.download=True, or place its files in {manual_dir} if it is manual-only."
    )


def _tfds(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard, start: int
) -> Iterator[np.ndarray]:
    import tensorflow_datasets as tfds

    mock = data.tfds_mock_examples
    with tfds.testing.mock_data(num_examples=mock) if mock else contextlib.nullcontext():
        yield from _read_tfds(data, resolution, channels, shard, start)


def _read_tfds(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard, start: int
) -> Iterator[np.ndarray]:
    """The split (in shard mode `tfds.even_splits(split, n)[i]`) from example `start` on.

    The images are decoded after the skip: a resumed build reads the skipped records' bytes
    but does not decode them again.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    name = _tfds_name(data, resolution)
    builder = tfds.builder(name, data_dir=data.data_dir)
    data_dir = builder.data_dir_root
    manual_dir = data.manual_dir or os.path.join(str(data_dir), "downloads", "manual")
    if data.download and not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:  # network, quota, checksum or missing manual files
            raise DataSetMissingError(_missing_message(name, data_dir, manual_dir)) from error
    split = (
        tfds.even_splits(data.split, shard.count)[shard.index] if shard.count > 1 else data.split
    )
    key = data.image_key
    try:
        dataset = builder.as_dataset(
            split=split, shuffle_files=False, decoders={key: tfds.decode.SkipDecoding()}
        )
    except (AssertionError, FileNotFoundError, ValueError) as error:
        raise DataSetMissingError(_missing_message(name, data_dir, manual_dir)) from error

    feature = builder.info.features[key]
    dataset = dataset.skip(start).map(
        lambda ex: feature.decode_example(ex[key]), num_parallel_calls=tf.data.AUTOTUNE
    )
    for image in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        yield _fit_tfds_image(image, data.source == "celeb_a", resolution, channels)


def _fit_tfds_image(image: np.ndarray, celeb_a: bool, resolution: int, channels: int) -> np.ndarray:
    """A TFDS image at `resolution` x `resolution` x `channels` (CelebA: the official crop)."""
    if celeb_a:
        crop = celeba_crop(image)
        return box_downsample(_to_channels(crop, channels)[None], CELEBA_CROP // resolution)[0]
    if image.shape == (resolution, resolution, channels):
        return image
    return decode.fit(
        Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image),
        resolution,
        channels,
    )


_READERS: dict[str, Callable] = {
    "synthetic": _synthetic,
    "image_folder": _image_folder,
    "celeb_a": _tfds,
    "celeb_a_hq": _tfds,
    "tfds": _tfds,
}


# ----------------------------------------------------------------------------------- cache


def _folder_fingerprint(path: str) -> str:
    """Changes when files under the folder are added, removed or modified."""
    digest = hashlib.sha1()
    for p in _find_images(pathlib.Path(path).expanduser()):
        stat = p.stat()
        digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def cache_key(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard = WHOLE
) -> str:
    """A directory name that changes whenever the decoded images would."""
    fields = {
        "source": data.source,
        "name": data.tfds_name if data.source == "tfds" else "",
        "split": data.split if data.source in ("celeb_a", "celeb_a_hq", "tfds") else "",
        "key": data.image_key if data.source == "tfds" else "",
        "folder": _folder_fingerprint(data.path) if data.source == "image_folder" else "",
        "synthetic": [data.synthetic_size, data.synthetic_seed]
        if data.source == "synthetic"
        else [],
        "max_images": data.max_images,
        "mock": data.tfds_mock_examples if data.source in ("celeb_a", "celeb_a_hq", "tfds") else 0,
        "resolution": resolution,
        "channels": channels,
    }
    if data.source == "image_folder":  # (a new field here would change every source's key)
        fields["decoding"] = decode.RULES_VERSION
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    key = f"{data.source}-{resolution}px-{channels}ch-{digest}"
    return key if shard == WHOLE else f"{key}-shard{shard.index}of{shard.count}"


def cache_dir(data: ml_collections.ConfigDict) -> pathlib.Path:
    if data.cache_dir:
        return pathlib.Path(data.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return pathlib.Path(base) / "progan_jax"


def cache_path(
    data: ml_collections.ConfigDict,
    resolution: int,
    channels: int,
    shard: Shard = WHOLE,
    size: int | None = None,
) -> pathlib.Path:
    """The cache file of `shard`'s images at `size` x `size` (default: `resolution`)."""
    key = cache_key(data, resolution, channels, shard)
    return cache_dir(data) / key / f"images_{size or resolution}.npy"


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
    """Sets the access time, which `list_caches` reads as the last use (also on noatime mounts,
    where reading does not set it); the modification time stays that of the build."""
    for path in paths:
        with contextlib.suppress(OSError):  # absent, or another user's read-only cache
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))


def chunk_items(shape: Sequence[int]) -> int:
    """Items of `shape` (uint8) per commit of a build: about `CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // math.prod(shape))


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


def load_images(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard = WHOLE
) -> CachedImages:
    """The source's images (`shard`'s share) at `resolution`, decoded once into the cache."""
    if data.source not in _READERS:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    shape = (resolution, resolution, channels)
    images, skipped = cached_array(
        cache_path(data, resolution, channels, shard),
        functools.partial(_READERS[data.source], data, resolution, channels, shard),
        shape,
        chunk=chunk_items(shape),
        limit=shard.limit(data.max_images),
        what=f"decoding {data.source}",
    )
    if skipped:
        logging.warning(
            "Skipped %d file(s) that could not be decoded, e.g. %s",
            len(skipped),
            "; ".join(skipped[:3]),
        )
    return CachedImages(images=images, skipped=tuple(skipped))


# ------------------------------------------------------------------------ cache management

_KEY_PATTERN = re.compile(rf"({'|'.join(SOURCES)})-\d+px-\d+ch-[0-9a-f]{{12}}(-shard\d+of\d+)?")
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
    they read (`_mark_used`).
    """
    now = time.time() if now is None else now
    max_age_s = data.stale_cache_days * _DAY_S
    root, found = cache_dir(data), []
    for folder in _cache_folders(root):
        with _lock_if_idle(folder) as idle:
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


@contextlib.contextmanager
def _lock_if_idle(folder: pathlib.Path) -> Iterator[bool]:
    """Holds the folder's build lock if no process builds there (True), else yields False."""
    with open(folder / ".lock", "ab") as lock:
        yield _try_lock(lock)


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
    root, remove = cache_dir(data), data.remove_stale_caches
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
