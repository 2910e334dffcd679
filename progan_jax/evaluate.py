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
    state = ts.create_train_state(gan, jax.random.key(config.seed))
    last_stage = models.num_stages(config.model.resolution) - 1
    if images_shown == 0:
        return Generator(gan, state.g_ema_params, last_stage, 1.0, 0)
    mesh = parallel.make_mesh()
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        restored = checkpointer.restore(parallel.replicate(state, mesh), images_shown)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first.")
    state, progress = restored
    phase = schedule.phases(config)[progress.phase_index]  # of the last step taken
    alpha = schedule.alpha(phase, progress.images_shown)
    return Generator(gan, state.g_ema_params, phase.stage, alpha, progress.images_shown)


def real_batches(images: np.ndarray, indices: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), batch):
        yield np.asarray(images[np.sort(indices[start : start + batch])])


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    ev = config.eval
    generator = load_generator(config, workdir, ev.checkpoint)
    res = generator.resolution
    data = config.data
    reals = input_pipeline.stage_images(
        data, config.model.resolution, config.model.num_channels, generator.stage
    )
    rng = np.random.default_rng(config.seed)
    results: dict = {
        "images_shown": generator.images_shown,
        "stage": generator.stage,
        "resolution": res,
    }

    if "swd" in ev.metrics and res >= 16:
        count = min(ev.swd_images, len(reals))
        order = rng.permutation(len(reals))
        real_desc = swd.describe(real_batches(reals, order[:count], ev.batch_size), res, seed=1)
        fake_desc = swd.describe(
            generator.batches(count, ev.batch_size, config.seed + 1), res, seed=2
        )
        results.update(swd.distance(real_desc, fake_desc))
        if ev.noise_floor:
            # A second, disjoint draw of reals where the set allows (else a re-draw).
            second = (
                order[count : 2 * count]
                if len(reals) >= 2 * count
                else rng.permutation(len(reals))[:count]
            )
            floor = swd.describe(real_batches(reals, second, ev.batch_size), res, seed=3)
            results.update(
                {
                    k.replace("swd", "swd_noise_floor"): v
                    for k, v in swd.distance(real_desc, floor).items()
                }
            )
    elif "swd" in ev.metrics:
        logging.warning("SWD needs 16x16 or more; the checkpoint is at %dx%d.", res, res)

    if "ms_ssim" in ev.metrics:
        fakes = np.concatenate(
            list(generator.batches(ev.ms_ssim_images, ev.batch_size, config.seed + 2))
        )
        results["ms_ssim"] = ms_ssim.consecutive_pairs_ms_ssim(fakes)

    if "fid" in ev.metrics:
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
