"""The evaluators that run while training, and the checkpoint they rank best.

Each evaluator with a cadence (`config.evals.<name>.every_images`) runs on G_ema whenever the
images shown cross a multiple of it. When `checkpoint.best_metric` is among the results and
improves on the best so far, the state is kept as the best checkpoint. A metric's values at two
resolutions do not compare (FID of 16x16 images upscaled, SWD over other pyramid levels), so a
later stage's first value is the best until a better one at that stage.
"""

import json
import logging
import math
from collections.abc import Sequence

import jax
import ml_collections

from progan_jax.metrics import evaluators
from progan_jax.nets.sampling import GeneratorSnapshot
from progan_jax.runtime import collectives


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return every > 0 and after // every > before // every


class PeriodicEvals:
    def __init__(
        self, config: ml_collections.ConfigDict, reals: evaluators.StageReals, best: dict | None
    ):
        evaluators.check_training_needs(config)
        self.evaluators = evaluators.build(config, evaluators.in_training(config), reals)
        self.metric = config.checkpoint.best_metric
        ranking = evaluators.RANKING_METRICS.get(self.metric)
        self.images = config.evals[ranking].images if ranking else None
        # The best checkpoint's record from an earlier part of the run, if it measured the same
        # thing: another metric, or the same on another count of images, does not compare.
        same = best is not None and (best["metric"], best.get("images")) == (
            self.metric,
            self.images,
        )
        self.best = best if same else None
        if ranking and config.evals[ranking].every_images == 0:
            logging.info(
                "No best checkpoint: checkpoint.best_metric %r is not measured while training "
                "(evals.%s.every_images is 0).",
                self.metric,
                ranking,
            )

    def due(self, before: int, after: int) -> list[evaluators.Evaluator]:
        return [e for e in self.evaluators if crossed(before, after, e.every_images)]

    def improved(self, results: dict, generator: GeneratorSnapshot) -> dict | None:
        """The record of a new best checkpoint, if `results` make `generator` one."""
        value = results.get(self.metric) if self.metric else None
        if value is None or not math.isfinite(value):
            return None
        best = self.best
        if best is not None and (
            generator.stage < best["stage"]
            or (generator.stage == best["stage"] and not value < best["value"])
        ):
            return None
        self.best = dict(
            metric=self.metric,
            value=value,
            images_shown=generator.images_shown,
            stage=generator.stage,
            images=self.images,
        )
        logging.info(
            "Best %s so far: %.4g at %d images shown.", self.metric, value, generator.images_shown
        )
        return self.best

    def run(self, due: Sequence[evaluators.Evaluator], generator: GeneratorSnapshot) -> dict:
        """The due evaluators' results, process 0's on every process: with per-process shards
        the reals, and so the metrics, differ by process, and every process must make the same
        decision about the best checkpoint (its save is collective)."""
        results = evaluators.run(due, generator, quiet=True)
        if jax.process_count() > 1:
            results = json.loads(collectives.allgather_bytes(json.dumps(results).encode())[0])
        return results

    def close(self) -> None:
        evaluators.close(self.evaluators)
