"""SWD of a generator against reals: the pieces of the SWD evaluators (`evaluators.SWD`).

They describe the reals and the generated images into temporary files per pyramid level
(`swd.describe`), so memory does not grow with the number of images. Reals are mirrored as in
training when `data.mirror_augment` is on (`real_minibatches`), as the official evaluation does.
"""

from collections.abc import Iterator

import numpy as np

from progan_jax.data import input_pipeline
from progan_jax.metrics import swd
from progan_jax.nets.sampling import GeneratorSnapshot
from progan_jax.runtime import progress_bar


def real_swd_draws(num_reals: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two draws of `count` real indices: disjoint where the set allows, else a re-draw."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_reals)
    count = min(count, num_reals)
    if num_reals >= 2 * count:
        return order[:count], order[count : 2 * count]
    return order[:count], rng.permutation(num_reals)[:count]


def draw_reals(reals: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`real_swd_draws` of at most the smallest process's share of the reals, so that every
    process generates as many images (see `input_pipeline.smallest_share`)."""
    count = min(count, input_pipeline.smallest_share(len(reals)))
    return real_swd_draws(len(reals), count, seed)


def real_minibatches(
    reals: np.ndarray, indices: np.ndarray, batch: int, *, mirror: bool, seed: int
) -> Iterator[np.ndarray]:
    """`reals[indices]` in minibatches; with `mirror`, each image flipped left-right on a fair
    coin of its own (a hash of `seed` and its place in the draw, as the training stream's flips).

    Training with mirror augment shows G each image or its mirror with probability 1/2, and the
    official evaluation mirrors reals the same way when the run did (per-sample coins), so the
    metrics compare G with the distribution it learned. Fixed seeds keep a draw's images equal
    from one evaluation to the next.
    """
    shown = 0
    what = f"reading {len(indices)} reals (batches)"
    batches = input_pipeline.indexed_minibatches(reals, indices, batch)
    for images in progress_bar.track(batches, -(-len(indices) // batch), what):
        if mirror:
            flip = input_pipeline.mirror_flags(seed, np.arange(shown, shown + len(images)))
            images = input_pipeline.mirrored(images, flip)
        shown += len(images)
        yield images


def describe_reals(
    reals: np.ndarray, indices: np.ndarray, batch: int, seed: int, *, mirror: bool
) -> swd.Descriptors:
    """SWD descriptors (temporary files, one per level) of `reals[indices]`, read in batches
    (mirrored per `real_minibatches`, on coins seeded by `seed` too)."""
    batches = real_minibatches(reals, indices, batch, mirror=mirror, seed=seed)
    return swd.describe(batches, reals.shape[1], seed=seed)


def describe_generated(
    generator: GeneratorSnapshot, count: int, batch: int, seed: int
) -> swd.Descriptors:
    """SWD descriptors of `count` images from latents fixed by `seed` in blocks of `batch`
    (centres by seed + 1, per block); each minibatch is described on the devices that generated
    it and dropped, so the images are generated only once and never leave the devices."""
    fakes = generator.fake_minibatches(count, batch, seed)
    return swd.describe(fakes, generator.resolution, seed=seed + 1, block=batch)


def generated_swd(
    generator: GeneratorSnapshot, real_desc: swd.Descriptors, count: int, batch: int, seed: int
) -> dict[str, float]:
    """SWD (x1e3 per level and average) between `count` generated images and described reals."""
    with describe_generated(generator, count, batch, seed) as fakes:
        return swd.distances(real_desc, [fakes])[0]
