"""Metrics of a checkpoint's EMA generator against the configured data.

    python main.py --config configs/demo.py --mode=evaluate                       # latest
    python main.py --config configs/demo.py --mode=evaluate \
        --config.eval.checkpoint_images_shown=0  # the untrained generator

SWD (with the real-vs-real noise floor), MS-SSIM between consecutive generated pairs and, with
Inception weights configured, FID. Results go to stdout (one JSON line) and to TensorBoard.
"""

import dataclasses
import logging

import jax
import ml_collections
import numpy as np

from progan_jax import checkpointing, sampling, seeds
from progan_jax.data import input_pipeline, sources
from progan_jax.errors import ConfigError
from progan_jax.metrics import generator_swd, ms_ssim, swd


def per_class_swd(
    config: ml_collections.ConfigDict,
    generator: sampling.GeneratorSnapshot,
    reals: np.ndarray,
    labels: sources.Labels,
) -> dict[str, float]:
    """SWD of each class: G asked for that class alone against that class's reals, keyed
    `<class>/swd_...` (with its own noise floor)."""
    results = {}
    for label, name in enumerate(labels.names):
        of_class = reals[np.flatnonzero(labels.ids == label)]
        swds = generator_swd.swd_with_noise_floor(config, generator.of_class(label), of_class)
        results.update({f"{name}/{key}": value for key, value in swds.items()})
    return results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The metrics of a checkpoint's G_ema. A conditional G is asked for classes in the data's
    proportions, and SWD is also reported per class (`per_class_swd`)."""
    ev = config.eval
    generator = checkpointing.load_generator(config, workdir, ev.checkpoint_images_shown)
    res = generator.resolution
    data, model = config.data, config.model
    source = input_pipeline.source_of(data, model.resolution, model.num_channels)
    labels = input_pipeline.labels_of(source, model.label_size)
    if generator.gan.label_size and labels is None:
        raise ConfigError(
            f"data.labels: the checkpoint's generator draws {generator.gan.label_size} classes; "
            "evaluate it against labelled data (data.labels as in training), which per-class "
            "SWD and the classes' shares need"
        )
    if labels is not None:
        frequencies = input_pipeline.class_frequencies(labels, data)
        generator = dataclasses.replace(generator, label_frequencies=frequencies)
    reals = input_pipeline.stage_images(source, generator.stage)
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
        results.update(generator_swd.swd_with_noise_floor(config, generator, reals))
        if labels is not None:
            results.update(per_class_swd(config, generator, reals, labels))

    if "ms_ssim" in metrics:
        fakes = generator.fake_minibatches(
            ev.ms_ssim_images, ev.batch_size, seeds.seed_of(config.seed, seeds.Stream.MS_SSIM_FAKES)
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
