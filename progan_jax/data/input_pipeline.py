"""Per-stage image streams: box-filtered, shuffled, split per process, flagged for mirroring.

The stream is a pure function of (seed, position): the image shown at global position `p`
(counting every image of every batch since the start of training) is

    index  = permutation(seed, epoch)[p % N]   with epoch = p // N
    mirror = bit of hash(seed, p)

so a resumed run continues the stream exactly from its count of images shown, and a global
batch is the same whatever the number of processes: process `i` of `P` reads only rows
`[i * B/P, (i+1) * B/P)` of every global batch of `B` images.

In shard mode (`data.shard_per_process`, by default when there are several processes) process
`i` holds only its shard of `N_i` images and fills its rows from it: its `q`-th image shown
(`q` counts the rows it has filled, `p // P` for the first row of a batch) is
`permutation([seed, i], q // N_i)[q % N_i]`, mirrored by the same hash of `p`: still a pure
function of (seed, images shown, process index), so a resumed run continues exactly.

A batch leaves the host as uint8 images with their mirror flags: the step converts them to
float32 [-1, 1] and flips them on the devices (`train_step.decode_reals`), so a
quarter of float32's bytes cross to the devices, and the host does no arithmetic per pixel.
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

from progan_jax.data import cache, sources
from progan_jax.runtime import collectives, interrupt, parallel, stages
from progan_jax.runtime.errors import ConfigError, UserError

# Bytes of base images box-filtered at a time: small groups keep the float32 sums in the CPU's
# caches (and out of freshly mapped memory), ~3x faster than a commit's chunk (~256 MB) at once.
BOX_FILTER_BYTES = 4 << 20


def process_shard(data: ml_collections.ConfigDict) -> sources.Shard:
    """This process's share of the data set: all of it, or 1/N of it in shard mode."""
    count = jax.process_count()
    sharded = count > 1 if data.shard_per_process is None else data.shard_per_process
    return sources.Shard(jax.process_index(), count) if sharded else sources.WHOLE


def source_of(data: ml_collections.ConfigDict, resolution: int, channels: int) -> sources.Source:
    """This process's share of `data` at the networks' `resolution`, checked. A run resolves it
    once and passes it on, so its caches are named once (a folder's name stats every file)."""
    return sources.resolve(data, resolution, channels, process_shard(data))


def stage_images(source: sources.Source, stage: int) -> np.ndarray:
    """This process's images at stage `stage`'s resolution, uint8 [N, r, r, C] (cached on disk).

    In shard mode these are this process's shard only, so evaluation (SWD, FID reals) in a
    sharded multi-process run measures against the local shard. With `data.shared_cache` and
    the whole set on every process, process 0 builds the cache while the others wait at a
    barrier, then all read it.
    """
    prepare = functools.partial(_cached_stage, source, stage)
    together = functools.partial(collectives.together, "data preparation", DataPreparationError)
    if source.data.shared_cache and source.shard == sources.WHOLE and jax.process_count() > 1:
        together(prepare if jax.process_index() == 0 else lambda: None)  # 0 builds, all wait
    return together(prepare)  # builds this process's cache, or reads what process 0 built


def prepare_all_stages(source: sources.Source, first_stage: int = 0) -> None:
    """Caches this process's images of every stage from `first_stage` to the last, now.

    Box-filtering a large set takes minutes per stage: done when a stage starts, it leaves the
    devices idle mid-run (and a full disk would show only then). Called before training, it
    does all of that work up front, so each stage starts by opening its cache. Stages already
    cached are only opened, so a resumed run or a second call builds nothing. Every process
    calls it with the same stages (see `stage_images`: one collective per stage).
    """
    for stage in range(first_stage, stages.num_stages(source.resolution)):
        stage_images(source, stage)


def labels_of(source: sources.Source, label_size: int) -> sources.Labels | None:
    """This process's labels of its images (`data.labels`), or None for an unconditional run.

    The classes must be the networks' (`model.label_size`): a count that differs is a config
    error naming both.
    """
    spec = source.data.labels
    if spec is None:
        return None
    labels = collectives.together("reading labels", DataPreparationError, source.load_labels)
    if len(labels.names) != label_size:
        raise ConfigError(
            f"config.model.label_size: {label_size}, but data.labels={spec!r} "
            f"gives {len(labels.names)} classes ({', '.join(labels.names)})"
        )
    return labels


def class_frequencies(labels: sources.Labels, data: ml_collections.ConfigDict) -> np.ndarray:
    """Each class's share of the whole data set (all processes' shards), float32: what G's
    step draws its labels from, as the official `get_random_labels`."""
    counts = labels.counts().astype(np.int64)
    if process_shard(data) != sources.WHOLE:
        counts = collectives.summed(counts)
    return (counts / counts.sum()).astype(np.float32)


def _cached_stage(source: sources.Source, stage: int) -> np.ndarray:
    """The shard's images box-filtered to the stage's resolution, built once (resumably)."""
    base = source.load_images().images
    resolution, res = source.resolution, stages.stage_resolution(stage)
    if res == resolution:
        return base
    chunk = cache.chunk_items(base.shape[1:])
    group = min(chunk, max(1, BOX_FILTER_BYTES // base[0].nbytes))

    def read(start: int) -> Iterator[np.ndarray]:
        for i in range(start, len(base), group):
            yield from sources.box_downsample(base[i : i + group], resolution // res)

    what = f"box-filtering {len(base)} images to {res}x{res}"
    images, _ = cache.cached_array(
        source.cache_path(res),
        cache.reported(read, lambda: len(base), what),
        (res, res, source.channels),
        chunk=chunk,
        what=what,
    )
    return images


class DataPreparationError(UserError, RuntimeError):
    """The processes of a run see different data sets, or another process failed to prepare."""


def agreed_count(count: int, shard: sources.Shard) -> int:
    """The number of images over all processes, after checking that they agree.

    With the whole set on every process, differing counts mean that the hosts see different
    data (another folder, another TFDS version): an error that names them. With shards, the
    sum.
    """
    counts = collectives.process_values(count)
    if shard != sources.WHOLE:
        return sum(counts)
    if len(set(counts)) > 1:
        per_process = ", ".join(f"process {i}: {c}" for i, c in enumerate(counts))
        raise DataPreparationError(
            f"The processes see different data sets ({per_process} images). Every host must "
            "read the same data, or set data.shard_per_process=True."
        )
    return count


def smallest_share(count: int) -> int:
    """The fewest images any process holds (its shard, in shard mode).

    Metrics draw this many reals at most, so that every process generates the same number of
    images: the generator runs on the global mesh, and programs of different shapes on
    different processes would wait for each other for ever.
    """
    return min(collectives.process_values(count))


def indexed_minibatches(
    images: np.ndarray, indices: np.ndarray, batch: int
) -> Iterator[np.ndarray]:
    """`images[indices]` as in-memory minibatches (of the memory-mapped cache, read in order)."""
    for start in range(0, len(indices), batch):
        interrupt.check("reading images for evaluation")
        yield np.asarray(images[np.sort(indices[start : start + batch])])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def mirrored(images, flags, xp=np):
    """`images` [N, r, r, C] with those where `flags` [N] is set flipped left-right: the one flip
    of the training stream (on the devices, `train_step.decode_reals`) and of the reals that
    the metrics read (on the host, `xp=np`)."""
    return xp.where(flags[:, None, None, None], images[:, :, ::-1], images)


def mirror_flags(seed: int, positions: np.ndarray) -> np.ndarray:
    """Whether the image at each global position is flipped: a hash bit, no state."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * np.uint64(0x2545F4914F6CDD1D) + np.uint64(1))
        return (_splitmix64(positions.astype(np.uint64) ^ key) >> np.uint64(63)).astype(bool)


@functools.lru_cache(maxsize=4)
def epoch_permutation(key: tuple[int, ...], epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([*key, epoch]).permutation(size)


def image_indices(key: tuple[int, ...], positions: np.ndarray, size: int) -> np.ndarray:
    """Which image of the set is shown at each position of the stream: `key` is `(seed,)`, or
    `(seed, process index)` for a process's own stream over its shard."""
    epochs, offsets = np.divmod(positions, size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        at = epochs == epoch
        indices[at] = epoch_permutation(key, int(epoch), size)[offsets[at]]
    return indices


def local_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """This process's rows `[first, last)` of every global batch (which divides by the
    processes: `config_checks`)."""
    share = batch_size // process_count
    return process_index * share, (process_index + 1) * share


Batch = dict[str, np.ndarray]


def load_batch(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """uint8 `images[indices]`, copied once into a new array in sorted order of the indices
    (kinder to a memory map whose pages are not all in memory yet)."""
    batch = np.empty((len(indices), *images.shape[1:]), images.dtype)
    for row in np.argsort(indices, kind="stable"):
        batch[row] = images[indices[row]]
    return batch


def train_batches(
    images: np.ndarray,
    *,
    seed: int,
    start: int,
    batch_size: int,
    mirror: bool = True,
    labels: np.ndarray | None = None,
    process_index: int = 0,
    process_count: int = 1,
    sharded: bool = False,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """This process's share of consecutive global batches, from global position `start`.

    Each batch is `{"images": uint8 [B / P, r, r, C], "mirror": bool [B / P]}`: the images as
    cached (not mirrored) and whether each is to be shown mirrored (all False without
    `mirror`); `train_step.decode_reals` gives the float32 reals. With `labels` (int32 [N],
    one per image) it also holds each image's class, `"labels"`: int32 [B / P]. Rows of the
    whole set's stream, or with `sharded` (`images` is this process's shard) of the process's
    own stream (see the module doc). uint8 is a quarter of float32's bytes on the way to the
    devices, which convert and flip.
    `prefetch` batches are read ahead on worker threads (NumPy releases the GIL while it
    copies). The stream needs random access by position, which the decoded cache gives and a
    tf.data pipeline over records would not.
    """
    first, last = local_rows(batch_size, process_index, process_count)
    key = (seed, process_index) if sharded else (seed,)

    def load(number: int) -> Batch:
        batch_start = start + number * batch_size
        positions = batch_start + np.arange(first, last)
        own = batch_start // process_count + np.arange(last - first) if sharded else positions
        flip = mirror_flags(seed, positions) if mirror else np.zeros(len(positions), bool)
        indices = image_indices(key, own, len(images))
        batch = {"images": load_batch(images, indices), "mirror": flip}
        if labels is not None:
            batch["labels"] = labels[indices]
        return batch

    with concurrent.futures.ThreadPoolExecutor(max(prefetch, 1)) as pool:
        pending = collections.deque(pool.submit(load, n) for n in range(max(prefetch, 1)))
        for number in itertools.count(len(pending)):
            batch = pending.popleft().result()
            pending.append(pool.submit(load, number))
            yield batch


def stage_train_batches(
    config: ml_collections.ConfigDict,
    source: sources.Source,
    stage: int,
    start: int,
    batch_size: int,
    labels: sources.Labels | None = None,
) -> Iterator[Batch]:
    """`train_batches` of `source` (`source_of` the config's data) at `stage`, for this process
    (with each image's class when `labels`, of `labels_of`, are given).

    Logs the number of images over all processes after checking that they agree.
    """
    data, shard = source.data, source.shard
    images = stage_images(source, stage)
    total = agreed_count(len(images), shard)
    index, count = jax.process_index(), jax.process_count()
    first, last = local_rows(batch_size, index, count)
    logging.info(
        "Input: %d images, %s; process %d of %d reads rows [%d, %d) of every batch of %d.",
        total,
        f"{len(images)} in this process's shard" if shard != sources.WHOLE else "on every process",
        index,
        count,
        first,
        last,
        batch_size,
    )
    return train_batches(
        images,
        seed=config.seed,
        start=start,
        batch_size=batch_size,
        mirror=data.mirror_augment,
        labels=None if labels is None else labels.ids,
        process_index=index,
        process_count=count,
        sharded=shard != sources.WHOLE,
        prefetch=data.prefetch,
    )


def prefetch_to_mesh(
    local_batches: Iterator[Batch], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Global batches (both fields) split along `data`, with `size` transfers in flight."""
    queue = []
    for local in local_batches:
        queue.append(parallel.global_batch(local, mesh))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue
