"""Stage arithmetic: the progressive networks grow from 4x4 by doubling, one stage a step.

The bottom of the tree: the data pipeline, the schedule and the networks all count stages, and
none of them should have to import another to do it.
"""

import math


def num_stages(resolution: int) -> int:
    """Stages from 4x4 up to `resolution` (a power of two >= 4)."""
    return int(math.log2(resolution)) - 1


def stage_resolution(stage: int) -> int:
    """The side of stage `stage`'s images: 4, 8, 16, ..."""
    return 4 * 2**stage


def chosen_or_all(chosen: list[int] | tuple[int, ...] | None, resolution: int) -> list[int]:
    """The `chosen` stages (a plan's or a benchmark's), or every stage up to `resolution`."""
    return list(range(num_stages(resolution))) if chosen is None else list(chosen)
