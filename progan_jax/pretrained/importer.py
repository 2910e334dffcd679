"""`--mode=import`: a pretrained network file as a workdir that every other mode uses.

The workdir is the one a training run leaves: `config.json` (the given config with the
`model` fields of the file's networks) and an Orbax checkpoint with G, the critic, G_ema and
fresh Adam moments, at the stage and alpha of the file's level of detail. `generate`,
`evaluate`, `export` and `summary` then read it as they read any run, and `train` fine-tunes
it from there on the config's data. `imported.json` says where the networks came from.

The imported checkpoint is kept for good (with the stage ends): fine-tuning's periodic
checkpoints never prune it. Everything is read, converted and checked against our networks'
parameter shapes before anything is written; the checkpoint, written last and atomically by
Orbax, marks a complete import.
"""

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from progan_jax.nets import gan as gan_lib
from progan_jax.pretrained import gan_zoo, official
from progan_jax.pretrained.imported import Imported, UnsupportedNetworkError
from progan_jax.runtime import parallel, paths
from progan_jax.runtime.errors import ConfigError, MissingFileError, UserError
from progan_jax.training import checkpointing, config_checks, schedule

PROVENANCE = "imported.json"  # in the workdir: the file, its format, lod and sha256


def read_file(path: str) -> Imported:
    """The networks of an official pickle or a pytorch_GAN_zoo checkpoint (by content)."""
    if not paths.resolve(path).exists():
        raise MissingFileError(f"config.pretrained.path: {path} does not exist")
    return (gan_zoo if gan_zoo.is_torch_file(path) else official).read(path)


def _check_shapes(role: str, expected: Any, tree: dict) -> None:
    """Raises UnsupportedNetworkError unless `tree` has exactly `expected`'s leaves and shapes."""
    want = {
        jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)
    }
    have = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    for name in sorted(want.keys() | have.keys()):
        if want.get(name) != have.get(name):
            raise UnsupportedNetworkError(
                f"{role} parameter {name}: the file gives shape {have.get(name)}, the networks "
                f"its arguments describe need {want.get(name)}"
            )


def model_config(config: ml_collections.ConfigDict, model: dict) -> ml_collections.ConfigDict:
    """`config` with the imported networks' `model` fields, checked as a run would check it."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.update(model)
    try:
        config_checks.validate_model(config)
        config_checks.validate_schedule_lengths(config)
        config_checks.validate_data_resolution(config)
    except ConfigError as error:
        raise ConfigError(
            f"{error} (the imported networks are {model['resolution']}x{model['resolution']})"
        ) from error
    return config


def progress_of(config: ml_collections.ConfigDict, stage: int, alpha: float):
    """Where the config's schedule has `stage` at `alpha`: the checkpoint's images shown.

    A fade at alpha < 1 lands inside the stage's fade-in; alpha 1 at the start of its
    stabilization, so that `train` goes on from there (at the last stage: fine-tuning).
    """
    phases = [p for p in schedule.Schedule.from_config(config).phases if p.stage == stage]
    fading = alpha < 1.0
    phase = next((p for p in phases if p.fading == fading), None)
    if phase is None:
        field = "fade_images" if fading else "stabilize_images (final_stabilize_images last)"
        raise ConfigError(
            f"config.schedule: the imported networks are at stage {stage}, alpha {alpha:g}, and "
            f"the schedule has no {'fade-in' if fading else 'stabilization'} there to hold "
            f"them; give schedule.{field} a length"
        )
    if fading:
        images = min(phase.start + round(alpha * (phase.end - phase.start)), phase.end - 1)
        return checkpointing.Progress(images, phase.index, stage, alpha)
    return checkpointing.Progress(phase.start, phase.index, stage, alpha)


def import_networks(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the workdir of `config.pretrained.path`'s networks; returns a summary line."""
    path = config.pretrained.path
    if not path:
        raise ConfigError(
            "config.pretrained.path: name the network file to import, e.g. "
            "--config.pretrained.path=karras2018iclr-celebahq-1024x1024.pkl"
        )
    if jax.process_count() > 1:
        raise ConfigError("--mode=import runs in one process: start it without --num_processes")
    root = paths.resolve(workdir)
    if checkpointing.holds_checkpoints(root):
        raise UserError(
            f"{root} already holds checkpoints; import into a new --workdir (an import never "
            "overwrites a run)."
        )
    imported = read_file(path)
    config = model_config(config, imported.model)
    gan = gan_lib.GAN.from_config(config)
    shapes = jax.eval_shape(lambda: gan_lib.create_train_state(gan, jax.random.key(0)))
    for role, expected, tree in (
        ("G", shapes.generator_params, imported.generator),
        ("D", shapes.critic_params, imported.critic),
        ("Gs", shapes.generator_ema_params, imported.generator_ema),
    ):
        _check_shapes(role, expected, tree)
    progress = progress_of(config, imported.stage, imported.alpha)
    state = _train_state(gan, config.seed, imported)
    provenance = dict(
        source=str(path),
        sha256=_sha256(path),
        format=imported.format,
        stage=imported.stage,
        alpha=imported.alpha,
        images_shown=progress.images_shown,
        **imported.details,
    )
    # Nothing was written until here; the checkpoint, last, marks a complete import.
    root.mkdir(parents=True, exist_ok=True)
    checkpointing.write_config(root, config)
    (root / PROVENANCE).write_text(json.dumps(provenance, indent=2))
    checkpointer = checkpointing.Checkpointer(root)
    try:
        networks = checkpointing.Networks.of(config)
        checkpointer.save(state, progress, stage_end=True, networks=networks)  # kept for good
    finally:
        checkpointer.close()
    return dict(
        imported=str(path),
        workdir=str(root),
        format=imported.format,
        resolution=config.model.resolution,
        stage=imported.stage,
        alpha=imported.alpha,
        images_shown=progress.images_shown,
    )


def _train_state(gan: gan_lib.GAN, seed: int, imported: Imported) -> gan_lib.TrainState:
    """The imported parameters with fresh Adam moments, replicated over this host's devices."""
    sharding = parallel.replicated(parallel.make_mesh())

    def place(tree: dict) -> dict:
        return jax.tree.map(lambda a: jax.device_put(jnp.asarray(a, jnp.float32), sharding), tree)

    generator, critic = place(imported.generator), place(imported.critic)
    return gan_lib.TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), sharding),
        generator_params=generator,
        critic_params=critic,
        generator_ema_params=place(imported.generator_ema),
        generator_opt_state=jax.jit(gan.optimizer.init, out_shardings=sharding)(generator),
        critic_opt_state=jax.jit(gan.optimizer.init, out_shardings=sharding)(critic),
        rng=jax.device_put(jax.random.split(jax.random.key(seed), 3)[2], sharding),
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with paths.resolve(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
