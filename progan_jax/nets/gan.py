"""The GAN being trained: its static parts (`GAN`: networks, optimizer, loss) and its
state (`TrainState`: parameters, optimizer moments, EMA, RNG), and how a run sets both up."""

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from progan_jax.nets import losses, models
from progan_jax.runtime import parallel, stages

Params = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # train steps taken (int32)
    generator_params: Params
    critic_params: Params
    generator_ema_params: Params
    generator_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    rng: jax.Array  # typed PRNG key, split once per step


@dataclasses.dataclass(frozen=True)
class GAN:
    """The static parts of training: networks, optimizer and loss."""

    generator: models.Generator
    critic: models.Critic
    optimizer: optax.GradientTransformation
    loss: losses.WGANGP
    ema_decay: float = 0.999
    # Recompute each network's activations in its backward passes instead of keeping them
    # (jax.checkpoint): less device memory for about a third more critic FLOPs.
    rematerialize: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "GAN":
        opt = config.optimizer
        return cls(
            generator=models.make_generator(config.model),
            critic=models.make_critic(config.model),
            optimizer=optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
            loss=losses.WGANGP.from_config(config.loss),
            ema_decay=config.ema_decay,
            rematerialize=config.model.rematerialize,
        )

    def _maybe_remat(self, fn):
        return jax.checkpoint(fn) if self.rematerialize else fn

    @property
    def latent_size(self) -> int:
        return self.generator.latent_size

    @property
    def label_size(self) -> int:
        """Classes of a conditional GAN; 0 when unconditional."""
        return self.generator.label_size

    def sample_latents(self, key: jax.Array, n: int) -> jax.Array:
        return jax.random.normal(key, (n, self.latent_size), jnp.float32)

    def one_hot(self, labels: jax.Array | None) -> jax.Array | None:
        """Class ids [N] as the networks take them (float32 one-hot), or None."""
        return None if labels is None else jax.nn.one_hot(labels, self.label_size)

    def generate(
        self,
        generator_params: Params,
        z: jax.Array,
        stage: int,
        alpha,
        labels: jax.Array | None = None,
    ) -> jax.Array:
        """G's images of latents `z` (and, conditional, of class ids `labels` [N])."""

        def apply(params, z, alpha, one_hot):
            return self.generator.apply(
                {"params": params}, z, stage=stage, alpha=alpha, labels=one_hot
            )

        return self._maybe_remat(apply)(generator_params, z, alpha, self.one_hot(labels))

    def critic_fn(self, critic_params: Params, stage: int, alpha) -> losses.CriticFn:
        def apply(params, alpha, images):
            return self.critic.apply({"params": params}, images, stage=stage, alpha=alpha)

        return functools.partial(self._maybe_remat(apply), critic_params, alpha)


def create_train_state(
    gan: GAN, key: jax.Array, sharding: jax.sharding.Sharding | None = None
) -> TrainState:
    """Initialises every stage's parameters, zeroed Adam states and the EMA copy of G.

    With a `sharding` (the mesh's replicated one) the state is built in place on every device
    of every process: no host copy is needed, which a multi-process run could not place.
    The parameters are drawn from an `rbg` stream seeded from `key`: XLA compiles its random
    bits far faster than threefry's for the many parameter shapes of a growing network.
    """
    last = gan.generator.num_stages - 1
    res = stages.stage_resolution(last)

    @functools.partial(jax.jit, out_shardings=sharding)
    def init(key: jax.Array) -> TrainState:
        generator_key, critic_key, rng = jax.random.split(key, 3)
        generator_key, critic_key = (
            jax.random.key(jax.random.bits(k, dtype=jnp.uint32), impl="rbg")
            for k in (generator_key, critic_key)
        )
        z = jnp.zeros((1, gan.latent_size), jnp.float32)
        image = jnp.zeros((1, res, res, gan.critic.num_channels), jnp.float32)
        labels = gan.one_hot(jnp.zeros((1,), jnp.int32)) if gan.label_size else None
        generator_params = gan.generator.init(
            generator_key, z, stage=last, alpha=1.0, labels=labels
        )["params"]
        critic_params = gan.critic.init(critic_key, image, stage=last, alpha=1.0)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            generator_params=generator_params,
            critic_params=critic_params,
            generator_ema_params=jax.tree.map(
                jnp.copy, generator_params
            ),  # a copy: G's buffers get donated
            generator_opt_state=gan.optimizer.init(generator_params),
            critic_opt_state=gan.optimizer.init(critic_params),
            rng=rng,
        )

    return init(key)


def reset_optimizer_states(gan: GAN, state: TrainState) -> TrainState:
    """Fresh Adam moments for both networks, as the official code does at phase boundaries."""
    return state.replace(
        generator_opt_state=gan.optimizer.init(state.generator_params),
        critic_opt_state=gan.optimizer.init(state.critic_params),
    )


def initialize(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[GAN, TrainState]:
    """The GAN a config describes and its initial state, replicated over `mesh`."""
    gan = GAN.from_config(config)
    return gan, create_train_state(gan, jax.random.key(config.seed), parallel.replicated(mesh))
