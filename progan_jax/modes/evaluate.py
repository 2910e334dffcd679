"""`--mode=evaluate`: the evaluators `evals.evaluate` names, on a checkpoint's EMA generator.

    python main.py --config configs/demo.py --mode=evaluate                  # the latest
    python main.py --config configs/demo.py --mode=evaluate \
        --config.checkpoint_images_shown=best --config.evals.evaluate='("fid",)'

The same evaluators as training's (`metrics/evaluators.py`), against the configured data: SWD
with its real-vs-real noise floor, a conditional run's SWD per class, MS-SSIM between
consecutive generated pairs and, with Inception weights configured, FID. Results go to stdout
(one JSON line) and to TensorBoard (`eval/...`).
"""

import dataclasses

import jax
import ml_collections

from progan_jax.data import input_pipeline
from progan_jax.metrics import evaluators
from progan_jax.runtime.errors import ConfigError
from progan_jax.training import trained


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The metrics of a checkpoint's G_ema. A conditional G is asked for classes in the data's
    proportions."""
    evaluators.validate(config)
    generator = trained.load_generator(config, workdir, config.checkpoint_images_shown)
    model = config.model
    source = input_pipeline.source_of(config.data, model.resolution, model.num_channels)
    reals = evaluators.StageReals(source, model.label_size)
    labels = reals.labels
    if generator.gan.label_size and labels is None:
        raise ConfigError(
            f"data.labels: the checkpoint's generator draws {generator.gan.label_size} classes; "
            "evaluate it against labelled data (data.labels as in training), which per-class "
            "SWD and the classes' shares need"
        )
    if labels is not None:
        frequencies = input_pipeline.class_frequencies(labels, config.data)
        generator = dataclasses.replace(generator, label_frequencies=frequencies)
    results: dict = {
        "images_shown": generator.images_shown,
        "stage": generator.stage,
        "resolution": generator.resolution,
    }
    chosen = evaluators.build(config, config.evals.evaluate, reals)
    try:
        results.update(evaluators.run(chosen, generator, quiet=False))
    finally:
        evaluators.close(chosen)
    return results


def write_results(results: dict, workdir: str) -> None:
    """The metrics as TensorBoard scalars at the checkpoint's images shown (prefix eval/)."""
    from clu import metric_writers

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)
    scalars = {f"eval/{k}": v for k, v in results.items() if k not in ("images_shown", "stage")}
    writer.write_scalars(results["images_shown"], scalars)
    writer.flush()
