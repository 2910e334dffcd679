"""The train step side by side with the tutorial's PyTorch ProGAN at the same widths, in turn.

    python benchmarks/compare_reference.py --rounds 3 --stages 1,2,3,4,5 \
        --torch-python /path/to/torch-venv/bin/python
    python benchmarks/compare_reference.py --rounds 3 --stages 1,2,3 --channels 64 \
        --batches 64,64,32 --torch-python /path/to/torch-venv/bin/python

The reference is not part of this project: pass its path with `--reference` (default
`../shared/reference/torch_seed_progan.py` beside the checkout, where it exists). It is a plain
PyTorch ProGAN with a timing harness (`--stage --batch --z-dim --channels`, one JSON line).

Each round runs `main.py --mode=benchmark` with configs/bench_reference.py at the given widths
(compile cache off, so compile_s is a cold compile) and then the reference per stage; both time
the median of several steps after warm-up. Rounds alternate the two, so a drift in the
machine's speed hits both. Prints every measurement, then one JSON line per stage with the
medians over rounds, the speed-up (JAX images/s over the reference's), and the ceiling
speed-up: the most a step with JAX's FLOPs could reach at this machine's float32 GEMM rate.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "torch_seed_progan.py"


def _json_lines(command: list[str]) -> list[dict]:
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def jax_round(args: argparse.Namespace, batches: dict[int, int]) -> dict[int, dict]:
    """Widths as the reference's: `channels` feature maps, halving from 64x64 on."""
    per_stage = tuple(batches.get(s, 16) for s in range(max(batches) + 1))
    command = [
        sys.executable,
        "main.py",
        "--config=configs/bench_reference.py",
        "--mode=benchmark",
        "--compilation_cache=",
        f"--config.model.latent_size={args.z_dim}",
        f"--config.model.fmap_base={16 * args.channels}",
        f"--config.model.fmap_max={args.channels}",
        f"--config.schedule.batch_sizes={per_stage}",
        f"--config.benchmark.stages=({','.join(map(str, batches))},)",
    ]
    return {line["stage"]: line for line in _json_lines(command)}


def torch_round(args: argparse.Namespace, batches: dict[int, int]) -> dict[int, dict]:
    return {
        stage: _json_lines(
            [
                args.torch_python,
                str(args.reference),
                f"--stage={stage}",
                f"--batch={batch}",
                f"--z-dim={args.z_dim}",
                f"--channels={args.channels}",
            ]
        )[-1]
        for stage, batch in batches.items()
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=pathlib.Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", default="3,4,5")
    parser.add_argument("--batches", default="16", help="one batch, or one per stage")
    parser.add_argument("--z-dim", type=int, default=128)
    parser.add_argument("--channels", type=int, default=128)
    args = parser.parse_args()
    if not args.reference.is_file():
        parser.error(
            f"no reference at {args.reference}: pass --reference /path/to/torch_seed_progan.py"
        )
    return args


def main() -> None:
    args = parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    given = [int(b) for b in args.batches.split(",")]
    batches = dict(zip(stages, given * len(stages) if len(given) == 1 else given, strict=True))

    rounds = []
    for index in range(args.rounds):
        ours, theirs = jax_round(args, batches), torch_round(args, batches)
        for stage in stages:
            print(
                json.dumps({"round": index, "jax": ours[stage], "torch": theirs[stage]}), flush=True
            )
        rounds.append((ours, theirs))

    for stage in stages:

        def median(side: int, field: str, stage=stage) -> float:
            return statistics.median(r[side][stage][field] for r in rounds)

        jax_ips, torch_ips = median(0, "imgs_per_s"), median(1, "imgs_per_s")
        summary = {
            "stage": stage,
            "resolution": rounds[0][0][stage]["resolution"],
            "batch": batches[stage],
            "channels": args.channels,
            "rounds": args.rounds,
            "jax_step_ms": median(0, "step_ms"),
            "jax_compile_s": median(0, "compile_s"),
            "jax_imgs_per_s": jax_ips,
            "torch_imgs_per_s": torch_ips,
            "speedup": round(jax_ips / torch_ips, 2),
            "jax_of_gemm_peak": median(0, "of_gemm_peak"),
            # What a step with JAX's FLOPs would reach at this machine's float32 GEMM rate.
            "ceiling_speedup": round(median(0, "ceiling_imgs_per_s") / torch_ips, 2),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
