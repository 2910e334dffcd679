"""One of two processes of tests/test_data_multiprocess.py, on JAX's distributed runtime.

    python tests/data_process.py PORT INDEX MODE CACHE_DIR OUT.npz

Prepares the synthetic set of `SIZE` 16x16 images in MODE `shard` (each process its half) or
`shared` (the whole set, one cache folder, process 0 builds), reads stage 1's stream from the
start and from a later position, and saves what it saw (and how many images it drew) to OUT.
"""

import logging
import sys

import jax
import numpy as np

from configs import tiny
from progan_jax.data import input_pipeline, sources, synthetic

SIZE = 10
BATCH = 4  # global: two rows per process
BATCHES = 6  # from the start: more than an epoch of a shard
RESUME_AT = 3  # the stream restarted at this batch


def _config(mode: str, cache_dir: str):
    config = tiny.get_config()
    config.data.synthetic_size = SIZE
    config.data.cache_dir = cache_dir
    config.data.shared_cache = mode == "shared"
    if mode == "shared":
        config.data.shard_per_process = False  # the default with two processes is shards
    return config


def _count_draws() -> list[int]:
    draws, draw = [], synthetic.draw_face

    def counted(*args):
        draws.append(args[0])
        return draw(*args)

    synthetic.draw_face = counted
    return draws


def _count_mismatch_message() -> str:
    """The error when whole-set processes see different counts (here 10 and 11 images)."""
    try:
        input_pipeline.agreed_count(SIZE + jax.process_index(), sources.WHOLE)
    except input_pipeline.DataPreparationError as error:
        return str(error)
    return ""


def main(port: str, index: str, mode: str, cache_dir: str, out: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, int(index))
    config, draws = _config(mode, cache_dir), _count_draws()
    data = config.data
    stream = input_pipeline.stage_batches(config, 1, 0, BATCH)
    resumed = input_pipeline.stage_batches(config, 1, RESUME_AT * BATCH, BATCH)
    np.savez(
        out,
        images=input_pipeline.stage_images(data, 16, 3, 2),
        stage1=input_pipeline.stage_images(data, 16, 3, 1),
        stream=np.stack([next(stream) for _ in range(BATCHES)]),
        resumed=np.stack([next(resumed) for _ in range(BATCHES - RESUME_AT)]),
        draws=np.array(draws, np.int64),
        mismatch=_count_mismatch_message() if mode == "shared" else "",
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
