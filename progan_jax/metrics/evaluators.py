"""Evaluators: a generator's metrics, one interface for training and `--mode=evaluate`.

Each evaluator has a section in `config.evals` (its sizes, and `every_images`: its cadence while
training, 0 for `--mode=evaluate` only). Training runs those with a cadence on G_ema and
writes TensorBoard's `metrics/...`; `--mode=evaluate` runs the ones `evals.evaluate` names on a
checkpoint and writes `eval/...`. An evaluator keeps what does not change within a stage (the
reals' SWD descriptors and noise floor, their FID statistics, the Inception weights), so a
periodic evaluation only generates and describes images; and it draws the same images from
the same seeds every time, so training's value at a checkpoint is `--mode=evaluate`'s on it
(with the same `evals` settings and, with per-process shards, process 0's shard).

The generator runs on the global mesh, each device on its own rows; the reals are this
process's (its shard, with per-process shards), and so are the numbers. Training's writer and
its choice of the best checkpoint take process 0's. Descriptors of reals kept for a stage sit
in `$TMPDIR` (75 KB per image and pyramid level; `class_swd` keeps one set per class).
"""

import abc
import functools
import logging
from collections.abc import Sequence
from typing import ClassVar

import ml_collections
import numpy as np

from progan_jax.data import input_pipeline, sources
from progan_jax.metrics import fid, generator_swd, ms_ssim, swd
from progan_jax.nets.sampling import GeneratorSnapshot
from progan_jax.runtime import seeds
from progan_jax.runtime.errors import ConfigError


class StageReals:
    """This process's reals at one stage's resolution (a memory-mapped cache), opened once per
    stage and shared by the evaluators, and their labels (a conditional run's), read once for
    the evaluators and the run that asks them."""

    def __init__(self, source: sources.Source, label_size: int):
        self.source = source
        self.label_size = label_size
        self._stage: int | None = None
        self._images: np.ndarray | None = None

    def __call__(self, stage: int) -> np.ndarray:
        if stage != self._stage:
            self._images = input_pipeline.stage_images(self.source, stage)
            self._stage = stage
        return self._images

    @functools.cached_property
    def labels(self) -> sources.Labels | None:
        return input_pipeline.labels_of(self.source, self.label_size)


class Evaluator(abc.ABC):
    """One metric (or family of metrics) of a generator, configured by `config.evals.<name>`."""

    name: ClassVar[str]
    min_resolution: ClassVar[int] = 1

    def __init__(self, config: ml_collections.ConfigDict, reals: StageReals):
        self.config = config
        self.settings = config.evals[self.name]
        self.reals = reals

    @property
    def every_images(self) -> int:
        return self.settings.every_images

    def skip_reason(self, generator: GeneratorSnapshot) -> str | None:
        """Why this evaluator does not apply to `generator`, or None."""
        size, res = self.min_resolution, generator.resolution
        if res < size:
            return f"it needs {size}x{size} images or more; the generator is at {res}x{res}"
        return None

    @abc.abstractmethod
    def __call__(self, generator: GeneratorSnapshot) -> dict[str, float]:
        """The metrics of `generator`, keyed by name."""

    def close(self) -> None:  # noqa: B027 (most evaluators keep nothing to release)
        """Releases what the evaluator keeps between calls (temporary files)."""


class _DescribedReals:
    """A stage's SWD descriptors of one draw of reals, and of a second draw against it (the
    noise floor): the same each time they are asked for, so they are described once."""

    def __init__(self, config, reals: np.ndarray, count: int, noise_floor: bool):
        ev, mirror = config.evals, config.data.mirror_augment
        draw, second = generator_swd.draw_reals(
            reals, count, seeds.seed_of(config.seed, seeds.Stream.REALS)
        )
        self.count = len(draw)
        self.descriptors = generator_swd.describe_reals(
            reals, draw, ev.batch_size, seeds.Coins.SWD_REALS, mirror=mirror
        )
        self.noise_floor: dict[str, float] = {}
        if noise_floor:
            try:
                with generator_swd.describe_reals(
                    reals, second, ev.batch_size, seeds.Coins.SWD_NOISE_FLOOR_REALS, mirror=mirror
                ) as second_draw:
                    floor = swd.distances(self.descriptors, [second_draw])[0]
            except BaseException:  # e.g. SIGTERM or a full disk: no temporary files left behind
                self.descriptors.close()
                raise
            self.noise_floor = {k.replace("swd", "swd_noise_floor"): v for k, v in floor.items()}

    def distances_to(self, generator: GeneratorSnapshot, batch: int, seed: int) -> dict:
        return generator_swd.generated_swd(generator, self.descriptors, self.count, batch, seed)

    def close(self) -> None:
        self.descriptors.close()


class SWD(Evaluator):
    """Multi-scale sliced Wasserstein distance against one fixed draw of the stage's reals
    (`swd_x1e3_<res>`, `swd_x1e3_avg`), with the real-vs-real noise floor."""

    name = "swd"
    min_resolution = swd.MIN_SIZE

    def __init__(self, config: ml_collections.ConfigDict, reals: StageReals):
        super().__init__(config, reals)
        self._described: dict[tuple[int, int | None], _DescribedReals] = {}

    def described(self, stage: int, label: int | None = None) -> _DescribedReals:
        """The stage's described reals (of class `label` alone, if given); earlier stages'
        are deleted."""
        for key in [k for k in self._described if k[0] != stage]:
            self._described.pop(key).close()
        if (stage, label) not in self._described:
            reals = self.reals(stage)
            if label is not None:
                reals = reals[np.flatnonzero(self.reals.labels.ids == label)]
            self._described[stage, label] = _DescribedReals(
                self.config, reals, self.settings.images, self.settings.noise_floor
            )
        return self._described[stage, label]

    def distances(self, generator: GeneratorSnapshot, label: int | None = None) -> dict:
        described = self.described(generator.stage, label)
        seed = seeds.seed_of(self.config.seed, seeds.Stream.SWD_FAKES)
        results = described.distances_to(generator, self.config.evals.batch_size, seed)
        return results | described.noise_floor

    def __call__(self, generator: GeneratorSnapshot) -> dict[str, float]:
        return self.distances(generator)

    def close(self) -> None:
        for described in self._described.values():
            described.close()
        self._described = {}


class ClassSWD(SWD):
    """A conditional run's SWD per class (`<class>/swd_...`): G asked for that class alone,
    against that class's reals, each with its own noise floor."""

    name = "class_swd"

    def skip_reason(self, generator: GeneratorSnapshot) -> str | None:
        if generator.label_frequencies is None:
            return "the generator is unconditional"
        return super().skip_reason(generator)

    def __call__(self, generator: GeneratorSnapshot) -> dict[str, float]:
        names = self.reals.labels.names
        results = {}
        for label, name in enumerate(names):
            swds = self.distances(generator.of_class(label), label)
            results.update({f"{name}/{key}": value for key, value in swds.items()})
        return results


class MSSSIM(Evaluator):
    """MS-SSIM between consecutive pairs of generated images (diversity)."""

    name = "ms_ssim"
    min_resolution = ms_ssim.MIN_SIZE

    def __call__(self, generator: GeneratorSnapshot) -> dict[str, float]:
        seed = seeds.seed_of(self.config.seed, seeds.Stream.MS_SSIM_FAKES)
        fakes = generator.fake_minibatches(self.settings.images, self.config.evals.batch_size, seed)
        return {"ms_ssim": ms_ssim.consecutive_pairs_ms_ssim(fakes)}


class FID(Evaluator):
    """Fréchet Inception distance with the TF FID network (`evals.fid_weights`); the reals'
    statistics are cached on disk per stage, and kept in memory while the stage lasts."""

    name = "fid"

    def __init__(self, config: ml_collections.ConfigDict, reals: StageReals):
        super().__init__(config, reals)
        self._weights = fid.load_weights(fid.weights_path(config))
        self._statistics: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __call__(self, generator: GeneratorSnapshot) -> dict[str, float]:
        stage = generator.stage
        if self._statistics is None or self._statistics[0] != stage:
            stats = fid.real_statistics(
                self.config, self._weights, self.reals.source, self.reals(stage)
            )
            self._statistics = stage, stats
        return {
            "fid": fid.generated_fid(self.config, self._weights, generator, *self._statistics[1])
        }


EVALUATORS: dict[str, type[Evaluator]] = {e.name: e for e in (SWD, ClassSWD, MSSSIM, FID)}
# Metrics that rank checkpoints (`checkpoint.best_metric`; lower is better), by evaluator.
RANKING_METRICS = {"fid": "fid", "swd_x1e3_avg": "swd"}


def in_training(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The evaluators that run while training: those with a cadence."""
    return tuple(name for name in EVALUATORS if config.evals[name].every_images > 0)


def validate(config: ml_collections.ConfigDict) -> None:
    """`config.evals` and `checkpoint.best_metric`; each error names its field."""
    ev = config.evals
    unknown = [name for name in ev.evaluate if name not in EVALUATORS]
    if unknown:
        raise ConfigError(
            f"evals.evaluate: unknown evaluators {unknown}; choose from {', '.join(EVALUATORS)}"
        )
    if ev.batch_size <= 0:
        raise ConfigError(f"evals.batch_size: must be positive, got {ev.batch_size}")
    for name in EVALUATORS:
        if ev[name].every_images < 0:
            raise ConfigError(f"evals.{name}.every_images: must be >= 0 (0: off while training)")
        if ev[name].images < 2:
            raise ConfigError(f"evals.{name}.images: must be at least 2, got {ev[name].images}")
    best = config.checkpoint.best_metric
    if best and best not in RANKING_METRICS:
        raise ConfigError(
            f"checkpoint.best_metric: {best!r} does not rank checkpoints; choose from "
            f"{', '.join(RANKING_METRICS)} or ''"
        )


def check_training_needs(config: ml_collections.ConfigDict) -> None:
    """What the evaluators with a cadence need before training starts (not for a plan or a
    benchmark of the same config): FID's Inception weights."""
    if config.evals.fid.every_images > 0 and not config.evals.fid_weights:
        raise ConfigError(
            "evals.fid.every_images: FID while training needs evals.fid_weights, which is not "
            f"set. {fid.HOW_TO_GET_WEIGHTS} Or turn it off with --config.evals.fid.every_images=0."
        )


def build(
    config: ml_collections.ConfigDict, names: Sequence[str], reals: StageReals
) -> list[Evaluator]:
    """The named evaluators, sharing one reader of the reals."""
    return [EVALUATORS[name](config, reals) for name in names]


def run(evaluators: Sequence[Evaluator], generator: GeneratorSnapshot, *, quiet: bool) -> dict:
    """Every evaluator's metrics of `generator`; those that do not apply are skipped (said in
    the log unless `quiet`: training skips SWD at 4x4 and 8x8 by design)."""
    results: dict[str, float] = {}
    for evaluator in evaluators:
        reason = evaluator.skip_reason(generator)
        if reason is None:
            results.update(evaluator(generator))
        elif not quiet:
            logging.info("Skipping %s: %s.", evaluator.name, reason)
    return results


def close(evaluators: Sequence[Evaluator]) -> None:
    for evaluator in evaluators:
        evaluator.close()
