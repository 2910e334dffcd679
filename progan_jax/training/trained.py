"""A trained generator out of a workdir: G_ema of a checkpoint, in the networks it trained in.

Evaluation, generation, export and projection read their generator here, so each of them asks
for a checkpoint the same way (`config.checkpoint_images_shown`: the latest, a count of images
shown, 'best' or 'untrained') and gets the networks the checkpoint names, whatever the command
line's `model` fields say.
"""

import dataclasses
import logging

import jax
import ml_collections

from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.runtime import agreement, parallel, stages
from progan_jax.runtime.errors import MissingFileError
from progan_jax.training import checkpointing, schedule


def with_trained_networks(
    config: ml_collections.ConfigDict, workdir: str, which: int | str | None = None
) -> ml_collections.ConfigDict:
    """`config` with the networks of the workdir's checkpoint (`which`; the latest by default).

    A checkpoint's weights mean something only in the networks they were trained in: a
    conditional G drawn without `model.label_size` fails to restore, one drawn with another
    `model.label_scale` restores and draws wrong images. So the checkpoint's `model` fields win
    (but `agreement.EXECUTION_FIELDS`), each one the command line set otherwise with a warning;
    fields the checkpoint lacks (a run from before them) keep the command line's value.
    """
    networks = checkpointing.trained_networks(workdir, which)
    if networks is None:
        return config
    saved = agreement.flatten({"model": networks.model})
    current = agreement.config_fields(config)
    changed = {
        name: value
        for name, value in saved.items()
        if name in current and name not in agreement.EXECUTION_FIELDS and value != current[name]
    }
    for name, value in sorted(changed.items()):
        logging.warning(
            "config.%s: the checkpoints were trained with %r; using it instead of %r.",
            name, value, current[name],
        )  # fmt: skip
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for name, value in changed.items():
            config.model[name.removeprefix("model.")] = value
    return config


def load_generator(
    config: ml_collections.ConfigDict, workdir: str, which: int | str | None = None
) -> sampling.GeneratorSnapshot:
    """G_ema of the latest checkpoint (None), the one at `which` images shown, the best one
    ('best'), or a fresh G at the final stage ('untrained'), replicated over all devices, at the
    stage and alpha of its last step. A checkpoint that is not there is an error.

    Only G_ema's parameters are read: the critic, G's training copy and both Adam states are
    about five times their bytes, which evaluation, generation and export never use.
    """
    which = checkpointing.checkpoint_choice(which)
    config = with_trained_networks(config, workdir, which)
    gan = gan_lib.GAN.from_config(config)
    sharding = parallel.replicated(parallel.make_mesh())
    if which == "untrained":
        state = gan_lib.create_train_state(gan, jax.random.key(config.seed), sharding)
        last_stage = stages.num_stages(config.model.resolution) - 1
        return sampling.GeneratorSnapshot(gan, state.generator_ema_params, last_stage, 1.0, 0)
    shapes = jax.eval_shape(lambda: gan_lib.create_train_state(gan, jax.random.key(0)))
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes.generator_ema_params,
    )
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        restored = checkpointer.restore_generator_ema(target, which)
    finally:
        checkpointer.close()
    if restored is None:
        if which == "best":
            raise MissingFileError(
                f"No best checkpoint in {workdir}: training keeps one when an evaluator ranks "
                "checkpoints (checkpoint.best_metric, e.g. fid with evals.fid.every_images > 0)."
            )
        raise MissingFileError(f"No checkpoint in {workdir}/checkpoints; train first.")
    params, progress = restored
    if progress.alpha is None:  # a checkpoint from before progress kept stage and alpha
        phase = schedule.Schedule.from_config(config).phases[progress.phase_index]
        progress = dataclasses.replace(
            progress, stage=phase.stage, alpha=phase.alpha(progress.images_shown)
        )
    return sampling.GeneratorSnapshot(
        gan, params, progress.stage, progress.alpha, progress.images_shown
    )
