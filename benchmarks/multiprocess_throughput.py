"""Images/s of a multi-process training run on this machine, read from process 0's log.

    python benchmarks/multiprocess_throughput.py --processes 2 --rounds 3 [--root CHECKOUT]

Runs `main.py` of the checkout at --root (default: this one) as --processes processes on
loopback (gloo collectives, one CPU device each) with configs/tiny.py stretched to a long
16x16 stage, and prints one JSON line per round and one with the medians: the images/s of the
log intervals after the first (compile) ones. Pointing --root at an older checkout measures
what a change did to the cost of keeping the processes in step.
"""

import argparse
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
_RATE = re.compile(r"\bimages_per_s=([0-9.]+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_round(root: pathlib.Path, processes: int, images: int, log_every: int) -> float:
    port, env = _free_port(), dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            sys.executable,
            str(root / "main.py"),
            f"--config={root / 'configs' / 'tiny.py'}",
            f"--workdir={tmp}/run",
            f"--compilation_cache={tmp}/xla",
            f"--config.data.cache_dir={tmp}/data",
            "--config.model.resolution=4",  # one stage: no growth, only steady steps
            f"--config.schedule.stabilize_images={images}",
            "--config.schedule.batch_sizes=(8,)",
            "--config.optimizer.learning_rates=(1e-3,)",
            "--config.checkpoint.every_images=0",
            "--config.evals.swd.every_images=0",
            f"--config.logging.log_every_steps={log_every}",
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={processes}",
        ]
        runs = [
            subprocess.Popen(
                [*common, f"--process_id={i}"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
            for i in range(processes)
        ]  # fmt: skip
        logs = [run.communicate()[0] for run in runs]
        if any(run.returncode for run in runs):
            raise RuntimeError(logs[0][-3000:])
    rates = [float(r) for r in _RATE.findall(logs[0])]
    return statistics.median(rates[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16_000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--root", type=pathlib.Path, default=ROOT)
    args = parser.parse_args()
    rates = []
    for index in range(args.rounds):
        rates.append(one_round(args.root, args.processes, args.images, args.log_every))
        print(json.dumps({"round": index, "images_per_s": round(rates[-1], 1)}), flush=True)
    summary = {"root": str(args.root), "processes": args.processes, "rounds": args.rounds}
    print(json.dumps({**summary, "median_images_per_s": round(statistics.median(rates), 1)}))


if __name__ == "__main__":
    main()
