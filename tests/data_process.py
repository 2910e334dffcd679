"""One of two processes of tests/test_data_multiprocess.py, on JAX's distributed runtime.

    python tests/data_process.py PORT INDEX MODE CACHE_DIR OUT.npz

Prepares every stage of the synthetic set of `SIZE` 16x16 images in MODE `shard` (each process
its half) or `shared` (the whole set, one cache folder, process 0 builds), reads stage 1's
stream from the start and from a later position, and saves what it saw (and which images it
drew, how many it box-filtered) to OUT.
"""

import logging
import sys

import jax
import numpy as np

from configs import tiny
from progan_jax.data import input_pipeline, sources, synthetic
from progan_jax.training import train_step

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


def _record_calls(module, name: str, record) -> list:
    """`record(*args)` of every call of `module.name` from now on."""
    calls, original = [], getattr(module, name)

    def recorded(*args):
        calls.append(record(*args))
        return original(*args)

    setattr(module, name, recorded)
    return calls


def _count_mismatch_message() -> str:
    """The error when whole-set processes see different counts (here 10 and 11 images)."""
    try:
        input_pipeline.agreed_count(SIZE + jax.process_index(), sources.WHOLE)
    except input_pipeline.DataPreparationError as error:
        return str(error)
    return ""


def _decoded(stream, count: int) -> np.ndarray:
    """The next `count` batches as float32 reals, stacked."""
    return np.stack([train_step.decode_reals(next(stream), np) for _ in range(count)])


def main(port: str, index: str, mode: str, cache_dir: str, out: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, int(index))
    config = _config(mode, cache_dir)
    draws = _record_calls(synthetic, "draw_face", lambda index, *_: index)
    filtered = _record_calls(sources, "box_downsample", lambda images, factor: len(images))
    source = input_pipeline.source_of(config.data, 16, 3)
    input_pipeline.prepare_all_stages(source)
    stream = input_pipeline.stage_train_batches(config, source, 1, 0, BATCH)
    resumed = input_pipeline.stage_train_batches(config, source, 1, RESUME_AT * BATCH, BATCH)
    np.savez(
        out,
        images=input_pipeline.stage_images(source, 2),
        stage1=input_pipeline.stage_images(source, 1),
        stream=_decoded(stream, BATCHES),
        resumed=_decoded(resumed, BATCHES - RESUME_AT),
        draws=np.array(draws, np.int64),
        filtered=sum(filtered),
        mismatch=_count_mismatch_message() if mode == "shared" else "",
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
