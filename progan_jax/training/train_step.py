"""The data-parallel WGAN-GP train step.

One step: a critic update on a batch of reals (faded like the networks), then a generator update
with fresh latents against the *updated* critic, then the generator EMA. Each device computes
gradients on its shard of the batch with its own random stream; `lax.pmean` over the `data`
axis averages them, so every device applies the same update (pmap semantics, written as
`jax.shard_map` under `jax.jit`). Minibatch-stddev groups stay inside a device's shard, as in
the official multi-GPU code.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from progan_jax.data import input_pipeline
from progan_jax.nets import models
from progan_jax.nets.gan import GAN, Params, TrainState
from progan_jax.nets.layers import at_least_float32, downsample2x, fade, upsample2x
from progan_jax.runtime import parallel
from progan_jax.training.schedule import StageSchedule


def decode_reals(batch: dict[str, jax.Array], xp=jnp) -> jax.Array:
    """A stream batch as the networks see it: uint8 images to float32 [-1, 1], mirrored
    left-right where the stream says so. Done on the device, so a quarter of the bytes cross
    from the host (see input_pipeline for the batch's fields); `xp=np` does the same on the
    host (tests hold the stream's decoded floats to it)."""
    images = batch["images"].astype(xp.float32) * xp.float32(2.0 / 255.0) - xp.float32(1.0)
    return input_pipeline.mirrored(images, batch["mirror"], xp)


def batch_shapes(batch_size: int, resolution: int, channels: int, labelled: bool = False) -> dict:
    """Shapes and dtypes of a global batch as the step takes it (`labelled`: with classes)."""
    shapes = {
        "images": jax.ShapeDtypeStruct((batch_size, resolution, resolution, channels), jnp.uint8),
        "mirror": jax.ShapeDtypeStruct((batch_size,), jnp.bool_),
    }
    if labelled:
        shapes["labels"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return shapes


def even_frequencies(gan: GAN) -> np.ndarray | None:
    """Equal class shares of a conditional GAN (None: unconditional), for steps compiled
    without the data: plans and benchmarks, whose cost does not depend on them."""
    return np.full(gan.label_size, 1.0 / gan.label_size, np.float32) if gan.label_size else None


def fade_reals(reals: jax.Array, stage: int, alpha) -> jax.Array:
    """Blends reals with their 2x-blurred version in step with the networks' fade-in, in at
    least float32 as the networks' fades: a bfloat16 blur and blend would round the reals."""
    reals = at_least_float32(reals)
    if stage == 0:
        return reals
    return fade(upsample2x(downsample2x(reals)), reals, alpha)


def step_keys(rng: jax.Array, device_index) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(next state rng, critic key, generator key) of one device for one step."""
    next_rng, step_key = jax.random.split(rng)
    critic_key, generator_key = jax.random.split(jax.random.fold_in(step_key, device_index))
    return next_rng, critic_key, generator_key


def split_active(params: Params, stage: int) -> tuple[Params, Params]:
    """(modules used at `stage`, the rest). Only the former are differentiated and updated."""
    active = {k: v for k, v in params.items() if models.is_active(k, stage)}
    return active, {k: v for k, v in params.items() if k not in active}


def critic_gradients(
    gan: GAN,
    state: TrainState,
    reals: jax.Array,
    key: jax.Array,
    stage: int,
    alpha,
    labels: jax.Array | None = None,
) -> tuple[Params, dict[str, jax.Array]]:
    """Gradient of the critic loss on one shard of (already faded) reals, for active modules.
    Conditional: the fakes are generated with the reals' `labels` (class ids), as officially."""
    z_key, mix_key = jax.random.split(key)
    z = gan.sample_latents(z_key, reals.shape[0])
    fakes = gan.generate(state.generator_params, z, stage, alpha, labels)
    active, frozen = split_active(state.critic_params, stage)

    norm_scale = gan.loss.gp_norm_scale(stage, gan.generator.num_stages - 1)

    def loss_fn(critic_active):
        critic = gan.critic_fn({**frozen, **critic_active}, stage, alpha)
        return gan.loss.critic_loss(critic, reals, fakes, mix_key, norm_scale, gan.one_hot(labels))

    return jax.grad(loss_fn, has_aux=True)(active)


def generator_gradients(
    gan: GAN,
    generator_params: Params,
    critic_params: Params,
    key: jax.Array,
    n: int,
    stage: int,
    alpha,
    label_frequencies: np.ndarray | None = None,
) -> tuple[Params, jax.Array]:
    """Gradient of `-D(G(z))` for `n` fresh latents, for the active modules of G; conditional,
    with class labels drawn from the data set's `label_frequencies` (the official
    `get_random_labels`) and the class term of the fakes."""
    z = gan.sample_latents(key, n)
    labels = None
    if label_frequencies is not None:
        labels = jax.random.categorical(
            jax.random.fold_in(key, 1), jnp.log(label_frequencies), shape=(n,)
        )
    active, frozen = split_active(generator_params, stage)

    def loss_fn(generator_active):
        fakes = gan.generate({**frozen, **generator_active}, z, stage, alpha, labels)
        critic = gan.critic_fn(critic_params, stage, alpha)
        return gan.loss.generator_loss(critic, fakes, gan.one_hot(labels))

    loss, grads = jax.value_and_grad(loss_fn)(active)
    return grads, loss


def _pick(tree: dict, names) -> dict:
    return {k: tree[k] for k in names}


def adam_update(
    gan: GAN, params: Params, grads: Params, opt_state: optax.ScaleByAdamState, learning_rate
) -> tuple[Params, optax.ScaleByAdamState]:
    """Adam on the modules in `grads` (the active ones); the others keep values and moments.

    Adam would leave a module outside the pass where it is anyway (zero gradient, zero first
    moment); skipping it saves compiling an update per module. A module leaves the pass only for
    good (the RGB layers of earlier stages), so its frozen moments never matter.
    """
    moments = opt_state._replace(mu=_pick(opt_state.mu, grads), nu=_pick(opt_state.nu, grads))
    updates, moments = gan.optimizer.update(grads, moments)
    updated = jax.tree.map(lambda p, u: p - learning_rate * u, _pick(params, grads), updates)
    new_state = moments._replace(
        mu={**opt_state.mu, **moments.mu}, nu={**opt_state.nu, **moments.nu}
    )
    return {**params, **updated}, new_state


def ema_update(gan: GAN, ema_params: Params, params: Params, names) -> Params:
    """Moves the EMA of the named (active) modules of G towards their new values.

    Inactive modules are either untrained (EMA equals the weights) or have left the pass for good.
    """
    updated = {
        k: optax.incremental_update(params[k], ema_params[k], 1.0 - gan.ema_decay) for k in names
    }
    return {**ema_params, **updated}


def train_step(
    gan: GAN,
    state: TrainState,
    batch: dict[str, jax.Array],
    images_shown: jax.Array,
    *,
    schedule: StageSchedule,
    label_frequencies: np.ndarray | None = None,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One critic and one generator update on this device's shard of the batch.

    `images_shown` (int32) counts the images shown before this step; alpha follows from it
    (`schedule.alpha`) and is returned among the metrics: the value train.py logs, so the log
    shows the fade the step ran at. With `axis_name`, gradients and the losses' metrics are
    averaged over that mapped axis.
    """
    mean = (lambda t: jax.lax.pmean(t, axis_name)) if axis_name else (lambda t: t)
    device_index = jax.lax.axis_index(axis_name) if axis_name else 0
    next_rng, critic_key, generator_key = step_keys(state.rng, device_index)
    stage, lr = schedule.stage, schedule.learning_rate
    alpha = schedule.alpha(images_shown)

    reals = fade_reals(decode_reals(batch), stage, alpha)
    labels = batch.get("labels")
    critic_grads, metrics = critic_gradients(gan, state, reals, critic_key, stage, alpha, labels)
    critic_params, critic_opt_state = adam_update(
        gan, state.critic_params, mean(critic_grads), state.critic_opt_state, lr
    )

    generator_grads, generator_loss = generator_gradients(
        gan,
        state.generator_params,
        critic_params,
        generator_key,
        reals.shape[0],
        stage,
        alpha,
        label_frequencies,
    )
    generator_params, generator_opt_state = adam_update(
        gan, state.generator_params, mean(generator_grads), state.generator_opt_state, lr
    )
    generator_ema_params = ema_update(
        gan, state.generator_ema_params, generator_params, generator_grads.keys()
    )

    new_state = TrainState(
        step=state.step + 1,
        generator_params=generator_params,
        critic_params=critic_params,
        generator_ema_params=generator_ema_params,
        generator_opt_state=generator_opt_state,
        critic_opt_state=critic_opt_state,
        rng=next_rng,
    )
    return new_state, {**mean({**metrics, "generator_loss": generator_loss}), "alpha": alpha}


def make_train_step(
    gan: GAN, mesh: Mesh, schedule: StageSchedule, label_frequencies: np.ndarray | None = None
):
    """The jitted data-parallel step of one stage:
    `(state, batch, images_shown) -> (state, images_shown + batch size, metrics)`.

    `batch` is the stream's global batch (uint8 images and mirror flags, and for a conditional
    GAN class ids, whose `label_frequencies` G's labels are drawn from) split along `data`;
    `images_shown` is a replicated int32 scalar that the loop feeds back, so alpha moves on the
    device and the step compiles once per stage (and batch shape). The input state is donated.
    """
    rep, data = PartitionSpec(), PartitionSpec(parallel.DATA_AXIS)
    per_device = functools.partial(
        train_step,
        gan,
        schedule=schedule,
        label_frequencies=label_frequencies,  # a constant of the program
        axis_name=parallel.DATA_AXIS,
    )
    # Replication of the outputs is by construction (every update is pmean'd). The check is off
    # because the convolutions' custom VJPs return per-device weight gradients for replicated
    # weights, which it cannot type.
    mapped = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(rep, data, rep),
        out_specs=(rep, rep),
        check_vma=False,
    )

    def step(state, batch, images_shown):
        new_state, metrics = mapped(state, batch, images_shown)
        return new_state, images_shown + schedule.batch_size, metrics

    return jax.jit(step, donate_argnums=0)
