"""The device mesh and batches laid out on it (progan_jax.runtime.parallel)."""

import numpy as np

from progan_jax.runtime import parallel


def test_global_batch_gives_each_device_its_own_rows():
    mesh = parallel.make_mesh()
    rows = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    batch = parallel.global_batch({"images": rows, "mirror": rows[:, 0] > 8}, mesh)
    for shard in batch["images"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), rows[shard.index])
        assert shard.data.shape == (2, 2)
    np.testing.assert_array_equal(np.asarray(batch["mirror"]), rows[:, 0] > 8)
