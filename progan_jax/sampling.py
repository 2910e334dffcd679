"""Images from the generator: fixed latents, grids, PNG files."""

import dataclasses
import functools
import io
import os
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath
from PIL import Image

from progan_jax import interrupt, models, paths, reporting
from progan_jax.gan import GAN, Params


def fixed_latents(gan: GAN, seed: int, count: int) -> jax.Array:
    """The same `count` latents for a given seed, so grids are comparable across a run."""
    return gan.sample_latents(jax.random.fold_in(jax.random.key(seed), 0x5A3), count)


@functools.lru_cache(maxsize=16)
def generator_fn(gan: GAN, stage: int):
    """Jitted `(params, z, alpha) -> images` for one stage."""
    return jax.jit(lambda params, z, alpha: gan.generate(params, z, stage, alpha))


def generate_images(
    gan: GAN, params: Params, z: jax.Array, stage: int, alpha: float, batch: int = 64
):
    """Images in [-1, 1] as a float32 NumPy array, computed `batch` latents at a time."""
    fn = generator_fn(gan, stage)
    alpha = jax.device_put(np.float32(alpha))  # one explicit copy, not one per call
    parts = [fn(params, z[i : i + batch], alpha) for i in range(0, len(z), batch)]
    return np.concatenate([np.asarray(p) for p in parts])


def to_uint8(images, xp=np):
    """[-1, 1] -> [0, 255], clipped (the generator's output is linear). `xp` is NumPy, or
    `jax.numpy` inside a traced function (the exported generator)."""
    return xp.clip(xp.rint((xp.asarray(images) + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def image_grid(images: np.ndarray, columns: int, tile: int | None = None) -> np.ndarray:
    """uint8 images [N, h, w, C] -> one uint8 grid, each image upscaled (nearest) to `tile`."""
    n, h, w, c = images.shape
    if tile is not None and tile > h:
        images = images.repeat(tile // h, axis=1).repeat(tile // w, axis=2)
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

    @property
    def resolution(self) -> int:
        return models.stage_resolution(self.stage)

    def batches(self, count: int, batch: int, seed: int) -> Iterator[np.ndarray]:
        """`count` generated uint8 images in minibatches, from latents fixed by `seed`; a
        long run of them (a metric's thousands) reports its progress."""
        what = f"generating {count} images at {self.resolution}x{self.resolution} (batches)"
        return reporting.track(self._batches(count, batch, seed), -(-count // batch), what)

    def _batches(self, count: int, batch: int, seed: int) -> Iterator[np.ndarray]:
        key = jax.random.key(seed)
        for start in range(0, count, batch):
            interrupt.check("evaluation")
            n = min(batch, count - start)
            z = self.gan.sample_latents(jax.random.fold_in(key, start), n)
            images = generate_images(self.gan, self.params, z, self.stage, self.alpha)
            yield to_uint8(images)
