"""Images from the generator: fixed latents, grids, PNG files.

The generator runs over every device of every process: each device generates the images of
its own slice of the latents (`sharded_images`), a few at a time at large resolutions
(`generation_group`), so N images on D devices take about the time of N / D on one.
"""

import dataclasses
import functools
import io
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh
from PIL import Image

from progan_jax.data import sources
from progan_jax.nets.gan import GAN, Params
from progan_jax.runtime import interrupt, parallel, paths, progress_bar, seeds, stages

# A device generates at most this many images at once, and no more pixels than four 1024x1024
# images: the generator's activations grow with the pixels.
MAX_GENERATION_GROUP = 64
GENERATION_PIXELS = 4 * 1024 * 1024
# Sample grids in TensorBoard show images at most this large (pixels a side), box filtered:
# 64 samples at 1024x1024 would make an 8192x8192 grid at every write. The PNG is full size.
PREVIEW_TILE = 256


def fixed_latents(gan: GAN, seed: int, count: int) -> jax.Array:
    """The same `count` latents for a given seed, so grids are comparable across a run."""
    return gan.sample_latents(jax.random.fold_in(jax.random.key(seed), seeds.SAMPLE_GRID), count)


def generation_group(resolution: int) -> int:
    """Images a device generates at once at `resolution`: 64 up to 256x256, then 16 at 512 and
    4 at 1024."""
    return max(1, min(MAX_GENERATION_GROUP, GENERATION_PIXELS // resolution**2))


def _device_layout(count: int, devices: int, group: int) -> tuple[int, int]:
    """(rows per device, group) for `count` images: an even number of rows per device, so that
    consecutive pairs (which MS-SSIM compares) never straddle two devices, generated at most
    `group` at a time."""
    rows = parallel.round_up(-(-count // devices), 2)
    group = min(group, rows)
    return parallel.round_up(rows, group), group


@functools.lru_cache(maxsize=16)
def generator_fn(gan: GAN, stage: int, mesh: Mesh, group: int, dtype: np.dtype):
    """Jitted `((params, alpha), (z, labels)) -> images` over `mesh`: each device generates the
    images of its own slice of `z` (and of the class ids `labels`, conditional; else None),
    `group` at a time (a loop on the device), as uint8 (`to_uint8`, on the device: a quarter
    of the bytes to gather) or float32 in [-1, 1]."""

    def per_device(shared, rows):
        (params, alpha), (z, labels) = shared, rows
        groups = jax.tree.map(lambda x: x.reshape(-1, group, *x.shape[1:]), (z, labels))
        images = jax.lax.map(lambda g: gan.generate(params, g[0], stage, alpha, g[1]), groups)
        images = images.reshape(-1, *images.shape[2:])
        return to_uint8(images, jnp) if dtype == np.uint8 else images

    return parallel.rowwise(per_device, mesh)


def sharded_images(
    gan: GAN,
    params: Params,
    z,
    stage: int,
    alpha: float,
    dtype: type = np.uint8,
    labels=None,
) -> parallel.Rows:
    """The images of latents `z` (and class ids `labels`, conditional), the same on every
    process, in order, split over all devices: each device generates only those of its own
    slice (padding makes the slices equal)."""
    mesh = parallel.make_mesh()
    resolution = stages.stage_resolution(stage)
    rows, group = _device_layout(len(z), mesh.size, generation_group(resolution))
    latents = parallel.shard_rows(np.asarray(z, np.float32), mesh, rows * mesh.size)
    classes = None
    if labels is not None:
        classes = parallel.shard_rows(np.asarray(labels, np.int32), mesh, rows * mesh.size).array
    shared = jax.device_put((params, np.float32(alpha)), parallel.replicated(mesh))
    fn = generator_fn(gan, stage, mesh, group, np.dtype(dtype))
    return parallel.Rows(fn(shared, (latents.array, classes)), latents.count)


def host_images(
    gan: GAN,
    params: Params,
    z,
    stage: int,
    alpha: float,
    dtype: type = np.float32,
    labels=None,
) -> np.ndarray:
    """`sharded_images`'s images as a NumPy array on every process: float32 in [-1, 1], or uint8.
    Minibatches of `generation_group` images per device bound the devices' memory."""
    minibatch = generation_group(stages.stage_resolution(stage)) * jax.device_count()
    parts = [
        sharded_images(
            gan,
            params,
            z[i : i + minibatch],
            stage,
            alpha,
            dtype,
            None if labels is None else labels[i : i + minibatch],
        ).host()
        for i in range(0, len(z), minibatch)
    ]
    return np.concatenate(parts)


def grid_labels(gan: GAN, count: int, columns: int) -> np.ndarray | None:
    """Class ids of a sample grid of `count` images: one class per row, in order (the official
    `-grpc`), repeating when there are more rows than classes; None when unconditional."""
    if not gan.label_size:
        return None
    return (np.arange(count) // columns % gan.label_size).astype(np.int32)


def to_uint8(images, xp=np):
    """[-1, 1] -> [0, 255], clipped (the generator's output is linear). `xp` is NumPy, or
    `jax.numpy` inside a traced function (the exported generator)."""
    return xp.clip(xp.rint((xp.asarray(images) + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def image_grid(images: np.ndarray, columns: int, tile: int | None = None) -> np.ndarray:
    """uint8 images [N, h, w, C] -> one uint8 grid, each image resized to `tile` pixels a side
    (a power of two): enlarged (nearest) or box filtered."""
    n, h, w, c = images.shape
    if tile is not None and tile > h:
        images = images.repeat(tile // h, axis=1).repeat(tile // w, axis=2)
    elif tile is not None and tile < h:
        images = sources.box_downsample(images, h // tile)
    h, w = images.shape[1:3]
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, h, w, c), images.dtype)
    padded[:n] = images
    grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * h, columns * w, c)


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def write_image_file(path: str | os.PathLike, save) -> epath.Path:
    """Encodes with `save(file_object)` and writes the bytes to `path` (local or a bucket)."""
    path = paths.resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    save(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def save_png(path: str | os.PathLike, image: np.ndarray) -> epath.Path:
    return write_image_file(path, lambda f: to_pil(image).save(f, format="PNG"))


@dataclasses.dataclass(frozen=True)
class GeneratorSnapshot:
    """G_ema at a point of training (a checkpoint, or the live state): what metrics and image
    writers need of it."""

    gan: GAN
    params: Params
    stage: int
    alpha: float
    images_shown: int
    # A conditional G's classes, each one's share of the data: metrics ask for classes drawn
    # from them (None: unconditional).
    label_frequencies: np.ndarray | None = None

    @property
    def resolution(self) -> int:
        return stages.stage_resolution(self.stage)

    def of_class(self, label: int) -> "GeneratorSnapshot":
        """The same conditional G, asked for class `label` alone."""
        only = np.eye(self.gan.label_size, dtype=np.float32)[label]
        return dataclasses.replace(self, label_frequencies=only)

    def minibatch(self, block: int) -> int:
        """Images per minibatch of a stream whose latents come in blocks of `block`: whole
        blocks, about `generation_group` images per device (at least one block)."""
        per_step = generation_group(self.resolution) * jax.device_count()
        return block * max(1, per_step // block)

    def fake_minibatches(self, count: int, batch: int, seed: int) -> Iterator[parallel.Rows]:
        """`count` generated uint8 images in minibatches split over the devices (`sharded_images`),
        from latents fixed by `seed` in blocks of `batch`: a block's latents depend on the seed
        and its first image only, so the images do not depend on the number of devices. A long
        run of them (a metric's thousands) reports its progress."""
        minibatch = self.minibatch(batch)
        what = f"generating {count} images at {self.resolution}x{self.resolution} (minibatches)"
        batches = self._fake_minibatches(count, batch, minibatch, seed)
        return progress_bar.track(batches, -(-count // minibatch), what)

    def _fake_minibatches(
        self, count: int, block: int, minibatch: int, seed: int
    ) -> Iterator[parallel.Rows]:
        key = jax.random.key(seed)
        for start in range(0, count, minibatch):
            interrupt.check("evaluation")
            stop = min(start + minibatch, count)
            blocks = [(jax.random.fold_in(key, first), min(block, stop - first))
                      for first in range(start, stop, block)]  # fmt: skip
            z = np.concatenate([self.gan.sample_latents(k, n) for k, n in blocks])
            labels = None
            if self.label_frequencies is not None:
                with np.errstate(divide="ignore"):  # a class of share 0 is never drawn
                    log_frequencies = np.log(self.label_frequencies)
                labels = np.concatenate([
                    jax.random.categorical(jax.random.fold_in(k, 1), log_frequencies, shape=(n,))
                    for k, n in blocks
                ])  # fmt: skip
            yield sharded_images(self.gan, self.params, z, self.stage, self.alpha, labels=labels)
