"""Data sources, decoded once into a cache of uint8 images at the final resolution.

Every source (TFDS CelebA, TFDS CelebA-HQ, any TFDS image data set, an image folder, the
built-in synthetic faces) ends up as one array `[N, R, R, C]` of uint8 on disk, a `.npy` cache
(`cache`: built resumably, one process at a time) read through a memory map. Decoding happens
once, not once per stage or per epoch; the per-stage arrays are box-filtered from it
(`input_pipeline.stage_images`). A process may decode only its `Shard` of the source (1/N of
it: per-host caches on a pod). Image files are decoded by `decode`; a folder where more than
`cache.MAX_SKIPPED_FRACTION` of them fail is an error.

`resolve` turns `config.data` into one `Source` (a class per kind of source): it checks the
fields, names the cache (`Source.key`, computed once), reads the images and their labels.
`cache_management` lists and cleans the caches (`--mode=caches`).
"""

import abc
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
from typing import ClassVar

import ml_collections
import numpy as np
from PIL import Image

from progan_jax.data import cache, decode, synthetic
from progan_jax.runtime import paths
from progan_jax.runtime.errors import ConfigError, DataSetMissingError

CELEBA_CROP_CENTER = (121, 89)  # (row, column) of the official 128x128 crop, dataset_tool.py
CELEBA_CROP = 128
CELEBA_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)
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


# --------------------------------------------------------------------------- reading helpers


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


# ------------------------------------------------------------------------- cache locations


def cache_dir(data: ml_collections.ConfigDict) -> pathlib.Path:
    if data.cache_dir:
        return pathlib.Path(data.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return pathlib.Path(base) / "progan_jax"


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.{field}: {message}")


# --------------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Labels:
    ids: np.ndarray  # [N] int32 class of each cached image, in the cache's order
    names: tuple[str, ...]  # class names, by id

    def counts(self) -> np.ndarray:
        return np.bincount(self.ids, minlength=len(self.names))


@dataclasses.dataclass(frozen=True)
class Source(abc.ABC):
    """`config.data` resolved for one run's images (`shard`'s share at `resolution`), by
    `resolve`, which checks it first.

    A subclass per kind of source says what differs: the fields that name its images, how
    many there are, how to read them and their labels. The cache key is computed once per
    object (for a folder it stats every file), so a run that keeps its `Source` names its
    caches once.
    """

    data: ml_collections.ConfigDict
    resolution: int
    channels: int
    shard: Shard = WHOLE

    name: ClassVar[str]  # `data.source`
    labels: ClassVar[str]  # the kind of `data.labels` it has

    @classmethod  # noqa: B027 (not abstract: most sources fit any resolution)
    def check_resolution(cls, resolution: int) -> None:
        """Raises ConfigError if the source has no images at `resolution`."""

    def validate(self) -> None:
        """Raises ConfigError for the first `data` field this source cannot work with."""
        data = self.data
        self.check_resolution(self.resolution)
        if data.labels is not None:
            if data.labels not in LABEL_SOURCES:
                _fail(
                    "data.labels", f"must be one of {', '.join(LABEL_SOURCES)}, got {data.labels!r}"
                )
            if data.labels != self.labels:
                _fail(
                    "data.labels",
                    f"{data.labels!r} labels {' or '.join(LABEL_SOURCES[data.labels])} data, "
                    f"not data.source={self.name!r}",
                )
        if data.max_images is not None and data.max_images < 1:
            _fail("data.max_images", f"must be positive, got {data.max_images}")
        if data.cache_dir and paths.is_remote(data.cache_dir):
            _fail(
                "data.cache_dir",
                f"must be a local or mounted folder (the cache is memory-mapped), got "
                f"{data.cache_dir!r}; the workdir may be a bucket, the data cache may not",
            )

    # What each kind of source defines.

    @abc.abstractmethod
    def _key_fields(self) -> dict:
        """The cache key's fields that name this source's images (see `key`)."""

    @abc.abstractmethod
    def _total(self) -> int | None:
        """Items in the whole source (files, for a folder); None where only reading tells."""

    @abc.abstractmethod
    def _read(self, start: int) -> Iterator[np.ndarray | str]:
        """The shard's images from its item `start` on (a file that fails: its error)."""

    @abc.abstractmethod
    def _label_ids(self, cached: CachedImages) -> tuple[list[int], list[str]]:
        """The class of each cached image, and the class names."""

    # What every source shares.

    @functools.cached_property
    def key(self) -> str:
        """A directory name that changes whenever the decoded images would."""
        fields = {
            "source": self.name,
            "name": "",
            "split": "",
            "key": "",
            "folder": "",
            "synthetic": [],
            "max_images": self.data.max_images,
            "mock": 0,
            "resolution": self.resolution,
            "channels": self.channels,
            **self._key_fields(),
        }
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        key = f"{self.name}-{self.resolution}px-{self.channels}ch-{digest}"
        shard = self.shard
        return key if shard == WHOLE else f"{key}-shard{shard.index}of{shard.count}"

    def cache_path(self, size: int | None = None) -> pathlib.Path:
        """The cache file of the images at `size` x `size` (default: `resolution`)."""
        return cache_dir(self.data) / self.key / f"images_{size or self.resolution}.npy"

    def count(self) -> int | None:
        """Items the shard's reader yields, capped by `data.max_images`; None for TFDS."""
        total = self._total()
        if total is None:
            return None
        first, last = self.shard.bounds(total)
        limit = self.shard.limit(self.data.max_images)
        return last - first if limit is None else min(last - first, limit)

    def load_images(self) -> CachedImages:
        """The shard's images at `resolution`, decoded once into the cache."""
        shape = (self.resolution, self.resolution, self.channels)
        what = f"decoding {self.name}"
        images, skipped = cache.cached_array(
            self.cache_path(),
            cache.reported(self._read, self.count, what),
            shape,
            chunk=cache.chunk_items(shape),
            limit=self.shard.limit(self.data.max_images),
            what=what,
        )
        if skipped:
            logging.warning(
                "Skipped %d file(s) that could not be decoded, e.g. %s",
                len(skipped),
                "; ".join(skipped[:3]),
            )
        return CachedImages(images=images, skipped=tuple(skipped))

    def load_labels(self) -> Labels:
        """The class of each of the shard's cached images (`data.labels`), cached beside them.

        Labels follow the images' order (files skipped as undecodable, `data.max_images`), so
        the stream draws an image and its label by the same index.
        """
        data = self.data
        spec = data.label_key if data.labels == "feature" else data.labels
        path = self.cache_path().parent / f"labels_{spec}.npz"
        if path.exists():
            with np.load(path) as stored:
                return Labels(stored["ids"], tuple(str(n) for n in stored["names"]))
        cached = self.load_images()
        count = len(cached.images)
        ids, names = self._label_ids(cached)
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
        logging.info(
            "Labels (%s): %d classes; images per class: %s.", data.labels, len(names), balance
        )
        return labels


@dataclasses.dataclass(frozen=True)
class Synthetic(Source):
    """The built-in synthetic faces (`synthetic.draw_face`), labelled by skin tone."""

    name: ClassVar[str] = "synthetic"
    labels: ClassVar[str] = "skin_tone"

    def validate(self) -> None:
        super().validate()
        if self.data.synthetic_size < 1:
            _fail("data.synthetic_size", f"must be positive, got {self.data.synthetic_size}")

    def _key_fields(self) -> dict:
        return {"synthetic": [self.data.synthetic_size, self.data.synthetic_seed]}

    def _total(self) -> int:
        return self.data.synthetic_size

    def _read(self, start: int) -> Iterator[np.ndarray]:
        first, last = self.shard.bounds(self.data.synthetic_size)
        for i in range(first + start, last):
            face = synthetic.draw_face(i, self.resolution, self.data.synthetic_seed)
            yield _to_channels(face, self.channels)

    def _label_ids(self, cached: CachedImages) -> tuple[list[int], list[str]]:
        first, _ = self.shard.bounds(self.data.synthetic_size)
        seed = self.data.synthetic_seed
        ids = [synthetic.skin_tone(first + i, seed) for i in range(len(cached.images))]
        return ids, list(synthetic.SKIN_TONES)


@dataclasses.dataclass(frozen=True)
class ImageFolder(Source):
    """The image files under `data.path` in path order, labelled by their class subfolder."""

    name: ClassVar[str] = "image_folder"
    labels: ClassVar[str] = "subfolders"

    def validate(self) -> None:
        super().validate()
        if not self.data.path:
            _fail("data.path", "set the image folder, e.g. --config.data.path=/data/faces")

    @property
    def root(self) -> pathlib.Path:
        return pathlib.Path(self.data.path).expanduser()

    @functools.cached_property
    def files(self) -> list[pathlib.Path]:
        """The folder's image files, listed once: the key, the count and the reader agree."""
        return _find_images(self.root)

    def _key_fields(self) -> dict:
        # Changes when files are added, removed or modified. ("decoding" is only in a folder's
        # key: a new field in every source's would change every key.)
        digest = hashlib.sha1()
        for p in self.files:
            stat = p.stat()
            digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return {"folder": digest.hexdigest(), "decoding": decode.RULES_VERSION}

    def _total(self) -> int:
        return len(self.files)  # 0: the reader says why

    def _read(self, start: int) -> Iterator[np.ndarray | str]:
        root = self.root
        if not root.is_dir():
            raise DataSetMissingError(f"data.path: {root} is not a directory.")
        if not self.files:
            raise DataSetMissingError(
                f"data.path: no image files ({', '.join(decode.IMAGE_SUFFIXES)}) under {root}."
            )
        if not start:  # once per build, not again when it resumes
            _warn_about_other_files(root)
        first, last = self.shard.bounds(len(self.files))
        read = functools.partial(
            decode.decode_file, resolution=self.resolution, channels=self.channels
        )
        workers = min(MAX_DECODE_WORKERS, os.cpu_count() or 1)
        yield from _parallel_map(read, self.files[first + start : last], workers)

    def _label_ids(self, cached: CachedImages) -> tuple[list[int], list[str]]:
        """The first-level subfolder of each cached image, among the sorted subfolders."""
        root = self.root
        outside = [p for p in self.files if p.parent == root]
        if outside:
            raise DataSetMissingError(
                f"data.labels='subfolders': {len(outside)} image(s) directly under {root} have "
                f"no class folder, e.g. {outside[0].name}; put each class's images into a "
                "subfolder of its own (root/<class>/...), or train without labels."
            )
        classes = sorted({p.relative_to(root).parts[0] for p in self.files})
        skipped = {s.split(": ", 1)[0] for s in cached.skipped}
        first, last = self.shard.bounds(len(self.files))
        used = [p for p in self.files[first:last] if str(p) not in skipped]
        return [
            classes.index(p.relative_to(root).parts[0]) for p in used[: len(cached.images)]
        ], classes


@dataclasses.dataclass(frozen=True)
class Tfds(Source):
    """Any TFDS image data set (`data.tfds_name`), labelled by a class feature."""

    name: ClassVar[str] = "tfds"
    labels: ClassVar[str] = "feature"

    def validate(self) -> None:
        super().validate()
        if not self.tfds_name:
            _fail(
                "data.tfds_name",
                "name the TFDS data set, e.g. --config.data.tfds_name=lsun/bedroom",
            )

    @property
    def tfds_name(self) -> str:
        return self.data.tfds_name

    def _key_fields(self) -> dict:
        data = self.data
        return {
            "name": data.tfds_name,
            "split": data.split,
            "key": data.image_key,
            "mock": data.tfds_mock_examples,
        }

    def _total(self) -> None:
        return None

    def _mocked(self) -> contextlib.AbstractContextManager:
        import tensorflow_datasets as tfds

        mock = self.data.tfds_mock_examples
        return tfds.testing.mock_data(num_examples=mock) if mock else contextlib.nullcontext()

    def _split(self) -> str:
        """The split (in shard mode `tfds.even_splits(split, n)[i]`)."""
        import tensorflow_datasets as tfds

        data, shard = self.data, self.shard
        return (
            tfds.even_splits(data.split, shard.count)[shard.index]
            if shard.count > 1
            else data.split
        )

    def _read(self, start: int) -> Iterator[np.ndarray]:
        """The split from example `start` on.

        The images are decoded after the skip: a resumed build reads the skipped records' bytes
        but does not decode them again.
        """
        import tensorflow as tf
        import tensorflow_datasets as tfds

        data, name = self.data, self.tfds_name
        with self._mocked():
            builder = tfds.builder(name, data_dir=data.data_dir)
            data_dir = builder.data_dir_root
            manual_dir = data.manual_dir or os.path.join(str(data_dir), "downloads", "manual")
            if data.download and not builder.is_prepared():
                config = tfds.download.DownloadConfig(manual_dir=manual_dir)
                try:
                    builder.download_and_prepare(download_config=config)
                except Exception as error:  # network, quota, checksum or missing manual files
                    raise DataSetMissingError(
                        _missing_message(name, data_dir, manual_dir)
                    ) from error
            key = data.image_key
            try:
                dataset = builder.as_dataset(
                    split=self._split(),
                    shuffle_files=False,
                    decoders={key: tfds.decode.SkipDecoding()},
                )
            except (AssertionError, FileNotFoundError, ValueError) as error:
                raise DataSetMissingError(_missing_message(name, data_dir, manual_dir)) from error

            feature = builder.info.features[key]
            dataset = dataset.skip(start).map(
                lambda ex: feature.decode_example(ex[key]), num_parallel_calls=tf.data.AUTOTUNE
            )
            for image in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
                yield self._fit(image)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """A TFDS image at `resolution` x `resolution` x `channels`."""
        res, channels = self.resolution, self.channels
        if image.shape == (res, res, channels):
            return image
        return decode.fit(
            Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image), res, channels
        )

    def _label_ids(self, cached: CachedImages) -> tuple[list[int], list[str]]:
        """The feature `data.label_key` of the first cached examples of the shard's split
        (read without decoding the images) and the feature's class names."""
        import tensorflow_datasets as tfds

        data, name = self.data, self.tfds_name
        with self._mocked():
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
            dataset = builder.as_dataset(
                split=self._split(),
                shuffle_files=False,
                decoders={data.image_key: tfds.decode.SkipDecoding()},
            )
            examples = dataset.take(len(cached.images)).as_numpy_iterator()
            return [int(ex[data.label_key]) for ex in examples], list(feature.names)


@dataclasses.dataclass(frozen=True)
class NamedTfds(Tfds):
    """A TFDS set this library names (`tfds_name`), so `data.tfds_name` and `data.image_key`
    are not part of its key."""

    def _key_fields(self) -> dict:
        return {"split": self.data.split, "mock": self.data.tfds_mock_examples}


@dataclasses.dataclass(frozen=True)
class CelebA(NamedTfds):
    """TFDS CelebA through the official 128x128 crop, box-filtered to `resolution`."""

    name: ClassVar[str] = "celeb_a"

    @classmethod
    def check_resolution(cls, resolution: int) -> None:
        if resolution > CELEBA_CROP:
            _fail(
                "model.resolution",
                f"data.source celeb_a crops are 128x128, the networks are "
                f"{resolution}x{resolution}; use resolution <= 128 or celeb_a_hq",
            )

    @property
    def tfds_name(self) -> str:
        return "celeb_a"

    def _fit(self, image: np.ndarray) -> np.ndarray:
        crop = _to_channels(celeba_crop(image), self.channels)
        return box_downsample(crop[None], CELEBA_CROP // self.resolution)[0]


@dataclasses.dataclass(frozen=True)
class CelebAHQ(NamedTfds):
    """TFDS CelebA-HQ, whose configs hold each resolution up to 1024x1024."""

    name: ClassVar[str] = "celeb_a_hq"

    @classmethod
    def check_resolution(cls, resolution: int) -> None:
        if resolution > 1024:
            _fail(
                "model.resolution",
                f"data.source celeb_a_hq goes up to 1024x1024, got {resolution}x{resolution}",
            )

    @property
    def tfds_name(self) -> str:
        return f"celeb_a_hq/{self.resolution}"


KINDS: dict[str, type[Source]] = {
    kind.name: kind for kind in (Synthetic, CelebA, CelebAHQ, Tfds, ImageFolder)
}
SOURCES = tuple(KINDS)
LABEL_SOURCES = {
    spec: tuple(name for name, kind in KINDS.items() if kind.labels == spec)
    for spec in ("subfolders", "feature", "skin_tone")
}


def resolve(
    data: ml_collections.ConfigDict, resolution: int, channels: int, shard: Shard = WHOLE
) -> Source:
    """`data` as the source of `shard`'s images at `resolution`; ConfigError naming the field
    if it cannot work. Touches no files: reading and naming the caches do."""
    kind = KINDS.get(data.source)
    if kind is None:
        _fail("data.source", f"must be one of {', '.join(SOURCES)}, got {data.source!r}")
    source = kind(data, resolution, channels, shard)
    source.validate()
    return source
