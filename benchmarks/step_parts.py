"""Where a train step's time goes: each part of it jitted and timed alone, as JSON lines.

    python benchmarks/step_parts.py --stage 3 --batch 32
    python benchmarks/step_parts.py --stage 1 --batch 64 --set model.conv_gradients=xla

Parts: G's forward, the critic's forward, the critic's input gradient (the penalty's inner
pass), the critic's update gradients (two passes, the penalty and its double backward), the
generator's update gradients, and the whole step. Each: cold compile, median of 7 runs after 2,
and XLA's FLOP count (a lower bound on CPU, where a loop's body is counted once).
Networks from configs/short_budget.py (latent 128, 64 feature maps) unless `--set` says otherwise.
"""

import argparse
import ast
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from progan_jax.runtime import stages, xla_flags  # noqa: E402

xla_flags.set_default_flags()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import short_budget  # noqa: E402
from progan_jax.modes import timing  # noqa: E402
from progan_jax.nets import gan as gan_lib  # noqa: E402
from progan_jax.runtime import parallel  # noqa: E402
from progan_jax.training import schedule, train_step  # noqa: E402


def time_part(name: str, fn, *args) -> dict:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    seconds = timing.median_seconds(compiled, *args, warmup=2, runs=7)
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    return {
        "part": name,
        "ms": round(seconds * 1e3, 2),
        "compile_s": round(compile_s, 2),
        "gflop": round(flops / 1e9, 3),
        "gflop_per_s": round(flops / seconds / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE on the config")
    args = parser.parse_args()
    config = short_budget.get_config()
    for assignment in args.set:
        field, value = assignment.split("=", 1)
        config.update_from_flattened_dict({field: _parse(value)})
    gan, state = gan_lib.initialize(config, parallel.make_mesh())
    stage, alpha, key = args.stage, jnp.float32(args.alpha), jax.random.key(0)
    res = stages.stage_resolution(stage)
    reals = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (args.batch, res, res, 3)))
    reals = reals.astype(jnp.float32)
    z = gan.sample_latents(key, args.batch)
    plan = schedule.StageSchedule(stage, args.batch, 1e-3, fade_start=0, fade_end=1000)
    shown = jnp.int32(round(args.alpha * 1000))  # alpha = args.alpha in the step too
    batch = timing.random_batch(config, stage, args.batch, parallel.make_mesh())

    def critic(p, x):
        return gan.critic_fn(p, stage, alpha)(x)

    parts = [
        ("generator_forward", lambda p, z: gan.generate(p, z, stage, alpha),
         state.generator_params, z),
        ("critic_forward", critic, state.critic_params, reals),
        ("critic_input_grad", lambda p, x: jax.grad(lambda x: critic(p, x).sum())(x),
         state.critic_params, reals),
        ("critic_update_grads",
         lambda s, x: train_step.critic_gradients(gan, s, x, key, stage, alpha), state, reals),
        ("generator_update_grads",
         lambda g, d: train_step.generator_gradients(gan, g, d, key, args.batch, stage, alpha),
         state.generator_params, state.critic_params),
        ("step", lambda s, b: train_step.train_step(gan, s, b, shown, schedule=plan),
         state, batch),
    ]  # fmt: skip
    for name, fn, *fn_args in parts:
        line = {"stage": stage, "resolution": res, "batch": args.batch}
        print(json.dumps({**line, **time_part(name, fn, *fn_args)}), flush=True)


def _parse(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # a bare string, e.g. model.conv_gradients=xla


if __name__ == "__main__":
    main()
