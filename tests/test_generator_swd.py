"""SWD of the generator against the reals (progan_jax.metrics.generator_swd)."""

import numpy as np
import pytest

from progan_jax.metrics import generator_swd, swd


@pytest.mark.parametrize("mirror", [False, True])
def test_described_reals_are_mirrored_only_with_mirror_augment(mirror, monkeypatch):
    """Official evaluation mirrors reals (a coin per image) when training mirrored them."""
    reals = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    indices = np.arange(0, 40, 2)  # in order, so the described images come in this order
    described = []
    monkeypatch.setattr(
        swd, "describe", lambda batches, *_, **__: described.extend(np.concatenate(list(batches)))
    )
    generator_swd.describe_reals(reals, indices, 8, 1, mirror=mirror)  # batches of 8, 8, 4
    got, originals = np.stack(described), reals[indices]
    same = (got == originals).all(axis=(1, 2, 3))
    flipped = (got == originals[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | flipped).all()
    if mirror:
        assert 0 < flipped.sum() < len(indices)
    else:
        assert not flipped.any()
