"""Data sources, decoded once into a cache of uint8 images at the final resolution.

Every source (TFDS CelebA, TFDS CelebA-HQ, any TFDS image data set, an image folder, the
built-in synthetic faces) ends up as one array `[N, R, R, C]` of uint8 on disk, a `.npy` cache
(`cache`: built resumably, one process at a time) read through a memory map. Decoding happens
once, not once per stage or per epoch; the per-stage arrays are box-filtered from it
(`input_pipeline.stage_images`). A process may decode only its `Shard` of the source (1/N of
it: per-host caches on a pod). Image files are decoded by `decode`; a folder where more than
`cache.MAX_SKIPPED_FRACTION` of them fail is an error. This module names each source's cache
(`cache_key`, `cache_path`); `cache_management` lists and cleans the caches (`--mode=caches`).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
from PIL import Image

from progan_jax.data import cache, decode, synthetic
from progan_jax.errors import DataSetMissingError

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
TFDS_SOURCES = ("celeb_a", "celeb_a_hq", "tfds")
# Decoding threads: each may hold an image of up to Image.MAX_IMAGE_PIXELS (several hundred MB
# as RGBA), so many cores must not mean many huge images in memory at once.
MAX_DECODE_WORKERS = 8


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


def _pair_sums(images: np.ndarray) -> np.ndarray:
    """float32 sums of the 2x2 blocks of `[N, H, W, C]` images.

    Two additions of strided halves: several times faster than `sum` over the block axes,
    which NumPy runs as short inner loops (box filtering a large set takes minutes per stage).
    """
    n, h, w, c = images.shape
    rows = images.reshape(n, h // 2, 2, w, c)
    rows = np.add(rows[:, :, 0], rows[:, :, 1], dtype=np.float32)
    columns = rows.reshape(n, h // 2, w // 2, 2, c)
    return columns[:, :, :, 0] + columns[:, :, :, 1]


def box_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """`factor` x `factor` box filter of uint8 images (= repeated 2x2 averaging), rounded.

    Sums of at most 4**8 uint8 values and divisions by powers of two are exact in float32, so
    this equals the official tool's repeated 2x2 float averaging followed by rint.
    """
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"box filter factor {factor}: a power of two is needed")
    sums = np.asarray(images)
    for _ in range(int(factor).bit_length() - 1):
        sums = _pair_sums(sums)
    if factor == 1:
        return sums
    mean = sums * np.float32(1.0 / (factor * factor))
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


# ------------------------------------------------------------------------- cache locations


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


def _item_count(data: ml_collections.ConfigDict, shard: Shard) -> int | None:
    """Items the shard's reader yields (files, for a folder), capped by `data.max_images`;
    None where only reading tells (TFDS)."""
    if data.source == "synthetic":
        count = data.synthetic_size
    elif data.source == "image_folder" and data.path:
        count = len(_find_images(pathlib.Path(data.path).expanduser()))  # 0: the reader says why
    else:
        return None
    first, last = shard.bounds(count)
    limit = shard.limit(data.max_images)
    return last - first if limit is None else min(last - first, limit)


def load_images(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard = WHOLE
) -> CachedImages:
    """The source's images (`shard`'s share) at `resolution`, decoded once into the cache."""
    if data.source not in _READERS:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    shape = (resolution, resolution, channels)
    what = f"decoding {data.source}"
    read = functools.partial(_READERS[data.source], data, resolution, channels, shard)
    images, skipped = cache.cached_array(
        cache_path(data, resolution, channels, shard),
        cache.reported(read, functools.partial(_item_count, data, shard), what),
        shape,
        chunk=cache.chunk_items(shape),
        limit=shard.limit(data.max_images),
        what=what,
    )
    if skipped:
        logging.warning(
            "Skipped %d file(s) that could not be decoded, e.g. %s",
            len(skipped),
            "; ".join(skipped[:3]),
        )
    return CachedImages(images=images, skipped=tuple(skipped))


# ---------------------------------------------------------------------------------- labels

LABEL_SOURCES = {
    "subfolders": ("image_folder",),
    "feature": TFDS_SOURCES,
    "skin_tone": ("synthetic",),
}


@dataclasses.dataclass(frozen=True)
class Labels:
    ids: np.ndarray  # [N] int32 class of each cached image, in the cache's order
    names: tuple[str, ...]  # class names, by id

    def counts(self) -> np.ndarray:
        return np.bincount(self.ids, minlength=len(self.names))


def _folder_labels(
    data: ml_collections.ConfigDict, shard: Shard, cached: CachedImages
) -> tuple[list[str], list[str]]:
    """The first-level subfolder of each cached image, and the sorted subfolder names."""
    root = pathlib.Path(data.path).expanduser()
    paths = _find_images(root)
    outside = [p for p in paths if p.parent == root]
    if outside:
        raise DataSetMissingError(
            f"data.labels='subfolders': {len(outside)} image(s) directly under {root} have no "
            f"class folder, e.g. {outside[0].name}; put each class's images into a subfolder "
            "of its own (root/<class>/...), or train without labels."
        )
    classes = sorted({p.relative_to(root).parts[0] for p in paths})
    skipped = {s.split(": ", 1)[0] for s in cached.skipped}
    first, last = shard.bounds(len(paths))
    used = [p for p in paths[first:last] if str(p) not in skipped][: len(cached.images)]
    return [p.relative_to(root).parts[0] for p in used], classes


def _feature_labels(
    data: ml_collections.ConfigDict, resolution: int, shard: Shard, count: int
) -> tuple[list[int], list[str]]:
    """The TFDS feature `data.label_key` of the first `count` examples of the shard's split
    (read without decoding the images) and the feature's class names."""
    import tensorflow_datasets as tfds

    mock = data.tfds_mock_examples
    with tfds.testing.mock_data(num_examples=mock) if mock else contextlib.nullcontext():
        name = _tfds_name(data, resolution)
        builder = tfds.builder(name, data_dir=data.data_dir)
        features = builder.info.features
        if data.label_key not in features:
            raise DataSetMissingError(
                f"data.label_key: {name} has no feature {data.label_key!r}; its features are "
                f"{', '.join(sorted(features))}."
            )
        feature = features[data.label_key]
        if not hasattr(feature, "names"):
            raise DataSetMissingError(
                f"data.label_key: feature {data.label_key!r} of {name} is not a class label."
            )
        split = (
            tfds.even_splits(data.split, shard.count)[shard.index]
            if shard.count > 1
            else data.split
        )
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={data.image_key: tfds.decode.SkipDecoding()},
        )
        ids = [int(ex[data.label_key]) for ex in dataset.take(count).as_numpy_iterator()]
        return ids, list(feature.names)


def _labels_path(data: ml_collections.ConfigDict, images_path: pathlib.Path) -> pathlib.Path:
    spec = data.label_key if data.labels == "feature" else data.labels
    return images_path.parent / f"labels_{spec}.npz"


def load_labels(
    data: ml_collections.ConfigDict,
    resolution: int,
    channels: int,
    shard: Shard = WHOLE,
) -> Labels:
    """The class of each of the shard's cached images (`data.labels`), cached beside them.

    Labels follow the images' order (files skipped as undecodable, `data.max_images`), so
    the stream draws an image and its label by the same index.
    """
    path = _labels_path(data, cache_path(data, resolution, channels, shard))
    if path.exists():  # read before the images: naming a folder's cache stats all its files
        with np.load(path) as stored:
            return Labels(stored["ids"], tuple(str(n) for n in stored["names"]))
    cached = load_images(data, resolution, channels, shard)
    count = len(cached.images)
    if data.labels == "subfolders":
        folders, names = _folder_labels(data, shard, cached)
        ids = [names.index(f) for f in folders]
    elif data.labels == "skin_tone":
        first, _ = shard.bounds(data.synthetic_size)
        ids = [synthetic.skin_tone(first + i, data.synthetic_seed) for i in range(count)]
        names = list(synthetic.SKIN_TONES)
    else:
        ids, names = _feature_labels(data, resolution, shard, count)
    if len(ids) != count:
        raise DataSetMissingError(
            f"data.labels: {len(ids)} labels for {count} cached images under {path.parent}; "
            "remove that folder (--mode=caches) and run again."
        )
    labels = Labels(np.asarray(ids, np.int32), tuple(names))
    temp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(temp, ids=labels.ids, names=np.asarray(labels.names))
    os.replace(temp, path)
    balance = ", ".join(f"{n}: {c}" for n, c in zip(labels.names, labels.counts(), strict=True))
    logging.info("Labels (%s): %d classes; images per class: %s.", data.labels, len(names), balance)
    return labels
