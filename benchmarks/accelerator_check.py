"""One check of a GPU or TPU host, as JSON lines: what JAX sees, the train step at paper widths,
an interrupted run that resumes, and an export made on the device.

    python benchmarks/accelerator_check.py                 # a few minutes on one GPU
    python benchmarks/accelerator_check.py --smoke          # tiny networks: the checks' plumbing

Lines, in order:
  devices      platform, device kind and count, memory and peak FLOP/s from the data sheet
  step         stage 5 (128x128) and stage 8 (1024x1024) of configs/celeba_hq1024.py, float32
               and bfloat16, at `--batch_128` / `--batch_1024` images per device: compile time,
               images/s, peak memory per device (XLA's buffers), share of the device's peak
  resume       configs/tiny.py trained without a break and again killed (SIGKILL) after its first
               checkpoint and restarted: both finish, and their final generators agree
  export       --mode=export of that run for the device's own platform
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from progan_jax.runtime import xla_flags  # noqa: E402

xla_flags.set_default_flags()  # before JAX initialises its backends

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import celeba_hq1024, tiny  # noqa: E402
from progan_jax.modes import timing  # noqa: E402
from progan_jax.nets import gan as gan_lib  # noqa: E402
from progan_jax.runtime import accelerators, parallel  # noqa: E402
from progan_jax.training import checkpointing  # noqa: E402


def _print(line: dict) -> None:
    print(json.dumps(line), flush=True)


def device_line() -> dict:
    device = jax.devices()[0]
    spec = accelerators.spec(device)
    line = {"check": "devices", "describe": accelerators.describe()}
    if spec:
        line.update(
            memory_bytes=int(spec.memory_bytes),
            bfloat16_tflops=spec.bfloat16_flops and spec.bfloat16_flops / 1e12,
            float32_tflops=spec.float32_flops and spec.float32_flops / 1e12,
        )
    return line


def step_lines(args) -> list[dict]:
    lines = []
    devices = jax.device_count()
    # --smoke: configs/tiny.py's 8x8 and 16x16 stages in place of 128x128 and 1024x1024.
    cases = [(1, 2), (2, 2)] if args.smoke else [(5, args.batch_128), (8, args.batch_1024)]
    for dtype in ("float32", "bfloat16"):
        for stage, per_device in cases:
            config = tiny.get_config() if args.smoke else celeba_hq1024.get_config()
            config.model.compute_dtype = dtype
            config.model.conv_gradients = "auto"
            config.benchmark.stages = (stage,)
            config.benchmark.batch_size = per_device * devices
            config.benchmark.warmup_steps = 2
            config.benchmark.steps = args.steps
            for line in timing.benchmark_train_step(config):
                lines.append({"check": "step", **line})
                _print(lines[-1])
    return lines


def _main_py(workdir: pathlib.Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "main.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.data.cache_dir={workdir.parent / 'data'}",
        "--config.schedule.batch_sizes=(16,16,16)",
        *overrides,
    ]


def _final_generator(workdir: pathlib.Path):
    config = tiny.get_config()
    _, state = gan_lib.initialize(config, parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        state, progress = checkpointer.restore(state)
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, state.generator_ema_params), progress


def resume_line(scratch: pathlib.Path) -> dict:
    """A whole run, and the same run SIGKILLed once its first checkpoint is down, restarted."""
    whole, broken = scratch / "whole", scratch / "broken"
    start = time.perf_counter()
    subprocess.run(_main_py(whole), check=True, capture_output=True)
    whole_s = time.perf_counter() - start
    process = subprocess.Popen(_main_py(broken), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def saved() -> list[int]:  # finished checkpoints, not Orbax's temporary directories
        folder = broken / "checkpoints"
        return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())

    while process.poll() is None and not saved():
        time.sleep(0.2)
    killed_at = saved()
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(_main_py(broken), check=True, capture_output=True)
    (a, progress_a), (b, progress_b) = _final_generator(whole), _final_generator(broken)
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    difference = max(float(np.max(np.abs(x - y))) for x, y in pairs)
    return {
        "check": "resume",
        "killed_after_checkpoint": killed_at[-1] if killed_at else None,
        "images_shown": [progress_a.images_shown, progress_b.images_shown],
        "max_abs_difference": difference,  # 0 where the device's kernels are deterministic
        "whole_run_s": round(whole_s, 1),
    }


def export_line(scratch: pathlib.Path) -> dict:
    platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    output = scratch / "export"
    start = time.perf_counter()
    result = subprocess.run(
        _main_py(
            scratch / "whole",
            "--mode=export",
            f"--config.export.platforms=('{platform}',)",
            f"--config.export.output={output}",
        ),
        capture_output=True,
        text=True,
    )
    return {
        "check": "export",
        "platform": platform,
        "ok": result.returncode == 0 and (output / "saved_model.pb").exists(),
        "seconds": round(time.perf_counter() - start, 1),
        **({} if result.returncode == 0 else {"stderr": result.stderr[-2000:]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny widths instead of the paper's")
    parser.add_argument("--batch_128", type=int, default=16, help="images per device at 128 px")
    parser.add_argument("--batch_1024", type=int, default=4, help="images per device at 1024 px")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    args = parser.parse_args()
    _print(device_line())
    step_lines(args)
    with tempfile.TemporaryDirectory() as scratch:
        _print(resume_line(pathlib.Path(scratch)))
        _print(export_line(pathlib.Path(scratch)))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
