"""What accelerators this machine has, read from its device files without starting JAX
(XLA's flags must be chosen before it starts)."""

import glob

# Device files that mean the machine has an accelerator: (pattern, what, the extra to install).
ACCELERATOR_FILES = (
    ("nvidia[0-9]*", "an NVIDIA GPU", "cuda12"),
    ("accel[0-9]*", "a TPU", "tpu"),
    ("vfio/[0-9]*", "a TPU", "tpu"),
)


def visible_accelerator(dev: str = "/dev") -> tuple[str, str] | None:
    """(what, extra) for the first accelerator whose device files exist under `dev`."""
    for pattern, what, extra in ACCELERATOR_FILES:
        if glob.glob(f"{dev}/{pattern}"):
            return what, extra
    return None
