"""Per-layer tables of the networks at their final stage, like Table 2 of the paper.

    python main.py --config configs/celeba_hq1024.py --mode=summary

Nothing is computed: shapes come from `jax.eval_shape`. The last line is JSON: both parameter
counts and the schedule's `total_images`, to check a config's size and length before a run.
"""

import json
import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections

from progan_jax.nets import models
from progan_jax.nets.gan import GAN, create_train_state
from progan_jax.nets.layers import count_params
from progan_jax.runtime import stages
from progan_jax.training import schedule

# Position of a layer inside its block, to list layers in the order they run.
_ORDER = {
    "dense": 0, "conv0_up": 0, "from_rgb": 0,
    "conv": 1, "conv1": 1, "conv0": 1,
    "to_rgb": 2, "conv1_down": 2, "dense0": 2,
    "dense1": 3,
}  # fmt: skip


def _sort_key(name: str, descending: bool) -> tuple[int, int]:
    kind, res = re.fullmatch(r"(\w+?)_(\d+)x\d+", name).groups()
    return (-int(res) if descending else int(res), _ORDER[kind])


def layer_rows(module, params, inputs: jax.ShapeDtypeStruct, stage: int) -> list[tuple]:
    """(layer, output shape, parameters) for every layer used at `stage`, in running order."""

    conditional = isinstance(module, models.Generator) and module.label_size
    labels = {"labels": jnp.zeros((inputs.shape[0], module.label_size))} if conditional else {}

    def run(p, x):
        return module.apply(
            {"params": p},
            x,
            stage=stage,
            alpha=1.0,
            capture_intermediates=True,
            mutable=["intermediates"],
            **labels,
        )

    _, state = jax.eval_shape(run, params, inputs)
    outputs = {k: v["__call__"][0].shape for k, v in state["intermediates"].items() if k in params}
    descending = isinstance(module, models.Critic)
    names = sorted(outputs, key=lambda n: _sort_key(n, descending))
    return [(n, outputs[n][1:], count_params(params[n])) for n in names]


def format_table(title: str, rows: list[tuple], total: int) -> Iterator[str]:
    yield f"{title}"
    yield f"  {'layer':<22}{'output shape':>20}{'parameters':>14}"
    for name, shape, n in rows:
        yield f"  {name:<22}{'x'.join(map(str, shape)):>20}{n:>14,}"
    yield f"  {'total (all stages)':<22}{'':>20}{total:>14,}"


def summarize(config: ml_collections.ConfigDict) -> Iterator[str]:
    gan = GAN.from_config(config)
    shapes = jax.eval_shape(lambda: create_train_state(gan, jax.random.key(0)))
    stage = gan.generator.num_stages - 1
    res = stages.stage_resolution(stage)
    latents = jax.ShapeDtypeStruct((1, gan.latent_size), jnp.float32)
    images = jax.ShapeDtypeStruct((1, res, res, config.model.num_channels), jnp.float32)
    totals = {}
    for title, module, params, inputs in [
        ("Generator", gan.generator, shapes.generator_params, latents),
        ("Critic", gan.critic, shapes.critic_params, images),
    ]:
        totals[title] = count_params(params)
        yield from format_table(
            f"{title} at {res}x{res}", layer_rows(module, params, inputs, stage), totals[title]
        )
    yield json.dumps(
        {
            "generator_params": totals["Generator"],
            "critic_params": totals["Critic"],
            "total_images": schedule.Schedule.from_config(
                config
            ).total_images,  # the run's length, all phases
        }
    )
