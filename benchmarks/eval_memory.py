"""Time and peak memory of the evaluation metrics at 256x256, one subprocess per measurement.

    python benchmarks/eval_memory.py                      # the four cases below (14 min, 2 cores)
    python benchmarks/eval_memory.py --cases=ms_ssim:2000,ms_ssim:20000

Each case runs `evaluate.evaluate` (the `--mode=evaluate` path) on an untrained generator
(`checkpoint_images_shown=untrained`) of a narrow 256x256 network built from configs/tiny.py, in
a fresh process so that peak RSS (`ru_maxrss`) belongs to that case alone, and prints one JSON
line: seconds of the `evaluate` call (compilation included), the process's peak RSS, and the
metrics. Case names:

    ms_ssim:N            evals.evaluate=(ms_ssim,), evals.ms_ssim.images=N
    swd:N                evals.evaluate=(swd,), evals.swd.images=N, with the noise floor
    evaluate:N:M         both in one run, N SWD images and M MS-SSIM images

The synthetic data set (`--synthetic_size` faces at 256x256, drawn once into `--cache_dir`) is
prepared before any case is timed. With fewer than 2 N images the noise floor's second draw of
reals is a re-draw of the same set (`generator_swd.real_swd_draws`), not a disjoint one.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import ml_collections

DEFAULT_CASES = "ms_ssim:2000,ms_ssim:20000,swd:4096,evaluate:4096:20000"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated, see above")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--fmap_base", type=int, default=128, help="smallest valid at 256: 128")
    parser.add_argument("--fmap_max", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64, help="evals.batch_size")
    parser.add_argument("--synthetic_size", type=int, default=4096)
    parser.add_argument(
        "--cache_dir",
        default=os.path.join(tempfile.gettempdir(), "progan_eval_memory"),
        help="decoded synthetic images (kept between runs)",
    )
    parser.add_argument("--run_case", help=argparse.SUPPRESS)  # set for the subprocesses
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """configs/tiny.py at `args.resolution`, narrow, synthetic faces, untrained generator."""
    from configs import tiny
    from progan_jax.runtime import stages
    from progan_jax.training import config_checks

    config = tiny.get_config()
    count = stages.num_stages(args.resolution)
    config.model.resolution = args.resolution
    config.model.fmap_base = args.fmap_base
    config.model.fmap_max = args.fmap_max
    config.optimizer.learning_rates = (2e-3,) * count
    config.schedule.batch_sizes = (8,) * count
    config.data.synthetic_size = args.synthetic_size
    config.data.cache_dir = args.cache_dir
    config.checkpoint_images_shown = "untrained"
    config.evals.batch_size = args.batch_size
    config.evals.swd.noise_floor = True
    config_checks.validate(config, devices=1)
    return config


def configure_case(config: ml_collections.ConfigDict, case: str) -> None:
    kind, *counts = case.split(":")
    counts = [int(c) for c in counts]
    if kind == "ms_ssim" and len(counts) == 1:
        config.evals.evaluate, config.evals.ms_ssim.images = ("ms_ssim",), counts[0]
    elif kind == "swd" and len(counts) == 1:
        config.evals.evaluate, config.evals.swd.images = ("swd",), counts[0]
    elif kind == "evaluate" and len(counts) == 2:
        config.evals.evaluate = ("swd", "ms_ssim")
        config.evals.swd.images, config.evals.ms_ssim.images = counts
    else:
        raise ValueError(f"unknown case {case!r}; use ms_ssim:N, swd:N or evaluate:N:M")


def run_case(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""
    from progan_jax.modes import evaluate

    config = make_config(args)
    configure_case(config, args.run_case)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        results = evaluate.evaluate(config, workdir)
        seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "case": args.run_case,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "results": results,
    }


def prepare_data(args: argparse.Namespace) -> None:
    """Draws and caches the synthetic faces once, outside any timed case."""
    from progan_jax.data import sources

    config = make_config(args)
    start = time.perf_counter()
    images = sources.resolve(
        config.data, config.model.resolution, config.model.num_channels
    ).load_images()
    print(
        json.dumps(
            {
                "data": f"{len(images.images)} synthetic faces at {args.resolution}x"
                f"{args.resolution} in {args.cache_dir}",
                "seconds": round(time.perf_counter() - start, 1),
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.run_case:
        print(json.dumps(run_case(args)), flush=True)
        return
    prepare_data(args)
    for case in args.cases.split(","):
        subprocess.run([sys.executable, __file__, *argv, f"--run_case={case}"], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
