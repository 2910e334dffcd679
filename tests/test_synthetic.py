"""The built-in synthetic faces (progan_jax.data.synthetic)."""

import numpy as np

from progan_jax.data import sources, synthetic


def test_synthetic_faces_are_deterministic_and_varied():
    a = synthetic.draw_faces(6, 32)
    np.testing.assert_array_equal(a, synthetic.draw_faces(6, 32))
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    assert len({im.tobytes() for im in a}) == 6
    assert not np.array_equal(a, synthetic.draw_faces(6, 32, seed=1))
    # Any power of two, and the same face at another resolution is the same drawing.
    big = synthetic.draw_face(3, 64)
    assert np.abs(sources.box_downsample(big[None], 2)[0].astype(int) - a[3]).mean() < 8
