"""Metrics of a checkpoint's EMA generator against the configured data.

    python main.py --config configs/demo.py --mode=evaluate                       # latest
    python main.py --config configs/demo.py --mode=evaluate --config.eval.checkpoint=0  # untrained

SWD (with the real-vs-real noise floor), MS-SSIM between consecutive generated pairs and, with
Inception weights configured, FID. Results go to stdout (one JSON line) and to TensorBoard.
"""

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from progan_jax import (
    checkpointing,
    input_pipeline,
    interrupt,
    models,
    parallel,
    sampling,
    schedule,
)
from progan_jax import train_step as ts
from progan_jax.metrics import ms_ssim, swd


@dataclasses.dataclass(frozen=True)
class Generator:
    """What the metrics need of a checkpoint: G_ema, its stage and alpha."""

    gan: ts.GAN
    params: ts.Params
    stage: int
    alpha: float
    images_shown: int

    @property
    def resolution(self) -> int:
        return models.stage_resolution(self.stage)

    def batches(self, count: int, batch: int, seed: int) -> Iterator[np.ndarray]:
        """`count` generated uint8 images in minibatches, from latents fixed by `seed`."""
        key = jax.random.key(seed)
        for start in range(0, count, batch):
            interrupt.check("evaluation")
            n = min(batch, count - start)
            z = self.gan.sample_latents(jax.random.fold_in(key, start), n)
            images = sampling.generate(self.gan, self.params, z, self.stage, self.alpha)
            yield sampling.to_uint8(images)


def load_generator(
    config: ml_collections.ConfigDict, workdir: str, images_shown: int | None
) -> Generator:
    """G_ema of the latest checkpoint, of the one at `images_shown`, or (0) the untrained G at
    the final stage."""
    gan = ts.GAN.from_config(config)
    mesh = parallel.make_mesh()
    state = ts.create_train_state(gan, jax.random.key(config.seed), parallel.replicated(mesh))
    last_stage = models.num_stages(config.model.resolution) - 1
    if images_shown == 0:
        return Generator(gan, state.g_ema_params, last_stage, 1.0, 0)
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        restored = checkpointer.restore(state, images_shown)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first.")
    state, progress = restored
    if progress.alpha is None:  # a checkpoint from before progress kept stage and alpha
        phase = schedule.phases(config)[progress.phase_index]  # of the last step taken
        progress = dataclasses.replace(
            progress, stage=phase.stage, alpha=schedule.alpha(phase, progress.images_shown)
        )
    return Generator(gan, state.g_ema_params, progress.stage, progress.alpha, progress.images_shown)


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


def describe_reals(
    reals: np.ndarray, indices: np.ndarray, batch: int, seed: int
) -> swd.Descriptors:
    """SWD descriptors (temporary files, one per level) of `reals[indices]`, read in batches."""
    batches = input_pipeline.image_batches(reals, indices, batch)
    return swd.describe(batches, reals.shape[1], seed=seed)


def describe_generated(generator: Generator, count: int, batch: int, seed: int) -> swd.Descriptors:
    """SWD descriptors of `count` images from latents fixed by `seed` (centres by seed + 1);
    each minibatch is dropped once described, so the images are generated only once."""
    fakes = generator.batches(count, batch, seed)
    return swd.describe(fakes, generator.resolution, seed=seed + 1)


def generated_swd(
    generator: Generator, real_desc: swd.Descriptors, count: int, batch: int, seed: int
) -> dict[str, float]:
    """SWD (x1e3 per level and average) between `count` generated images and described reals."""
    with describe_generated(generator, count, batch, seed) as fakes:
        return swd.distances(real_desc, [fakes])[0]


def swd_with_noise_floor(
    config: ml_collections.ConfigDict, generator: Generator, reals: np.ndarray
) -> dict[str, float]:
    """SWD of generated images against a draw of the reals and, with eval.noise_floor, of a
    second draw against the first (`swd_noise_floor_*`), on the same directions: the sets are
    described first, then compared one pyramid level at a time."""
    ev = config.eval
    draw, second = draw_reals(reals, ev.swd_images, config.seed)
    with contextlib.ExitStack() as stack:
        real_desc = stack.enter_context(describe_reals(reals, draw, ev.batch_size, 1))
        others = [
            stack.enter_context(
                describe_generated(generator, len(draw), ev.batch_size, config.seed + 1)
            )
        ]
        if ev.noise_floor:
            others.append(stack.enter_context(describe_reals(reals, second, ev.batch_size, 4)))
        swds = swd.distances(real_desc, others)
    results = swds[0]
    if ev.noise_floor:
        results.update({k.replace("swd", "swd_noise_floor"): v for k, v in swds[1].items()})
    return results


class PeriodicSWD:
    """SWD of G_ema while training, against one fixed draw of the current stage's reals.

    The reals are described once per stage (their descriptors wait in temporary files, deleted
    by `close()` or when the next stage's replace them). Every process computes the same
    numbers (the generator runs on the global mesh); the caller's writer keeps process 0's.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._stage: int | None = None
        self._reals: swd.Descriptors | None = None
        self._count = 0

    def __call__(self, generator: Generator) -> dict[str, float] | None:
        if generator.resolution < swd.MIN_SIZE:
            return None
        cfg = self.config
        if generator.stage != self._stage:
            self.close()
            reals = input_pipeline.stage_images(
                cfg.data, cfg.model.resolution, cfg.model.num_channels, generator.stage
            )
            draw, _ = draw_reals(reals, cfg.eval.swd_train_images, cfg.seed)
            self._reals = describe_reals(reals, draw, cfg.eval.batch_size, 1)
            self._stage, self._count = generator.stage, len(draw)
        return generated_swd(generator, self._reals, self._count, cfg.eval.batch_size, cfg.seed + 1)

    def close(self) -> None:
        if self._reals is not None:
            self._reals.close()
        self._stage, self._reals = None, None


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    ev = config.eval
    generator = load_generator(config, workdir, ev.checkpoint)
    res = generator.resolution
    data = config.data
    reals = input_pipeline.stage_images(
        data, config.model.resolution, config.model.num_channels, generator.stage
    )
    results: dict = {
        "images_shown": generator.images_shown,
        "stage": generator.stage,
        "resolution": res,
    }

    minimum_size = {"swd": swd.MIN_SIZE, "ms_ssim": ms_ssim.MIN_SIZE}
    metrics = set()
    for metric in ev.metrics:
        size = minimum_size.get(metric, 0)
        if res >= size:
            metrics.add(metric)
        else:
            logging.warning(
                "Skipping %s: it needs %dx%d images or more; the checkpoint is at %dx%d.",
                metric, size, size, res, res,
            )  # fmt: skip

    if "swd" in metrics:
        results.update(swd_with_noise_floor(config, generator, reals))

    if "ms_ssim" in metrics:
        fakes = generator.batches(ev.ms_ssim_images, ev.batch_size, config.seed + 3)
        results["ms_ssim"] = ms_ssim.consecutive_pairs_ms_ssim(fakes)

    if "fid" in metrics:
        from progan_jax.metrics import fid

        results.update(fid.evaluate_fid(config, generator, reals))
    return results


def write_results(results: dict, workdir: str) -> None:
    """The metrics as TensorBoard scalars at the checkpoint's images shown (prefix eval/)."""
    from clu import metric_writers

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)
    scalars = {f"eval/{k}": v for k, v in results.items() if k not in ("images_shown", "stage")}
    writer.write_scalars(results["images_shown"], scalars)
    writer.flush()
