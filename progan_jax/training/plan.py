"""Compiling the train step for the machine a run targets, before the run: device memory and
FLOPs per stage, and the batch sizes that fit.

    python main.py --config configs/celeba128.py --mode=plan --config.plan.topology=v5e:2x4

A TPU target needs no TPU: libtpu (`pip install -e '.[tpu]'`) describes any slice by its
topology name, and XLA compiles the real TPU program for it, whose memory and cost analyses
are the numbers a run on that slice would see. Without `plan.topology` the plan is for this
machine's devices. A `cuda` target lowers the step for CUDA (which checks that every operation
and the mesh have CUDA lowerings) and counts its FLOPs, but compiling for a GPU needs one, so
a GPU's memory is not known until a run on it: `--mode=plan` on the GPU host compiles for
real.

`schedule.batch_sizes='auto'` uses the same compiled memory analysis to pick each stage's batch.
"""

import dataclasses
import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections

from progan_jax.nets import conv
from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import accelerators, collectives, errors, parallel, stages
from progan_jax.training import config_checks, schedule, train_step


class PlanError(errors.ConfigError):
    """A stage's step does not fit the device memory."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The devices a plan compiles for: attached ones, or a TPU slice described by libtpu."""

    name: str
    devices: list
    spec: accelerators.DeviceSpec | None
    cross_lowering_platform: str | None = None  # compile for real unless set

    @property
    def platform(self) -> str:
        return self.cross_lowering_platform or self.devices[0].platform

    @property
    def device_kind(self) -> str:
        return self.cross_lowering_platform or self.devices[0].device_kind


def tpu_devices(topology: str) -> list:
    """Compile-only devices of a TPU slice, e.g. 'v5e:2x4', 'v4:2x2x1', 'v6e:2x2'."""
    from jax.experimental import topologies

    # libtpu takes a lock file against a second process using the same TPU; a compile-only
    # client uses none, so several plans (and tests) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except (RuntimeError, ValueError) as error:
        raise config_checks.ConfigError(
            f"config.plan.topology: cannot describe TPU topology {topology!r} ({error}). Install "
            "libtpu with `pip install -e '.[tpu]'` and name a slice as libtpu does, e.g. "
            "v5e:2x4, v4:2x2x1, v6e:2x2."
        ) from error


def _chips(topology: str) -> int:
    return math.prod(int(n) for n in topology.split(":", 1)[1].split("x"))


def make_target(topology: str | None) -> Target:
    if topology is None:
        devices = jax.devices()
        return Target(devices[0].platform, devices, accelerators.spec(devices[0]))
    if topology == "cuda":
        devices = jax.devices()
        return Target("cuda", devices, None, cross_lowering_platform="cuda")
    devices = tpu_devices(topology)
    chip = accelerators.SPECS.get(devices[0].device_kind)
    # Some topologies list each TensorCore as a device (v3; v4 without megacore): a share
    # of the chip each.
    per_chip = len(devices) / _chips(topology)
    if chip is not None and per_chip > 1 and devices[0].device_kind != "TPU v3":
        chip = dataclasses.replace(
            chip,
            memory_bytes=chip.memory_bytes / per_chip,
            bfloat16_flops=chip.bfloat16_flops / per_chip,
            float32_flops=chip.float32_flops / per_chip,
        )
    return Target(topology, devices, chip)


def _abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@functools.lru_cache(maxsize=4)
def _state_shapes(gan: gan_lib.GAN):
    return jax.eval_shape(lambda key: gan_lib.create_train_state(gan, key), jax.random.key(0))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A stage's step compiled (or lowered) for a target at one batch size."""

    per_device_batch: int
    compile_s: float
    flops_per_image: float
    memory: dict[str, int] | None = None  # None where the target was only lowered for
    # Where XLA refused to compile for want of memory: the temporaries it said it needed.
    exhausted_bytes: int | None = None

    @property
    def peak_bytes(self) -> int | None:
        """Arguments, outputs not aliased to them (the donated state is), temporaries and the
        program itself: what must fit in the device memory at once."""
        if self.exhausted_bytes is not None:
            return self.exhausted_bytes
        if self.memory is None:
            return None
        m = self.memory
        return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["code"]


_EXHAUSTED = re.compile(r"HLO temporaries \((\d+(?:\.\d+)?)([KMGT])\)")


def _exhausted_bytes(error: Exception) -> int | None:
    """The temporaries' size from XLA's out-of-memory compile error, if it is one."""
    match = _EXHAUSTED.search(str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not match:
        return None
    return int(float(match[1]) * 2 ** (10 * "KMGT".index(match[2]) + 10))


def target_gan(config: ml_collections.ConfigDict, target: Target) -> gan_lib.GAN:
    """The GAN as a run on `target` builds it: 'auto' gradient rules are the target's."""
    if config.model.conv_gradients == "auto":
        config = config.copy_and_resolve_references()
        config.model.conv_gradients = conv.gradient_rules_for(target.platform)
    return gan_lib.GAN.from_config(config)


def compile_step(
    config: ml_collections.ConfigDict, target: Target, stage: int, per_device_batch: int
) -> Compiled:
    """Compiles `stage`'s train step for `target` at `per_device_batch` images per device."""
    gan = target_gan(config, target)
    mesh = parallel.make_mesh(target.devices)
    plan = schedule.Schedule.from_config(config).stage_schedule(
        stage, per_device_batch * len(target.devices)
    )
    res = stages.stage_resolution(stage)
    args = (
        _abstract(_state_shapes(gan), parallel.replicated(mesh)),
        _abstract(
            train_step.batch_shapes(
                plan.batch_size, res, config.model.num_channels, gan.label_size > 0
            ),
            parallel.data_sharded(mesh),
        ),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(mesh)),
    )
    step = train_step.make_train_step(gan, mesh, plan, train_step.even_frequencies(gan))
    start = time.perf_counter()
    if target.cross_lowering_platform:
        lowered = step.trace(*args).lower(lowering_platforms=(target.cross_lowering_platform,))
        # The lowered module's cost is the whole batch's (before partitioning).
        flops = (lowered.cost_analysis() or {}).get("flops", math.nan) / plan.batch_size
        return Compiled(per_device_batch, time.perf_counter() - start, flops, None)
    try:
        compiled = step.lower(*args).compile()
    except jax.errors.JaxRuntimeError as error:
        exhausted = _exhausted_bytes(error)
        if exhausted is None:
            raise
        return Compiled(per_device_batch, time.perf_counter() - start, math.nan, None, exhausted)
    seconds = time.perf_counter() - start
    # A device's program: its cost is one device's share of the batch.
    flops = (compiled.cost_analysis() or {}).get("flops", math.nan) / per_device_batch
    return Compiled(per_device_batch, seconds, flops, memory_of(compiled))


def memory_of(compiled: jax.stages.Compiled) -> dict[str, int]:
    """A compiled program's buffers per device, as XLA assigned them."""
    stats = compiled.memory_analysis()
    return {
        "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }


def memory_budget(config: ml_collections.ConfigDict, target: Target) -> float | None:
    """Bytes a step may take on one device: its memory less `plan.memory_margin`."""
    if target.spec is None:
        return None
    return target.spec.memory_bytes * (1.0 - config.plan.memory_margin)


def valid_per_device_batches(config: ml_collections.ConfigDict, limit: int) -> list[int]:
    """Per-device batches up to `limit` that minibatch stddev allows, smallest first."""
    group = config.model.mbstd_group_size
    return [b for b in range(1, limit + 1) if config_checks.minibatch_stddev_accepts(b, group)]


def largest_fitting(
    compile_at: Callable[[int], Compiled], candidates: list[int], budget: float
) -> Compiled | None:
    """The compiled step at the largest candidate batch whose peak fits `budget`, or None.

    Peak memory is nearly linear in the batch (parameters and optimizer state are fixed,
    activations grow with it): the line through the smallest and largest candidates' peaks
    predicts the answer, and compiles walk down from the prediction to the first that fits.
    """
    largest = compile_at(candidates[-1])
    if largest.peak_bytes <= budget:
        return largest
    smallest = compile_at(candidates[0])
    if smallest.peak_bytes > budget or len(candidates) == 1:
        return None
    per_image = (largest.peak_bytes - smallest.peak_bytes) / (
        largest.per_device_batch - smallest.per_device_batch
    )
    predicted = smallest.per_device_batch + (budget - smallest.peak_bytes) / per_image
    for batch in reversed([b for b in candidates[1:-1] if b <= predicted]):
        compiled = compile_at(batch)
        if compiled.peak_bytes <= budget:
            return compiled
    return smallest


def stage_report(
    config: ml_collections.ConfigDict, target: Target, stage: int, compiled: Compiled
) -> dict:
    """The JSON line of one stage's plan."""
    devices = len(target.devices)
    budget = memory_budget(config, target)
    fading = schedule.Schedule.from_config(config).fades_in(stage)
    line = {
        "stage": stage,
        "resolution": stages.stage_resolution(stage),
        # alpha is an input of the step, so the fade and the stabilization run one program
        "phases": ["fade", "stabilize"] if fading else ["stabilize"],
        "target": target.name,
        "platform": target.platform,
        "device_kind": target.device_kind,
        "devices": devices,
        "compute_dtype": config.model.compute_dtype,
        "global_batch": compiled.per_device_batch * devices,
        "per_device_batch": compiled.per_device_batch,
        "compile_s": round(compiled.compile_s, 1),
        "gflop_per_image": _finite(_significant(compiled.flops_per_image / 1e9)),
    }
    if compiled.memory is not None:
        line.update(
            argument_bytes=compiled.memory["argument"],
            temp_bytes=compiled.memory["temp"],
            peak_bytes=compiled.peak_bytes,
        )
    if compiled.exhausted_bytes is not None:
        line.update(temp_bytes=compiled.exhausted_bytes, compile_error="RESOURCE_EXHAUSTED")
    if target.spec is not None:
        line.update(
            device_memory_bytes=int(target.spec.memory_bytes),
            fits=compiled.peak_bytes is not None and compiled.peak_bytes <= budget,
        )
    peak_flops = target.spec and target.spec.peak_flops(config.model.compute_dtype)
    if peak_flops:
        utilisation = config.plan.assumed_utilisation
        line.update(
            peak_tflops_per_device=round(peak_flops / 1e12, 1),
            assumed_utilisation=utilisation,
            imgs_per_s_at_assumed=_finite(
                _significant(utilisation * peak_flops * devices / compiled.flops_per_image)
            ),
        )
    return line


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _finite(value: float) -> float | None:
    """JSON has no NaN: a figure a refused compile could not give is null."""
    return value if math.isfinite(value) else None


def planned_stages(config: ml_collections.ConfigDict) -> list[int]:
    return stages.chosen_or_all(config.plan.stages, config.model.resolution)


def plan(config: ml_collections.ConfigDict) -> Iterator[dict]:
    """One JSON line per stage at the config's batch sizes (with 'auto': the largest that
    fit); then a PlanError naming every stage that does not fit and the largest batch that
    would."""
    target = make_target(config.plan.topology)
    devices = len(target.devices)
    config_checks.validate(config, devices, jax.process_count(), reads_data=False)
    budget = memory_budget(config, target)
    auto = schedule.is_auto(config.schedule.batch_sizes)
    if auto and budget is None:
        raise config_checks.ConfigError(
            f"config.schedule.batch_sizes: 'auto' needs the memory of {target.device_kind}, "
            "which a plan cannot know without compiling for it; give the batch sizes."
        )
    too_big = []
    for stage in planned_stages(config):
        compile_at = functools.cache(functools.partial(compile_step, config, target, stage))
        if auto:
            candidates = auto_candidates(config)
            compiled = largest_fitting(compile_at, candidates, budget) or compile_at(candidates[0])
        else:
            compiled = compile_at(config.schedule.batch_sizes[stage] // devices)
        line = stage_report(config, target, stage, compiled)
        yield line
        if line.get("fits") is False:
            fitting = largest_fitting(
                compile_at, valid_per_device_batches(config, compiled.per_device_batch), budget
            )
            largest = (
                f"the largest that fits is {fitting.per_device_batch * devices}"
                if fitting
                else "not even the smallest batch fits"
            )
            too_big.append(
                f"stage {stage} ({line['resolution']}x{line['resolution']}) at batch "
                f"{line['global_batch']} needs {compiled.peak_bytes / 1e9:.2f} GB per device, "
                f"more than {budget / 1e9:.2f} GB ({target.device_kind} memory less a "
                f"{config.plan.memory_margin:.0%} margin); {largest}"
            )
    if too_big:
        raise PlanError(
            "config.schedule.batch_sizes: " + "; ".join(too_big) + ". Lower those batches, "
            "set --config.schedule.batch_sizes=auto, or use model.compute_dtype=bfloat16."
        )


def auto_candidates(config: ml_collections.ConfigDict) -> list[int]:
    candidates = valid_per_device_batches(config, config.schedule.max_batch_per_device)
    if not candidates:
        raise config_checks.ConfigError(
            "config.schedule.max_batch_per_device: allows no batch that minibatch stddev "
            f"accepts (at least 2 per device), got {config.schedule.max_batch_per_device}"
        )
    return candidates


def resolve_batch_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with `schedule.batch_sizes='auto'` replaced by each stage's largest global
    batch (a multiple of the device count, at most `schedule.max_batch_per_device` per device)
    whose compiled step fits the device memory with the plan's margin. Unchanged otherwise.

    Every process compiles the same programs, and process 0's choice is the one taken.
    """
    if not schedule.is_auto(config.schedule.batch_sizes):
        return config
    target = make_target(None)
    budget = memory_budget(config, target)
    if budget is None:
        raise config_checks.ConfigError(
            f"config.schedule.batch_sizes: 'auto' needs the device memory, unknown for "
            f"{target.device_kind}; give the batch sizes."
        )
    devices = len(target.devices)
    candidates = auto_candidates(config)
    chosen = []
    for stage in range(stages.num_stages(config.model.resolution)):
        fitting = largest_fitting(
            functools.partial(compile_step, config, target, stage), candidates, budget
        )
        if fitting is None:
            res = stages.stage_resolution(stage)
            raise PlanError(
                f"config.schedule.batch_sizes: no batch of stage {stage} ({res}x{res}) fits "
                f"{budget / 1e9:.2f} GB per device; use fewer feature maps or bfloat16."
            )
        chosen.append(fitting.per_device_batch * devices)
        logging.info(
            "Stage %d: batch %d (%d per device) fits: %.2f of %.2f GB per device.",
            stage,
            chosen[-1],
            fitting.per_device_batch,
            fitting.peak_bytes / 1e9,
            budget / 1e9,
        )
    chosen = collectives.from_process_0(chosen)
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.schedule.batch_sizes = tuple(chosen)
    return resolved
