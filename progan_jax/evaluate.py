"""Metrics of a checkpoint's EMA generator against the configured data.

    python main.py --config configs/demo.py --mode=evaluate                       # latest
    python main.py --config configs/demo.py --mode=evaluate --config.eval.checkpoint=0  # untrained

SWD (with the real-vs-real noise floor), MS-SSIM between consecutive generated pairs and, with
Inception weights configured, FID. Results go to stdout (one JSON line) and to TensorBoard.
"""

import dataclasses
import logging
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from progan_jax import checkpointing, input_pipeline, models, parallel, sampling, schedule
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
    phase = schedule.phases(config)[progress.phase_index]  # of the last step taken
    alpha = schedule.alpha(phase, progress.images_shown)
    return Generator(gan, state.g_ema_params, phase.stage, alpha, progress.images_shown)


def real_swd_draws(num_reals: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two draws of `count` real indices: disjoint where the set allows, else a re-draw."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_reals)
    count = min(count, num_reals)
    if num_reals >= 2 * count:
        return order[:count], order[count : 2 * count]
    return order[:count], rng.permutation(num_reals)[:count]


def describe_reals(
    reals: np.ndarray, indices: np.ndarray, batch: int, seed: int
) -> swd.Descriptors:
    batches = input_pipeline.image_batches(reals, indices, batch)
    return swd.describe(batches, reals.shape[1], seed=seed)


def generated_swd(
    generator: Generator, real_desc: swd.Descriptors, count: int, batch: int, seed: int
) -> dict[str, float]:
    """SWD (x1e3 per level and average) between `count` generated images and described reals."""
    fakes = generator.batches(count, batch, seed)
    return swd.distance(real_desc, swd.describe(fakes, generator.resolution, seed=seed + 1))


class PeriodicSWD:
    """SWD of G_ema while training, against one fixed draw of the current stage's reals.

    The reals are described once per stage. Every process computes the same numbers (the
    generator runs on the global mesh); the caller's writer keeps process 0's.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._reals: dict[int, tuple[swd.Descriptors, int]] = {}

    def __call__(self, generator: Generator) -> dict[str, float] | None:
        if generator.resolution < swd.MIN_SIZE:
            return None
        cfg, stage = self.config, generator.stage
        if stage not in self._reals:
            reals = input_pipeline.stage_images(
                cfg.data, cfg.model.resolution, cfg.model.num_channels, stage
            )
            draw, _ = real_swd_draws(len(reals), cfg.eval.swd_train_images, cfg.seed)
            self._reals[stage] = describe_reals(reals, draw, cfg.eval.batch_size, 1), len(draw)
        real_desc, count = self._reals[stage]
        return generated_swd(generator, real_desc, count, cfg.eval.batch_size, cfg.seed + 1)


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
        draw, second = real_swd_draws(len(reals), ev.swd_images, config.seed)
        real_desc = describe_reals(reals, draw, ev.batch_size, 1)
        results.update(
            generated_swd(generator, real_desc, len(draw), ev.batch_size, config.seed + 1)
        )
        if ev.noise_floor:
            floor = swd.distance(real_desc, describe_reals(reals, second, ev.batch_size, 4))
            results.update({k.replace("swd", "swd_noise_floor"): v for k, v in floor.items()})

    if "ms_ssim" in metrics:
        fakes = np.concatenate(
            list(generator.batches(ev.ms_ssim_images, ev.batch_size, config.seed + 3))
        )
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
