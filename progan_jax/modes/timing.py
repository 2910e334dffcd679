"""Speed of the train step per stage, as JSON lines: compile time, step time, images/s.

    python main.py --config configs/bench_reference.py --mode=benchmark

Compile time is what a user waits at a stage change: tracing, lowering and XLA compilation.
Step time is the median of `benchmark.steps` timed steps after `benchmark.warmup_steps`.

Each line also sets the step against this machine's float32 matrix-product rate (`gemm_peak`):
the fraction of it the step sustains, and `ceiling_imgs_per_s`, the images/s of a step with the
same FLOPs running entirely at that rate. Nearly all of the step's FLOPs are convolutions, and
their count is WGAN-GP's minimum (the critic's update costs about 12 critic forwards: real and
fake passes with their backward, the penalty's pass, input gradient and double backward), so
the ceiling bounds any float32 implementation of the same step on the same machine.
"""

import contextlib
import statistics
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from progan_jax.data import input_pipeline
from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import accelerators, parallel, stages
from progan_jax.training import config_checks, schedule, train_step
from progan_jax.training import plan as plan_lib


def benchmark_stages(config: ml_collections.ConfigDict) -> list[int]:
    return stages.chosen_or_all(config.benchmark.stages, config.model.resolution)


def _block(tree) -> None:
    jax.block_until_ready(tree)


def median_seconds(fn, *args, warmup: int, runs: int) -> float:
    """Median wall time of `runs` calls of `fn(*args)` (outputs ready) after `warmup` calls."""
    for _ in range(warmup):
        _block(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Products the size of a convolution layer's: square, and tall-skinny as im2col makes them.
_GEMM_SHAPES = ((2048, 2048, 2048), (8192, 1152, 128))


def gemm_peak(shapes=_GEMM_SHAPES) -> float:
    """FLOP/s of this machine's fastest float32 matrix product among `shapes` (m, k, n)."""
    rates = []
    for m, k, n in shapes:
        a = jnp.ones((m, k), jnp.float32)
        b = jnp.ones((k, n), jnp.float32)
        seconds = median_seconds(jax.jit(jnp.matmul), a, b, warmup=2, runs=5)
        rates.append(2 * m * k * n / seconds)
    return max(rates)


def random_batch(
    config: ml_collections.ConfigDict, stage: int, batch: int, mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
    """A global batch of random uint8 images (half of them to be mirrored) on `mesh`, built
    from this process's rows."""
    classes = config.model.label_size
    shapes = train_step.batch_shapes(
        batch // jax.process_count(),
        stages.stage_resolution(stage),
        config.model.num_channels,
        classes > 0,
    )
    rng = np.random.default_rng(stage)
    local = {
        "images": rng.integers(0, 256, shapes["images"].shape, np.uint8),
        "mirror": rng.integers(0, 2, shapes["mirror"].shape).astype(bool),
    }
    if classes:
        local["labels"] = rng.integers(0, classes, shapes["labels"].shape).astype(np.int32)
    return parallel.global_batch(local, mesh)


def benchmark_schedule(config: ml_collections.ConfigDict, stage: int) -> schedule.StageSchedule:
    """The stage's step at `benchmark.batch_size` (if set) instead of the schedule's batch."""
    return schedule.Schedule.from_config(config).stage_schedule(stage, config.benchmark.batch_size)


def mid_fade(plan: schedule.StageSchedule, alpha: float) -> int:
    """The images-shown count at which the stage's alpha is `alpha` (if it fades in)."""
    return plan.fade_start + round(alpha * (plan.fade_end - plan.fade_start))


def benchmark_train_step(config: ml_collections.ConfigDict) -> Iterator[dict]:
    config_checks.validate(config, jax.device_count(), jax.process_count(), reads_data=False)
    mesh = parallel.make_mesh()
    gan, state = gan_lib.initialize(config, mesh)
    peak = gemm_peak()
    for stage in benchmark_stages(config):
        plan = benchmark_schedule(config, stage)
        batch = plan.batch_size
        res = stages.stage_resolution(stage)
        reals = random_batch(config, stage, batch, mesh)
        shown = jax.device_put(
            np.int32(mid_fade(plan, config.benchmark.alpha)), parallel.replicated(mesh)
        )

        start = time.perf_counter()
        frequencies = train_step.even_frequencies(gan)
        step = train_step.make_train_step(gan, mesh, plan, frequencies)
        step = step.lower(state, reals, shown).compile()
        compile_s = time.perf_counter() - start

        times = []
        for i in range(config.benchmark.warmup_steps + config.benchmark.steps):
            start = time.perf_counter()
            state, _, metrics = step(state, reals, shown)
            _block((state, metrics))
            if i >= config.benchmark.warmup_steps:
                times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        # XLA's count; on CPU the weight-gradient loops are counted once, so it is a lower bound
        # (and the ceiling below an upper bound).
        flops = (step.cost_analysis() or {}).get("flops", float("nan"))
        compiled = plan_lib.Compiled(
            batch // mesh.devices.size, compile_s, flops, plan_lib.memory_of(step)
        )
        yield {
            "stage": stage,
            "resolution": res,
            "batch": batch,
            "devices": mesh.devices.size,
            "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "compute_dtype": config.model.compute_dtype,
            "peak_bytes_per_device": compiled.peak_bytes,
            **_of_device_peak(flops / step_s, config.model.compute_dtype),
            "compile_s": round(compile_s, 2),
            "step_ms": round(step_s * 1e3, 1),
            "imgs_per_s": round(batch / step_s, 2),
            "tflops_per_s": round(flops / step_s / 1e12, 3),
            "gemm_peak_tflops_per_s": round(peak / 1e12, 3),
            "of_gemm_peak": round(flops / step_s / peak, 3),
            "ceiling_imgs_per_s": round(batch * peak / flops, 2),
        }


def _of_device_peak(flops_per_s: float, compute_dtype: str) -> dict:
    """The step's FLOP/s per device against the device's data-sheet peak, where known."""
    spec = accelerators.spec(jax.devices()[0])
    peak = spec and spec.peak_flops(compute_dtype)
    return {"of_device_peak": round(flops_per_s / peak, 3)} if peak else {}


def benchmark_input(config: ml_collections.ConfigDict) -> Iterator[dict]:
    """Images/s of this process's input stream per stage (uint8 batches with their mirror
    flags, as they leave the host), after the one-off decode and box-filter (prepare_s)."""
    config_checks.validate(config, jax.device_count(), jax.process_count())
    model, bench = config.model, config.benchmark
    run_schedule = schedule.Schedule.from_config(config)
    source = input_pipeline.source_of(config.data, model.resolution, model.num_channels)
    for stage in benchmark_stages(config):
        batch = bench.batch_size or run_schedule.batch_size(stage)
        start = time.perf_counter()
        input_pipeline.stage_images(source, stage)
        prepare_s = time.perf_counter() - start
        with contextlib.closing(
            input_pipeline.stage_train_batches(config, source, stage, 0, batch)
        ) as stream:
            for _ in range(bench.warmup_steps):
                next(stream)
            start = time.perf_counter()
            for _ in range(bench.input_batches):
                next(stream)
            elapsed = time.perf_counter() - start
        yield {
            "source": source.name,
            "stage": stage,
            "resolution": stages.stage_resolution(stage),
            "batch": batch,
            "prepare_s": round(prepare_s, 2),
            "imgs_per_s": round(bench.input_batches * batch / jax.process_count() / elapsed, 1),
        }
