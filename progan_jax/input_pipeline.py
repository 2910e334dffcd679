"""Per-stage image streams: box-filtered, shuffled, mirrored, scaled, split per process.

The stream is a pure function of (seed, position): the image shown at global position `p`
(counting every image of every batch since the start of training) is

    index  = permutation(seed, epoch)[p % N]   with epoch = p // N
    mirror = bit of hash(seed, p)

so a resumed run continues the stream exactly from its count of images shown, and a global
batch is the same whatever the number of processes: process `i` of `P` reads only rows
`[i * B/P, (i+1) * B/P)` of every global batch of `B` images.
"""

import collections
import concurrent.futures
import functools
import itertools
import logging
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from progan_jax import models, parallel, sources

_CHUNK = 4096  # images per chunk when box-filtering a whole set


def stage_images(
    data: ml_collections.ConfigDict, resolution: int, channels: int, stage: int
) -> np.ndarray:
    """The data set at stage `stage`'s resolution, uint8 [N, r, r, C] (cached on disk)."""
    base = sources.load_images(data, resolution, channels).images
    res = models.stage_resolution(stage)
    if res == resolution:
        return base
    key = sources.cache_key(data, resolution, channels)
    path = sources.cache_dir(data) / key / f"images_{res}.u8"
    cached = sources.read_array_cache(path)
    if cached is None:
        logging.info("Box-filtering %d images to %dx%d.", len(base), res, res)
        chunks = (
            sources.box_downsample(base[i : i + _CHUNK], resolution // res)
            for i in range(0, len(base), _CHUNK)
        )
        sources.write_array_cache(path, (image for chunk in chunks for image in chunk), {})
        cached = sources.read_array_cache(path)
    return cached[0]


def image_batches(images: np.ndarray, indices: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """`images[indices]` as in-memory minibatches (of the memory-mapped cache, read in order)."""
    for start in range(0, len(indices), batch):
        yield np.asarray(images[np.sort(indices[start : start + batch])])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mirror_flags(seed: int, positions: np.ndarray) -> np.ndarray:
    """Whether the image at each global position is flipped: a hash bit, no state."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * np.uint64(0x2545F4914F6CDD1D) + np.uint64(1))
        return (_splitmix64(positions.astype(np.uint64) ^ key) >> np.uint64(63)).astype(bool)


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def image_indices(seed: int, positions: np.ndarray, size: int) -> np.ndarray:
    """Which image of the set is shown at each global position."""
    epochs, offsets = np.divmod(positions, size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        at = epochs == epoch
        indices[at] = epoch_permutation(seed, int(epoch), size)[offsets[at]]
    return indices


def local_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """This process's rows `[first, last)` of every global batch."""
    if batch_size % process_count:
        raise ValueError(
            f"batch size {batch_size} does not divide by the {process_count} processes"
        )
    share = batch_size // process_count
    return process_index * share, (process_index + 1) * share


def load_batch(images: np.ndarray, positions: np.ndarray, seed: int, mirror: bool) -> np.ndarray:
    """uint8 images at the given global positions, mirrored where the hash says so."""
    indices = image_indices(seed, positions, len(images))
    order = np.argsort(indices)  # sorted reads are kinder to a memory map
    batch = np.empty((len(positions), *images.shape[1:]), np.uint8)
    batch[order] = images[indices[order]]
    if mirror:
        flip = mirror_flags(seed, positions)
        batch[flip] = batch[flip, :, ::-1]
    return batch


def to_float(batch: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return batch.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def batches(
    images: np.ndarray,
    *,
    seed: int,
    start: int,
    batch_size: int,
    mirror: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[np.ndarray]:
    """This process's share of consecutive global batches, from global position `start`.

    float32 [B / P, r, r, C] in [-1, 1]. `prefetch` batches are read ahead on worker threads
    (NumPy releases the GIL while it copies). The stream needs random access by position, which
    the decoded cache gives and a tf.data pipeline over records would not.
    """
    first, last = local_rows(batch_size, process_index, process_count)

    def load(number: int) -> np.ndarray:
        positions = start + number * batch_size + np.arange(first, last)
        return to_float(load_batch(images, positions, seed, mirror))

    with concurrent.futures.ThreadPoolExecutor(max(prefetch, 1)) as pool:
        pending = collections.deque(pool.submit(load, n) for n in range(max(prefetch, 1)))
        for number in itertools.count(len(pending)):
            batch = pending.popleft().result()
            pending.append(pool.submit(load, number))
            yield batch


def stage_batches(
    config: ml_collections.ConfigDict, stage: int, start: int, batch_size: int
) -> Iterator[np.ndarray]:
    """`batches` of the configured data set at `stage`, for this process."""
    data = config.data
    images = stage_images(data, config.model.resolution, config.model.num_channels, stage)
    index, count = jax.process_index(), jax.process_count()
    first, last = local_rows(batch_size, index, count)
    logging.info(
        "Input: %d images; process %d of %d reads rows [%d, %d) of every batch of %d.",
        len(images),
        index,
        count,
        first,
        last,
        batch_size,
    )
    return batches(
        images,
        seed=config.seed,
        start=start,
        batch_size=batch_size,
        mirror=data.mirror_augment,
        process_index=index,
        process_count=count,
        prefetch=data.prefetch,
    )


def prefetch_to_mesh(local_batches: Iterator[np.ndarray], mesh: Mesh, size: int = 2):
    """Global batch arrays split along `data`, with `size` transfers in flight."""
    queue = []
    for local in local_batches:
        queue.append(parallel.global_batch(local, mesh))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue
