"""The device mesh and batches laid out on it (progan_jax.parallel)."""

import numpy as np
import pytest

from progan_jax import parallel


def test_global_batch_must_divide_by_devices():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="does not divide by the 8 devices"):
        parallel.global_batch(np.zeros((6, 4, 4, 3), np.float32), mesh)
