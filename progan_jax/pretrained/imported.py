"""What every network-file format reads into: our parameter trees and `config.model` fields."""

import dataclasses
from typing import Any

import numpy as np

from progan_jax.runtime.errors import UserError


class UnsupportedNetworkError(UserError, ValueError):
    """A network file holds something the model cannot express; the message names it."""


@dataclasses.dataclass(frozen=True)
class Imported:
    """Networks read from a file, as our parameter trees (numpy) and `config.model` fields,
    at our stage and alpha of the file's level of detail."""

    format: str
    model: dict[str, Any]
    generator: dict
    critic: dict
    generator_ema: dict
    stage: int
    alpha: float
    details: dict[str, Any]  # what the format knows of the file (its lod, its arguments)


class NamedArrays:
    """A network's arrays by name, as a mapping onto ours reads them: each `take` counts its
    name as used, so that `check_all_used` finds what the mapping had no place for (layers of
    another architecture, or of a resolution the file's arguments do not say)."""

    def __init__(self, arrays: dict[str, Any], owner: str):
        self.arrays, self.owner = arrays, owner  # owner: the file and network, for messages
        self.taken: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def take(self, name: str) -> np.ndarray:
        """The array `name` as float32, counted as used."""
        if name not in self.arrays:
            raise UnsupportedNetworkError(
                f"{self.owner}: the file has no {name!r} (it has {_some(sorted(self.arrays))})"
            )
        self.taken.add(name)
        return np.asarray(self.arrays[name], np.float32)

    def check_all_used(self) -> None:
        unused = sorted(set(self.arrays) - self.taken)
        if unused:
            raise UnsupportedNetworkError(
                f"{self.owner}: the file holds arrays the networks here have no place for: "
                f"{_some(unused)}"
            )


def _some(names: list[str], count: int = 8) -> str:
    return ", ".join(names[:count]) + (" ..." if len(names) > count else "") or "none"


# Both formats lay the 4x4 maps of G's first layer and of the critic's flatten out as NCHW
# (c, h, w); ours are NHWC (h, w, c).


def units_to_nhwc(weight: np.ndarray, channels: int) -> np.ndarray:
    """A dense kernel [fan_in, 16 * channels] whose output units are NCHW maps, as ours."""
    fan_in = weight.shape[0]
    return weight.reshape(fan_in, channels, 4, 4).transpose(0, 2, 3, 1).reshape(fan_in, -1)


def inputs_to_nhwc(weight: np.ndarray, channels: int) -> np.ndarray:
    """A dense kernel [16 * channels, out] that reads an NCHW flatten, as ours."""
    out = weight.shape[1]
    return weight.reshape(channels, 4, 4, out).transpose(1, 2, 0, 3).reshape(-1, out)
