"""Stage arithmetic (progan_jax.runtime.stages) against hand-computed values."""

import pytest

from progan_jax.runtime import stages


@pytest.mark.parametrize("resolution, count", [(4, 1), (8, 2), (128, 6), (1024, 9)])
def test_a_run_has_one_stage_per_doubling_from_4x4(resolution, count):
    assert stages.num_stages(resolution) == count
    assert stages.stage_resolution(count - 1) == resolution


def test_stage_resolutions_double():
    assert [stages.stage_resolution(s) for s in range(5)] == [4, 8, 16, 32, 64]


def test_chosen_stages_or_all_of_them():
    assert stages.chosen_or_all(None, 32) == [0, 1, 2, 3]
    assert stages.chosen_or_all((2,), 32) == [2]
