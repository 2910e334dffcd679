"""Multi-scale SSIM between consecutive pairs of generated images (diversity; lower = more varied).

The official `metrics/ms_ssim.py` (the TF-models port): 11x11 Gaussian window with sigma 1.5,
k1 0.01, k2 0.03, max value 255, five scales with weights (0.0448, 0.2856, 0.3001, 0.2363,
0.1333), 2x2 box downsampling between scales, negative values clipped to zero.

It runs in JAX on one minibatch of pairs at a time, each device comparing its own pairs, and
only a running sum crosses batches, so memory does not depend on the number of images. The
Gaussian window is separable, so the 'valid' filtering is two 1-D passes.
"""

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from progan_jax.runtime import parallel

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE, FILTER_SIGMA = 11, 1.5
K1, K2, MAX_VALUE = 0.01, 0.03, 255.0

MIN_SIZE = 2 ** (len(WEIGHTS) - 1)  # the coarsest scale keeps one pixel


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """The official 2-D window (normalised `exp(-(x^2 + y^2) / 2 sigma^2)` on a centred grid) is
    the outer product of this 1-D window with itself."""
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    x = np.arange(offset + start, stop)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: jax.Array, window: np.ndarray, axis: int) -> jax.Array:
    """'valid' correlation with a symmetric 1-D window along `axis` (= the official convolution)."""
    out = x.shape[axis] - len(window) + 1
    taps = [float(w) * jax.lax.slice_in_dim(x, i, i + out, axis=axis) for i, w in enumerate(window)]
    return sum(taps[1:], taps[0])


def _ssim_and_contrast(
    a: jax.Array, b: jax.Array, shift_a: jax.Array, shift_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """SSIM and contrast-structure terms of two CHW images given as `image - shift`.

    Variances and covariance do not depend on the shift; taking moments of images centred on
    their mean keeps `E[x^2] - E[x]^2` accurate in float32. The luminance term uses the true
    means (shift added back).
    """
    _, height, width = a.shape
    size = min(FILTER_SIZE, height, width)
    window = _gaussian_window(size, size * FILTER_SIGMA / FILTER_SIZE)
    moments = jnp.stack([a, b, a * a, b * b, a * b])  # filtered together: one pass each way
    mu_a, mu_b, aa, bb, ab = _filter_valid(_filter_valid(moments, window, 2), window, 3)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    mu_a, mu_b = mu_a + shift_a, mu_b + shift_b
    c1, c2 = (K1 * MAX_VALUE) ** 2, (K2 * MAX_VALUE) ** 2
    v1, v2 = 2.0 * cov + c2, var_a + var_b + c2
    ssim = ((2.0 * mu_a * mu_b + c1) * v1) / ((mu_a**2 + mu_b**2 + c1) * v2)
    return jnp.mean(ssim), jnp.mean(v1 / v2)


def _box_downsample(x: jax.Array) -> jax.Array:
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25


def _one_pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """MS-SSIM of two HWC images in [0, 255], filtered as CHW: rows are the long contiguous
    axis, which XLA vectorises (1.7x faster on CPU than 3 channels innermost)."""
    a, b = (jnp.transpose(x.astype(jnp.float32), (2, 0, 1)) for x in (a, b))
    shift_a, shift_b = jnp.mean(a), jnp.mean(b)
    a, b = a - shift_a, b - shift_b  # box downsampling keeps the shift
    ssims, contrasts = [], []
    for scale in range(len(WEIGHTS)):
        if scale:
            a, b = _box_downsample(a), _box_downsample(b)
        ssim, contrast = _ssim_and_contrast(a, b, shift_a, shift_b)
        ssims.append(ssim)
        contrasts.append(contrast)
    weights = jnp.asarray(WEIGHTS, jnp.float32)
    ssims = jnp.maximum(jnp.stack(ssims), 0.0)
    contrasts = jnp.maximum(jnp.stack(contrasts), 0.0)
    return jnp.prod(contrasts[:-1] ** weights[:-1]) * ssims[-1] ** weights[-1]


@jax.jit
def per_pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """MS-SSIM of each pair (a[i], b[i]) of NHWC images in [0, 255]: float32 [N].

    One pair at a time (a loop on the device): a pair's intermediates stay in cache, which
    halves the time on CPU against filtering the whole minibatch at once.
    """
    return jax.lax.map(lambda pair: _one_pair(*pair), (a, b))


def _check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIZE:
        raise ValueError(
            f"MS-SSIM's {len(WEIGHTS)} scales need images of at least {MIN_SIZE}x{MIN_SIZE}, "
            f"got {height}x{width}"
        )


@functools.lru_cache(maxsize=4)
def _consecutive_pairs(mesh: Mesh):
    """`((), images) -> values` over `mesh`: MS-SSIM of images 0-1, 2-3, ..., each device
    comparing the pairs of its own (even number of) images."""
    return parallel.rowwise(lambda _, images: per_pair(images[0::2], images[1::2]), mesh)


def _pair_values(rows: parallel.Rows) -> np.ndarray:
    """float32 MS-SSIM of the whole pairs among `rows`, on the host."""
    _check_size(*rows.array.shape[1:3])
    values = _consecutive_pairs(rows.mesh)((), rows.array)
    return parallel.Rows(values, rows.count // 2).host()


def _paired(batch: np.ndarray | parallel.Rows, left: np.ndarray | None) -> parallel.Rows:
    """`batch` after `left` (the previous batch's unpaired image), each device holding whole
    pairs: generated rows stay on their devices when they can (no image left over, and an even
    number per device); anything else is placed anew over this process's devices."""
    if isinstance(batch, parallel.Rows) and left is None and batch.per_device % 2 == 0:
        return batch
    images = batch.host() if isinstance(batch, parallel.Rows) else np.asarray(batch)
    if left is not None:
        images = np.concatenate([left, images])
    mesh = parallel.local_mesh()
    return parallel.shard_rows(images, mesh, parallel.round_up(len(images), 2 * mesh.size))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean MS-SSIM of image pairs (a[i], b[i]), uint8 or float in [0, 255], NHWC."""
    pairs = np.stack([a, b], axis=1).reshape(-1, *np.shape(a)[1:])
    return float(np.mean(_pair_values(_paired(pairs, None)), dtype=np.float64))


def consecutive_pairs_ms_ssim(batches: Iterable[np.ndarray | parallel.Rows]) -> float:
    """MS-SSIM between images 0-1, 2-3, ... of a generated set, as the paper reports it.

    The set comes as NHWC minibatches (host arrays or generated `Rows`) of any sizes (a pair may
    straddle two); the per-pair values are summed in float64 as they come.
    """
    total, pairs = 0.0, 0
    left = None  # the odd image at the end of the previous batch
    for batch in batches:
        rows = _paired(batch, left)
        values = _pair_values(rows)
        total += float(np.sum(values, dtype=np.float64))
        pairs += len(values)
        left = rows.host(rows.count - 1) if rows.count % 2 else None
    if not pairs:
        raise ValueError("MS-SSIM needs at least two images")
    return total / pairs
