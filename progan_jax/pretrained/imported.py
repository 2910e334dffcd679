"""What every network-file format reads into: our parameter trees and `config.model` fields."""

import dataclasses
from typing import Any

from progan_jax.errors import UserError


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
