"""The cost of FID while training: its evaluations against the training they interrupt.

    python benchmarks/fid_cost.py                                   # demo widths, timed here
    python benchmarks/fid_cost.py --config configs/celeba128.py --every 500000 --flops_only

FLOPs are XLA's cost analysis: of the FID Inception on one image, of G's forward at the last
stage, and of each stage's train step as XLA's own gradients compile it (`--mode=plan`'s
'cuda' lowering: on the CPU the train step's custom weight-gradient loops are counted once).
Unless `--flops_only`, seconds are measured on this machine: the Inception and G per image
(median of 3 batches after a warm-up), each stage's step (`--mode=benchmark`'s timing). The
whole run's share then follows from the schedule: `total_images / every` evaluations of
`images` generated images each (G at its last stage, the dearest), against every stage's
images at that stage's cost. The reals' statistics (once per stage, cached on disk) are left
out. Prints one JSON line per part, then the shares. Timing needs no Inception weights: the
cost does not depend on their values.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from progan_jax.runtime import xla_flags

xla_flags.set_default_flags()  # before JAX initialises its backends

import jax  # noqa: E402
import numpy as np  # noqa: E402

from progan_jax.metrics import fid, inception  # noqa: E402
from progan_jax.nets import gan as gan_lib  # noqa: E402
from progan_jax.runtime import stages  # noqa: E402
from progan_jax.training import plan, schedule  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--images", type=int, default=50_000, help="generated images per FID")
    parser.add_argument("--every", type=int, default=500_000, help="images shown between FIDs")
    parser.add_argument("--batch", type=int, default=16, help="images per timed batch")
    parser.add_argument("--flops_only", action="store_true", help="count FLOPs, time nothing")
    return parser.parse_args(argv)


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("fid_cost_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def cost(fn, *args, timed: bool) -> tuple[float, float | None]:
    """(FLOPs of one call, median seconds of 3 calls after one, or None)."""
    compiled = jax.jit(fn).lower(*args).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    if not timed:
        return flops, None
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return flops, statistics.median(times)


def per_image(flops: float, seconds: float | None, batch: int) -> dict:
    line = {"gflop_per_image": round(flops / batch / 1e9, 3)}
    if seconds is not None:
        line["seconds_per_image"] = round(seconds / batch, 5)
    return line


def train_costs(config, timed: bool) -> dict[int, dict]:
    """Per stage: the step's GFLOP per image (XLA's own gradients) and, timed, images/s here."""
    costs = {}
    with config.unlocked():
        config.plan.topology = "cuda"
        for line in plan.plan(config):
            costs[line["stage"]] = {"gflop_per_image": line["gflop_per_image"]}
        if timed:
            from progan_jax.modes import timing

            config.plan.topology = None
            for line in timing.benchmark_train_step(config):
                costs[line["stage"]]["imgs_per_s"] = line["imgs_per_s"]
    return costs


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    config = load_config(args.config)
    timed = not args.flops_only
    batch = args.batch

    x = jax.numpy.zeros((batch, 64, 64, 3), jax.numpy.uint8)
    params = inception.InceptionV3().init(jax.random.key(0), inception.preprocess(x[:1]))
    inception_line = per_image(*cost(fid._features, params["params"], x, timed=timed), batch)
    print(json.dumps({"part": "inception", **inception_line}), flush=True)

    gan = gan_lib.GAN.from_config(config)
    state = gan_lib.create_train_state(gan, jax.random.key(0))
    last = stages.num_stages(config.model.resolution) - 1
    z = gan.sample_latents(jax.random.key(1), batch)
    labels = np.zeros(batch, np.int32) if gan.label_size else None
    generate = lambda p, z: gan.generate(p, z, last, 1.0, labels)
    generator_line = per_image(*cost(generate, state.generator_ema_params, z, timed=timed), batch)
    print(json.dumps({"part": "generator", "stage": last, **generator_line}), flush=True)

    train = train_costs(config, timed)
    for stage, line in sorted(train.items()):
        print(json.dumps({"part": "train_step", "stage": stage, **line}), flush=True)

    sched = schedule.Schedule.from_config(config)
    images_at = {stage: 0 for stage in train}
    for phase in sched.phases:
        images_at[phase.stage] += phase.end - phase.start
    evaluations = sched.total_images // args.every
    fid_gflop = args.images * (
        inception_line["gflop_per_image"] + generator_line["gflop_per_image"]
    )
    train_gflop = sum(images_at[s] * train[s]["gflop_per_image"] for s in train)
    shares = {
        "part": "fid_while_training",
        "config": args.config,
        "images": args.images,
        "every_images": args.every,
        "total_images": sched.total_images,
        "evaluations": evaluations,
        "gflop_per_evaluation": round(fid_gflop, 1),
        "flop_share": round(evaluations * fid_gflop / (evaluations * fid_gflop + train_gflop), 4),
    }
    if timed:
        fid_s = args.images * (
            inception_line["seconds_per_image"] + generator_line["seconds_per_image"]
        )
        train_s = sum(images_at[s] / train[s]["imgs_per_s"] for s in train)
        shares.update(
            seconds_per_evaluation=round(fid_s, 1),
            training_seconds=round(train_s, 1),
            time_share=round(evaluations * fid_s / (evaluations * fid_s + train_s), 4),
            device=jax.devices()[0].device_kind,
            cpus=os.cpu_count(),
        )
    print(json.dumps(shares), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
