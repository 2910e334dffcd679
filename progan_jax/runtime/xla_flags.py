"""XLA flags that must be in place before JAX starts its backends (main.py sets them first).

XLA:CPU 0.10 runs the 2x2 convolutions over space-to-depth inputs of the fused resampling
layers about 3x slower through YNNPACK than through its Eigen path, so the whole train step
is faster with YNNPACK convolutions off (`--mode=benchmark` with the flag and without it; a
value the user sets in XLA_FLAGS wins). The flag only exists in some jaxlib releases, and XLA
aborts on unknown flags, so it is set for those releases only.
"""

import importlib.metadata
import os

from progan_jax.runtime import machine

_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
_JAXLIB_WITH_FLAGS = ("0.10.",)


def runs_on_cpu(dev: str = "/dev") -> bool:
    """Whether JAX will pick the CPU: asked for with JAX_PLATFORMS, or no accelerator here."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return machine.visible_accelerator(dev) is None


def set_default_flags(dev: str = "/dev") -> None:
    """Adds the CPU flags to XLA_FLAGS for a CPU run, unless the user set them already."""
    if not importlib.metadata.version("jaxlib").startswith(_JAXLIB_WITH_FLAGS):
        return
    if not runs_on_cpu(dev):
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    for name, value in _CPU_FLAGS.items():
        if not any(f.startswith(name) for f in flags):
            flags.append(f"{name}={value}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
