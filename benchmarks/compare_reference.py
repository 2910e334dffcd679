"""The train step side by side with the PyTorch reference at the same widths, rounds in turn.

    python benchmarks/compare_reference.py --rounds 3 --stages 3,4,5 \
        [--torch-python /path/to/venv-with-torch/bin/python]

Each round runs `main.py --mode=benchmark` with configs/bench_reference.py (compile cache off,
so compile_s is a cold compile) and then `benchmarks/torch_reference.py` per stage; both time
the median of several steps after warm-up at batch 16. Rounds alternate the two, so a drift in
the machine's speed hits both. Prints every measurement, then one JSON line per stage with the
medians over rounds and the speed-up (JAX images/s over the reference's).
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _json_lines(command: list[str]) -> list[dict]:
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def jax_round(stages: list[int], batch: int) -> dict[int, dict]:
    command = [
        sys.executable,
        "main.py",
        "--config=configs/bench_reference.py",
        "--mode=benchmark",
        "--compilation_cache=",
        f"--config.benchmark.stages=({','.join(map(str, stages))},)",
        f"--config.benchmark.batch_size={batch}",
    ]
    return {line["stage"]: line for line in _json_lines(command)}


def torch_round(python: str, stages: list[int], batch: int) -> dict[int, dict]:
    script = str(ROOT / "benchmarks" / "torch_reference.py")
    return {
        stage: _json_lines([python, script, f"--stage={stage}", f"--batch={batch}"])[-1]
        for stage in stages
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", default="3,4,5")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--torch-python", default=sys.executable)
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]

    rounds = []
    for index in range(args.rounds):
        ours, theirs = (
            jax_round(stages, args.batch),
            torch_round(args.torch_python, stages, args.batch),
        )
        for stage in stages:
            print(
                json.dumps({"round": index, "jax": ours[stage], "torch": theirs[stage]}), flush=True
            )
        rounds.append((ours, theirs))

    for stage in stages:
        jax_ips = statistics.median(r[0][stage]["imgs_per_s"] for r in rounds)
        torch_ips = statistics.median(r[1][stage]["imgs_per_s"] for r in rounds)
        summary = {
            "stage": stage,
            "resolution": rounds[0][0][stage]["resolution"],
            "batch": args.batch,
            "rounds": args.rounds,
            "jax_step_ms": statistics.median(r[0][stage]["step_ms"] for r in rounds),
            "jax_compile_s": statistics.median(r[0][stage]["compile_s"] for r in rounds),
            "jax_imgs_per_s": jax_ips,
            "torch_imgs_per_s": torch_ips,
            "speedup": round(jax_ips / torch_ips, 2),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
