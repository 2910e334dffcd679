"""Multi-scale sliced Wasserstein distance, as the official `metrics/sliced_wasserstein.py`.

For each level of a Laplacian pyramid (5x5 binomial kernel, mirrored borders, as cv2.pyrDown /
pyrUp) from full resolution down to 16x16: 128 random 7x7 neighbourhoods per image become
descriptors, normalised per colour channel over the whole set; the distance between two sets is
the mean absolute difference of their sorted projections on 4 x 128 random unit directions. It
is reported x1e3 per level and averaged over levels.

The random choices (neighbourhood centres, directions) come from a NumPy generator seeded by
the caller, so two sets described with the same seed are compared on the same directions.

Bounded memory: normalising and sorting need all of a level's descriptors at once, so one level
of the sets being compared has to be in memory (N x 128 x 147 float32: 308 MB per set for 4,096
RGB images), but no more. `describe` streams a set once, computing each image's pyramid once,
and appends each level's raw float32 descriptors to its own temporary file (75 KB per image and
level on disk); `distances` then loads, normalises and compares one level at a time, on the
device. Describing is split over the devices: each describes its own images of a minibatch.
"""

import contextlib
import dataclasses
import functools
import pathlib
import tempfile
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from progan_jax.runtime import parallel

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_SIZE = 16  # the coarsest pyramid level
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0  # outer product: the 5x5 kernel
_DIRS_PER_SORT = 32  # directions projected and sorted together: bounds the sort's temporaries
_LOAD_ROWS = 1 << 16  # descriptors read from a level's file per copy to the device


def level_resolutions(resolution: int) -> list[int]:
    """Pyramid levels from `resolution` down to 16 (none below 16)."""
    levels = []
    while resolution >= MIN_SIZE:
        levels.append(resolution)
        resolution //= 2
    return levels


# The pyramid functions take images with their rows and columns on axes 1 and 2: NHWC
# minibatches, or single CHW images (faster on CPU: XLA vectorises along the long last axis).


def _blur(x: jax.Array) -> jax.Array:
    """5x5 binomial filter with mirrored borders (scipy 'mirror', cv2 101)."""
    kernel = jnp.asarray(_BINOMIAL)
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (2, 2)
        xp = jnp.pad(x, pad, mode="reflect")
        size = x.shape[axis]
        x = sum(kernel[i] * jax.lax.slice_in_dim(xp, i, i + size, axis=axis) for i in range(5))
    return x


def pyr_down(x: jax.Array) -> jax.Array:
    return _blur(x)[:, ::2, ::2]


def pyr_up(x: jax.Array) -> jax.Array:
    shape = (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], *x.shape[3:])
    up = jnp.zeros(shape, x.dtype).at[:, ::2, ::2].set(x)
    return 4.0 * _blur(up)


def laplacian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
    """Float32 levels, finest first; each but the coarsest is the detail lost by pyr_down."""
    pyramid = [images.astype(jnp.float32)]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
    return pyramid


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


@functools.partial(jax.jit, static_argnums=2)
def _describe_batch(
    images: jax.Array, centres: tuple[jax.Array, ...], num_levels: int
) -> tuple[jax.Array, ...]:
    """Each level's descriptors of a minibatch, from `centres` [N * 128, 2] per level.

    One CHW image at a time (a loop on the device): an image's pyramid stays in cache, which is
    four to five times faster on CPU than the NHWC minibatch's pyramid.
    """
    n = images.shape[0]
    per_image = tuple(c.reshape(n, NHOODS_PER_IMAGE, 2) for c in centres)

    def one_image(args):
        image, image_centres = args
        pyramid = laplacian_pyramid(jnp.transpose(image, (2, 0, 1)), num_levels)
        hwc = (jnp.transpose(level, (1, 2, 0))[None] for level in pyramid)
        return tuple(map(extract_descriptors, hwc, image_centres))

    levels = jax.lax.map(one_image, (images, per_image))
    return tuple(d.reshape(n * NHOODS_PER_IMAGE, *d.shape[2:]) for d in levels)


@functools.lru_cache(maxsize=8)
def _describer(mesh: Mesh, num_levels: int):
    """`_describe_batch` over `mesh`: `((), (images, centres)) -> levels`, each device
    describing its own images (their centres come split the same way, 128 per image)."""
    return parallel.rowwise(lambda _, rows: _describe_batch(*rows, num_levels), mesh)


def _block_centres(
    rng: np.random.Generator, count: int, block: int, resolutions: list[int]
) -> list[np.ndarray]:
    """Each level's centres for `count` images, drawn block by block as if each block of
    `block` images were a minibatch of its own."""
    blocks = [
        [sample_centres(rng, min(block, count - start), r) for r in resolutions]
        for start in range(0, count, block)
    ]
    return [np.concatenate(level) for level in zip(*blocks, strict=True)]


@functools.partial(jax.jit, donate_argnums=0)
def normalize_descriptors(descriptors: jax.Array) -> jax.Array:
    """[M, 7, 7, C] with zero mean and unit std per channel over all neighbourhoods and
    pixels, in place of the input (XLA's float32 reductions stay accurate over millions of
    values, where NumPy's float32 mean over the leading axes of such a set drifts by percents)."""
    axes = (0, 1, 2)
    d = descriptors - jnp.mean(descriptors, axis=axes)
    return d / jnp.sqrt(jnp.mean(jnp.square(d), axis=axes))


def sample_directions(rng: np.random.Generator, dim: int) -> np.ndarray:
    """[DIR_REPEATS, dim, DIRS_PER_REPEAT] unit directions."""
    dirs = rng.standard_normal((DIR_REPEATS, dim, DIRS_PER_REPEAT))
    dirs /= np.sqrt(np.sum(np.square(dirs), axis=1, keepdims=True))
    return dirs.astype(np.float32)


def _sort(x: jax.Array) -> jax.Array:
    """float32 `x` sorted along its last axis, through order-preserving int32 keys: XLA sorts
    integers several times faster than floats on CPU, and the sorted values are the same."""
    flip = lambda i: i ^ ((i >> 31) & 0x7FFFFFFF)  # an involution on the negative floats
    keys = flip(jax.lax.bitcast_convert_type(x, jnp.int32))
    return jax.lax.bitcast_convert_type(flip(jnp.sort(keys, axis=-1)), jnp.float32)


@jax.jit
def sliced_wasserstein(
    reference: jax.Array, others: tuple[jax.Array, ...], directions: jax.Array
) -> jax.Array:
    """Mean |sorted projection of reference - sorted projection of other| over directions and
    repeats, for each of `others` ([len(others)]); descriptors [n, ...] are flattened.

    Each pair is compared on its first min(len) descriptors, as the official code; the
    reference's sorted projections are shared by the others of one length (the usual case).
    Directions are taken in groups of `_DIRS_PER_SORT`: a repeat's mean is the mean of its
    groups' means, and the projections being sorted stay small.
    """
    dim = directions.shape[1]
    groups = directions.transpose(0, 2, 1).reshape(-1, _DIRS_PER_SORT, dim)
    reference = reference.reshape(len(reference), dim)
    others = tuple(other.reshape(len(other), dim) for other in others)

    def one_group(dirs):
        # [dirs, n] at full float32: GPUs and TPUs would otherwise multiply in TF32 or bfloat16.
        projected = lambda d: _sort(jnp.matmul(dirs, d.T, precision=jax.lax.Precision.HIGHEST))
        reference_sorted, result = {}, []
        for other in others:
            n = min(len(reference), len(other))
            if n not in reference_sorted:
                reference_sorted[n] = projected(reference[:n])
            result.append(jnp.mean(jnp.abs(reference_sorted[n] - projected(other[:n]))))
        return jnp.stack(result)

    return jnp.mean(jax.lax.map(one_group, groups), axis=0)


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(buffer: jax.Array, rows: jax.Array, start: int) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(buffer, rows, start, axis=0)


@dataclasses.dataclass(frozen=True)
class Descriptors:
    """Raw descriptors of one image set, one float32 file per pyramid level (finest first).

    The files live in a temporary directory until `close()` (or the end of a `with` block).
    """

    resolutions: tuple[int, ...]
    count: int  # descriptors per level
    channels: int
    directory: tempfile.TemporaryDirectory

    def level(self, lod: int) -> jax.Array:
        """Normalised descriptors [count, 7, 7, C] of level `lod`, read to the device in
        chunks, so the host never holds a level."""
        shape = (NHOOD_SIZE, NHOOD_SIZE, self.channels)
        row_bytes = 4 * int(np.prod(shape))
        buffer = jnp.zeros((self.count, *shape), jnp.float32)
        with open(_level_path(self.directory, self.resolutions[lod]), "rb") as f:
            for start in range(0, self.count, _LOAD_ROWS):
                n = min(_LOAD_ROWS, self.count - start)
                rows = np.frombuffer(f.read(n * row_bytes), np.float32).reshape(n, *shape)
                buffer = _write_rows(buffer, jnp.asarray(rows), start)
        return normalize_descriptors(buffer)

    def close(self) -> None:
        self.directory.cleanup()

    def __enter__(self) -> "Descriptors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _level_path(directory: tempfile.TemporaryDirectory, resolution: int) -> pathlib.Path:
    return pathlib.Path(directory.name) / f"level_{resolution}.f32"


def _checked_levels(resolution: int) -> list[int]:
    resolutions = level_resolutions(resolution)
    if not resolutions:
        raise ValueError(
            f"SWD needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {resolution}x{resolution}"
        )
    return resolutions


def describe(
    images: Iterable[np.ndarray | parallel.Rows],
    resolution: int,
    seed: int,
    directory: str | None = None,
    block: int | None = None,
) -> Descriptors:
    """Descriptors of uint8 NHWC minibatches (all of one resolution), streamed once: each
    minibatch's pyramid goes to the level files and is dropped. Temporary files go under
    `directory` (None: the system's temporary directory).

    Minibatches are host arrays or generated `Rows`. Neighbourhood centres are drawn per
    `block` images (None: per minibatch): a stream batched in whole blocks of latents then gets
    the centres it would get one block at a time, whatever the number of devices.
    """
    resolutions = _checked_levels(resolution)
    rng = np.random.default_rng(seed)
    tmp = tempfile.TemporaryDirectory(prefix="swd-", dir=directory)
    count, channels = 0, 0
    try:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(_level_path(tmp, r), "wb")) for r in resolutions]
            for batch in images:
                rows = parallel.as_rows(batch)
                nhoods = len(rows.array) * NHOODS_PER_IMAGE
                centres = tuple(
                    parallel.shard_rows(c, rows.mesh, nhoods).array
                    for c in _block_centres(rng, rows.count, block or rows.count, resolutions)
                )
                levels = _describer(rows.mesh, len(resolutions))((), (rows.array, centres))
                for f, descriptors in zip(files, levels, strict=True):
                    f.write(parallel.Rows(descriptors, rows.count * NHOODS_PER_IMAGE).host().data)
                count += rows.count * NHOODS_PER_IMAGE
                channels = rows.array.shape[-1]
        if not count:
            raise ValueError("SWD needs at least one image")
    except BaseException:
        tmp.cleanup()
        raise
    return Descriptors(tuple(resolutions), count, channels, tmp)


def distances(
    reference: Descriptors, others: Sequence[Descriptors], seed: int = 0
) -> list[dict[str, float]]:
    """[{'swd_x1e3_<res>': ..., 'swd_x1e3_avg': ...}] from `reference` to each of `others`,
    one pyramid level in memory at a time."""
    for other in others:
        if other.resolutions != reference.resolutions:
            raise ValueError(f"levels differ: {reference.resolutions} vs {other.resolutions}")
    rng = np.random.default_rng(seed)
    results: list[dict[str, float]] = [{} for _ in others]
    for lod, res in enumerate(reference.resolutions):
        directions = sample_directions(rng, NHOOD_SIZE**2 * reference.channels)
        for result, swd in zip(
            results, _level_distances(reference, others, lod, directions), strict=True
        ):
            result[f"swd_x1e3_{res}"] = float(swd) * 1e3
    for result in results:
        result["swd_x1e3_avg"] = float(np.mean(list(result.values())))
    return results


def _level_distances(
    reference: Descriptors, others: Sequence[Descriptors], lod: int, directions: np.ndarray
) -> np.ndarray:
    """One level's distances; its descriptors are freed on return."""
    levels = tuple(other.level(lod) for other in others)
    return np.asarray(sliced_wasserstein(reference.level(lod), levels, jnp.asarray(directions)))
