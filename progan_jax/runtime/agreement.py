"""The processes of a run, and a resumed run and its workdir, must mean the same run.

Processes that load different configs (a stale checkout on one host, a different override)
would train different programs in lock step until a collective deadlocks or the results are
silently wrong; a resumed run whose networks have other shapes than its checkpoints fails deep
inside Orbax. Both are checked at start and reported by field name. Work that may fail on one
process alone (preparing data, taking the workdir's lease) ends the same way on all of them.
"""

import hashlib
import json
import logging
from typing import TypeVar

import jax
import ml_collections

from progan_jax.runtime import collectives
from progan_jax.runtime.errors import ConfigError

T = TypeVar("T")

# Fields that give the parameters their shapes: a checkpoint cannot be restored across them.
SHAPE_FIELDS = (
    "model.resolution",
    "model.num_channels",
    "model.latent_size",
    "model.fmap_base",
    "model.fmap_max",
    "model.fmap_decay",
)


# `model` fields that say how the networks compute, not what: a checkpoint may be drawn from
# with others (e.g. bfloat16 on a GPU from a CPU run's float32).
EXECUTION_FIELDS = (
    "model.fused_scale",
    "model.conv_gradients",
    "model.compute_dtype",
    "model.rematerialize",
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'model.resolution': 128, ...} of a nested dict (lists stay values)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_fields(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as flat JSON values (tuples as lists, as config.json stores them)."""
    return flatten(json.loads(config.to_json_best_effort()))


def differing_fields(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _shape_signature(fields: dict) -> dict:
    """What decides parameter shapes; the minibatch-stddev layer adds a channel when on, and
    labels widen G's first layer and the critic's last."""
    signature = {k: fields.get(k) for k in SHAPE_FIELDS}
    signature["model.mbstd_group_size"] = (fields.get("model.mbstd_group_size") or 0) > 1
    signature["model.label_size"] = fields.get("model.label_size") or 0  # absent: before labels
    signature["model.dense_bias_per_unit"] = bool(fields.get("model.dense_bias_per_unit"))
    return signature


def check_resume(saved_config: dict, config: ml_collections.ConfigDict) -> list[str]:
    """Raises ConfigError if the workdir's networks have other shapes; returns other changes."""
    saved, current = flatten(saved_config), config_fields(config)
    shape_changes = differing_fields(_shape_signature(saved), _shape_signature(current))
    if shape_changes:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in shape_changes)
        raise ConfigError(
            f"config.{shape_changes[0]}: the workdir's checkpoints were trained with other "
            f"network shapes ({detail}). Resume with the workdir's values (its config.json), "
            "or start the new networks in another --workdir."
        )
    changes = differing_fields(saved, current)
    for name in changes:
        logging.warning(
            "Resuming with config.%s changed: %r -> %r.", name, saved.get(name), current.get(name)
        )
    return changes


def check_processes_agree(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on every process if any process resolved another config.

    One small all-gather of digests when they agree; the configs themselves only to name the
    fields when they do not.
    """
    if jax.process_count() == 1:
        return
    text = json.dumps(config_fields(config), sort_keys=True)
    digest = hashlib.sha256(text.encode()).digest()
    digests = collectives.allgather_bytes(digest)
    if len(set(digests)) == 1:
        return
    fields = [json.loads(t) for t in collectives.allgather_bytes(text.encode())]
    report, first = [], None
    for index, other in enumerate(fields[1:], start=1):
        names = differing_fields(fields[0], other)
        if names:
            first = first or names[0]
            shown = ", ".join(f"{k} ({fields[0].get(k)!r} vs {other.get(k)!r})" for k in names)
            report.append(f"process {index} differs from process 0 in {shown}")
    raise ConfigError(
        f"config.{first}: the processes of this run resolved different configs: "
        + "; ".join(report)
        + ". Run the same checkout and command line on every host."
    )
