"""Data sources, decoded once into a cache of uint8 images at the final resolution.

Every source (TFDS CelebA, TFDS CelebA-HQ, any TFDS image data set, an image folder, the
built-in synthetic faces) ends up as one array `[N, R, R, C]` of uint8 on disk, read through a
memory map. Decoding happens once, not once per stage or per epoch; the per-stage arrays are
box-filtered from it (`input_pipeline.stage_images`).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator

import ml_collections
import numpy as np
from PIL import Image

from progan_jax import synthetic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
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


class DataSetMissingError(RuntimeError):
    """The configured data set is not where it should be; the message says how to place it."""


@dataclasses.dataclass(frozen=True)
class CachedImages:
    images: np.ndarray  # [N, R, R, C] uint8 (a read-only memory map)
    skipped: tuple[str, ...]  # files that could not be decoded


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


def square_resize(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Centre-crops to a square and resizes (antialiased down, bicubic up); RGB or grayscale."""
    image = image.convert("L" if channels == 1 else "RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        method = Image.Resampling.LANCZOS if side > resolution else Image.Resampling.BICUBIC
        image = image.resize((resolution, resolution), method)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    return np.asarray(Image.fromarray(image).convert("L"), np.uint8)[..., None]


# --------------------------------------------------------------------------------- sources


def _synthetic(data: ml_collections.ConfigDict, resolution: int, channels: int):
    for i in range(data.synthetic_size):
        yield _to_channels(synthetic.draw_face(i, resolution, data.synthetic_seed), channels)


def _find_images(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _decode_file(path: pathlib.Path, resolution: int, channels: int) -> np.ndarray | str:
    """The image, or why it could not be used."""
    try:
        with Image.open(path) as image:
            image.load()
            return square_resize(image, resolution, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"{path}: {error}"


def _image_folder(data: ml_collections.ConfigDict, resolution: int, channels: int, skipped):
    if not data.path:
        raise ValueError("data.path: set the image folder, e.g. --config.data.path=/data/faces")
    root = pathlib.Path(data.path).expanduser()
    if not root.is_dir():
        raise DataSetMissingError(f"data.path: {root} is not a directory.")
    paths = _find_images(root)
    if not paths:
        raise DataSetMissingError(
            f"data.path: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}."
        )
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL releases the GIL
        for result in pool.map(lambda p: _decode_file(p, resolution, channels), paths):
            if isinstance(result, str):
                skipped.append(result)
            else:
                yield result


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


def _tfds(data: ml_collections.ConfigDict, resolution: int, channels: int, skipped):
    import tensorflow_datasets as tfds

    if data.tfds_mock_examples:
        with tfds.testing.mock_data(num_examples=data.tfds_mock_examples):
            yield from _read_tfds(data, resolution, channels)
    else:
        yield from _read_tfds(data, resolution, channels)


def _read_tfds(data: ml_collections.ConfigDict, resolution: int, channels: int):
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
    try:
        dataset = builder.as_dataset(split=data.split, shuffle_files=False)
    except (AssertionError, FileNotFoundError, ValueError) as error:
        raise DataSetMissingError(_missing_message(name, data_dir, manual_dir)) from error

    key = data.image_key
    dataset = dataset.map(lambda ex: ex[key], num_parallel_calls=tf.data.AUTOTUNE)
    for image in dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        if data.source == "celeb_a":
            crop = celeba_crop(image)
            yield box_downsample(_to_channels(crop, channels)[None], CELEBA_CROP // resolution)[0]
        elif image.shape == (resolution, resolution, channels):
            yield image
        else:
            yield square_resize(
                Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1 else image),
                resolution,
                channels,
            )


# ----------------------------------------------------------------------------------- cache


def _folder_fingerprint(path: str) -> str:
    """Changes when files under the folder are added, removed or modified."""
    digest = hashlib.sha1()
    for p in _find_images(pathlib.Path(path).expanduser()):
        stat = p.stat()
        digest.update(f"{p}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def cache_key(data: ml_collections.ConfigDict, resolution: int, channels: int) -> str:
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
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return f"{data.source}-{resolution}px-{channels}ch-{digest}"


def cache_dir(data: ml_collections.ConfigDict) -> pathlib.Path:
    if data.cache_dir:
        return pathlib.Path(data.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return pathlib.Path(base) / "progan_jax"


def write_array_cache(path: pathlib.Path, images: Iterable[np.ndarray], meta: dict) -> int:
    """Streams images into `path` (raw uint8) with a JSON sidecar, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    count, shape = 0, None
    with open(tmp, "wb") as f:
        for image in images:
            shape = image.shape
            f.write(np.ascontiguousarray(image, np.uint8).tobytes())
            count += 1
    if not count:
        tmp.unlink()
        return 0
    meta = {**meta, "count": count, "shape": list(shape)}
    json_tmp = tmp.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)
    os.replace(json_tmp, path.with_suffix(".json"))
    return count


def read_array_cache(path: pathlib.Path) -> tuple[np.ndarray, dict] | None:
    meta_path = path.with_suffix(".json")
    if not (path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    shape = (meta["count"], *meta["shape"])
    return np.memmap(path, np.uint8, mode="r", shape=shape), meta


def _limited(images: Iterator[np.ndarray], limit: int | None) -> Iterator[np.ndarray]:
    for i, image in enumerate(images):
        if limit is not None and i >= limit:
            return
        yield image


_READERS: dict[str, Callable] = {
    "synthetic": lambda data, res, ch, skipped: _synthetic(data, res, ch),
    "image_folder": _image_folder,
    "celeb_a": _tfds,
    "celeb_a_hq": _tfds,
    "tfds": _tfds,
}


def load_images(data: ml_collections.ConfigDict, resolution: int, channels: int) -> CachedImages:
    """The source's images at `resolution`, decoded on the first call and cached on disk."""
    if data.source not in _READERS:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    path = cache_dir(data) / cache_key(data, resolution, channels) / f"images_{resolution}.u8"
    cached = read_array_cache(path)
    if cached is None:
        skipped: list[str] = []
        logging.info("Decoding %s into %s (once).", data.source, path.parent)
        images = _READERS[data.source](data, resolution, channels, skipped)
        if not write_array_cache(path, _limited(images, data.max_images), {"skipped": skipped}):
            raise DataSetMissingError(
                f"{data.source}: no usable image ({len(skipped)} file(s) could not be decoded"
                + (f", e.g. {skipped[0]})." if skipped else ").")
            )
        cached = read_array_cache(path)
    images, meta = cached
    if meta["skipped"]:
        logging.warning(
            "Skipped %d file(s) that could not be decoded, e.g. %s",
            len(meta["skipped"]),
            "; ".join(meta["skipped"][:3]),
        )
    return CachedImages(images=images, skipped=tuple(meta["skipped"]))
