"""Multi-scale sliced Wasserstein distance, as the official `metrics/sliced_wasserstein.py`.

For each level of a Laplacian pyramid (5x5 binomial kernel, mirrored borders, as cv2.pyrDown /
pyrUp) from full resolution down to 16x16: 128 random 7x7 neighbourhoods per image become
descriptors, normalised per colour channel over the whole set; the distance between two sets is
the mean absolute difference of their sorted projections on 4 x 128 random unit directions. It
is reported x1e3 per level and averaged over levels.

The random choices (neighbourhood centres, directions) come from a NumPy generator seeded by
the caller, so two sets described with the same seed are compared on the same directions.
"""

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_SIZE = 16  # the coarsest pyramid level
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0  # outer product: the 5x5 kernel


def level_resolutions(resolution: int) -> list[int]:
    """Pyramid levels from `resolution` down to 16 (none below 16)."""
    levels = []
    while resolution >= MIN_SIZE:
        levels.append(resolution)
        resolution //= 2
    return levels


def _blur(x: jax.Array) -> jax.Array:
    """5x5 binomial filter of NHWC images with mirrored borders (scipy 'mirror', cv2 101)."""
    kernel = jnp.asarray(_BINOMIAL)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        xp = jnp.pad(x, pad, mode="reflect")
        size = x.shape[axis]
        x = sum(kernel[i] * jax.lax.slice_in_dim(xp, i, i + size, axis=axis) for i in range(5))
    return x


def pyr_down(x: jax.Array) -> jax.Array:
    return _blur(x)[:, ::2, ::2]


def pyr_up(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    up = jnp.zeros((n, 2 * h, 2 * w, c), x.dtype).at[:, ::2, ::2].set(x)
    return 4.0 * _blur(up)


def laplacian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
    """Float32 levels, finest first; each but the coarsest is the detail lost by pyr_down."""
    pyramid = [images.astype(jnp.float32)]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


_pyramid = jax.jit(laplacian_pyramid, static_argnums=1)


def sample_centres(rng: np.random.Generator, num_images: int, size: int) -> np.ndarray:
    """[num_images * 128, 2] (row, column) neighbourhood centres, away from the borders."""
    half = NHOOD_SIZE // 2
    count = num_images * NHOODS_PER_IMAGE
    cols = rng.integers(half, size - half, count)
    rows = rng.integers(half, size - half, count)
    return np.stack([rows, cols], axis=1)


@jax.jit
def extract_descriptors(level: jax.Array, centres: jax.Array) -> jax.Array:
    """[N * 128, 7, 7, C] neighbourhoods; descriptor i comes from image i // 128."""
    half = NHOOD_SIZE // 2
    image = jnp.arange(centres.shape[0]) // NHOODS_PER_IMAGE

    def patch(i, centre):
        start = (i, centre[0] - half, centre[1] - half, 0)
        size = (1, NHOOD_SIZE, NHOOD_SIZE, level.shape[-1])
        return jax.lax.dynamic_slice(level, start, size)[0]

    return jax.vmap(patch)(image, centres)


def normalize_descriptors(descriptors: np.ndarray) -> np.ndarray:
    """Per-channel zero mean and unit std over all neighbourhoods and pixels, flattened."""
    d = np.asarray(descriptors, np.float32)
    d = d - d.mean(axis=(0, 1, 2), keepdims=True)
    d = d / d.std(axis=(0, 1, 2), keepdims=True)
    return d.reshape(d.shape[0], -1)


def sample_directions(rng: np.random.Generator, dim: int) -> np.ndarray:
    """[DIR_REPEATS, dim, DIRS_PER_REPEAT] unit directions."""
    dirs = rng.standard_normal((DIR_REPEATS, dim, DIRS_PER_REPEAT))
    dirs /= np.sqrt(np.sum(np.square(dirs), axis=1, keepdims=True))
    return dirs.astype(np.float32)


@jax.jit
def sliced_wasserstein(a: jax.Array, b: jax.Array, directions: jax.Array) -> jax.Array:
    """Mean |sorted projection of a - sorted projection of b| over directions and repeats."""

    def one_repeat(dirs):
        proj_a = jnp.sort(a @ dirs, axis=0)
        proj_b = jnp.sort(b @ dirs, axis=0)
        return jnp.mean(jnp.abs(proj_a - proj_b))

    return jnp.mean(jax.lax.map(one_repeat, directions))


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """Normalised descriptors of one image set, one array per pyramid level."""

    levels: tuple[np.ndarray, ...]
    resolutions: tuple[int, ...]


def describe(images: Iterable[np.ndarray], resolution: int, seed: int) -> Descriptors:
    """Descriptors of uint8 NHWC minibatches (all of one resolution)."""
    resolutions = level_resolutions(resolution)
    if not resolutions:
        raise ValueError(
            f"SWD needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {resolution}x{resolution}"
        )
    rng = np.random.default_rng(seed)
    per_level = [[] for _ in resolutions]
    for batch in images:
        pyramid = _pyramid(jnp.asarray(batch), len(resolutions))
        for lod, level in enumerate(pyramid):
            centres = sample_centres(rng, batch.shape[0], level.shape[1])
            per_level[lod].append(np.asarray(extract_descriptors(level, jnp.asarray(centres))))
    levels = tuple(normalize_descriptors(np.concatenate(d)) for d in per_level)
    return Descriptors(levels=levels, resolutions=tuple(resolutions))


def distance(a: Descriptors, b: Descriptors, seed: int = 0) -> dict[str, float]:
    """{'swd_x1e3_<res>': ..., 'swd_x1e3_avg': ...} between two described sets."""
    if a.resolutions != b.resolutions:
        raise ValueError(f"levels differ: {a.resolutions} vs {b.resolutions}")
    rng = np.random.default_rng(seed)
    result = {}
    for res, da, db in zip(a.resolutions, a.levels, b.levels, strict=True):
        n = min(len(da), len(db))
        directions = jnp.asarray(sample_directions(rng, da.shape[1]))
        swd = sliced_wasserstein(jnp.asarray(da[:n]), jnp.asarray(db[:n]), directions)
        result[f"swd_x1e3_{res}"] = float(swd) * 1e3
    result["swd_x1e3_avg"] = float(np.mean(list(result.values())))
    return result
