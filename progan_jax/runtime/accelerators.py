"""What the run is running on: the devices JAX sees, what they hold and compute, and whether
they are the ones the machine has.

`pip install -e .` installs the CPU jaxlib, and JAX on a GPU or TPU host without its plugin
falls back to the CPU after one warning, so a pod job could train for days on the host's cores.
`check_platform` stops such a run unless the CPU is asked for.

`SPECS` gives each device kind's memory and dense peak FLOP/s from its maker's data sheet
(per chip; GPUs at their SXM clocks, without sparsity). The float32 figure is what JAX's default
precision runs float32 convolutions at: one bfloat16 pass on a TPU's matrix units (so the
bfloat16 figure), TF32 on NVIDIA's tensor cores since Ampere (plain FP32 on Volta).
"""

import dataclasses
import logging
import os

import jax

from progan_jax.runtime import machine
from progan_jax.runtime.errors import UserError

GB = 1e9
GIB = 2**30
TFLOPS = 1e12


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    memory_bytes: float
    bfloat16_flops: float | None  # dense peak FLOP/s (None: not known)
    float32_flops: float | None  # at JAX's default float32 precision (module docstring)
    source: str

    def peak_flops(self, compute_dtype: str) -> float | None:
        return self.bfloat16_flops if compute_dtype == "bfloat16" else self.float32_flops


def _tpu(memory_gib: float, bf16_tflops: float, source: str) -> DeviceSpec:
    return DeviceSpec(memory_gib * GIB, bf16_tflops * TFLOPS, bf16_tflops * TFLOPS, source)


# Keys are `jax.Device.device_kind` as JAX reports it.
SPECS = {
    "TPU v3": _tpu(16, 61.5, "cloud.google.com/tpu/docs/v3: 123 TFLOP/s, 32 GiB per 2-core chip"),
    "TPU v4": _tpu(32, 275, "cloud.google.com/tpu/docs/v4"),
    # 15.75 GiB of v5e's 16 are what XLA lets a program use (its out-of-memory errors say so).
    "TPU v5 lite": _tpu(15.75, 197, "cloud.google.com/tpu/docs/v5e"),
    "TPU v5": _tpu(95, 459, "cloud.google.com/tpu/docs/v5p"),
    "TPU v6 lite": _tpu(32, 918, "cloud.google.com/tpu/docs/v6e"),
    "Tesla V100-SXM2-16GB": DeviceSpec(16 * GIB, 125 * TFLOPS, 15.7 * TFLOPS, "V100 data sheet"),
    "NVIDIA A100-SXM4-40GB": DeviceSpec(40 * GIB, 312 * TFLOPS, 156 * TFLOPS, "A100 data sheet"),
    "NVIDIA A100-SXM4-80GB": DeviceSpec(80 * GIB, 312 * TFLOPS, 156 * TFLOPS, "A100 data sheet"),
    "NVIDIA H100 80GB HBM3": DeviceSpec(80 * GB, 989 * TFLOPS, 495 * TFLOPS, "H100 data sheet"),
    "NVIDIA H200": DeviceSpec(141 * GB, 989 * TFLOPS, 495 * TFLOPS, "H200 data sheet"),
}


def _host_share(devices: int) -> DeviceSpec:
    """A CPU device's share of the host's memory; its FLOP/s vary too much to tabulate."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceSpec(memory / devices, None, None, "the host's physical memory")


def spec(device: jax.Device) -> DeviceSpec | None:
    """The device's data-sheet figures, with the memory it reports itself where it can."""
    if device.platform == "cpu":
        return _host_share(jax.local_device_count())
    known = SPECS.get(device.device_kind)
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # compile-only devices and some CPU clients have no memory statistics
        limit = None
    if limit and known:
        return dataclasses.replace(known, memory_bytes=float(limit))
    return known


def describe() -> str:
    """One line: platform, device kind and count, processes."""
    devices = jax.devices()
    return (
        f"JAX {jax.__version__} on {devices[0].platform}: {len(devices)} x "
        f"{devices[0].device_kind} ({jax.local_device_count()} local), "
        f"process {jax.process_index()} of {jax.process_count()}"
    )


class AcceleratorUnusedError(UserError, RuntimeError):
    """JAX runs on the CPU of a machine with a GPU or TPU; the message names the extra."""


def check_platform(allow_cpu: bool, dev: str = "/dev") -> None:
    """Logs what JAX runs on; stops a CPU run on a machine with an accelerator unless
    `allow_cpu`."""
    logging.info("%s", describe())
    if jax.default_backend() != "cpu" or allow_cpu:
        return
    found = machine.visible_accelerator(dev)
    if found:
        what, extra = found
        raise AcceleratorUnusedError(
            f"This machine has {what}, but JAX is running on the CPU: its plugin is missing or "
            f"failed to load (see the warnings above). Install it with "
            f"`pip install -e '.[{extra}]'`, or pass --allow_cpu to train on the CPU on purpose."
        )
