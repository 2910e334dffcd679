"""The random streams a run draws from, by name, each derived from `config.seed`.

Every consumer of randomness outside the train step (whose key lives in the TrainState) has
a stream of its own, so that a metric's images do not change when another metric is added,
and results stay comparable across runs with the same seed. The numbers are part of the
results: changing one changes the images a metric sees.
"""

import enum


class Stream(enum.IntEnum):
    """Offsets from `config.seed`."""

    REALS = 0  # which reals the metrics draw (SWD's draws, FID's statistics)
    SWD_FAKES = 1  # SWD's generated latents; their patches' centres use the next seed
    MS_SSIM_FAKES = 3
    FID_FAKES = 4


class Coins(enum.IntEnum):
    """Seeds of the mirror coins of the reals that SWD describes (fixed, not offsets: a draw's
    images stay the same from one evaluation to the next)."""

    SWD_REALS = 1
    SWD_NOISE_FLOOR_REALS = 4  # the second draw, for the real-vs-real noise floor


# Folded into the key of `config.seed` for the sample grids' fixed latents.
SAMPLE_GRID = 0x5A3


def seed_of(seed: int, stream: Stream) -> int:
    """The seed of `stream` in a run seeded with `seed`."""
    return seed + stream
