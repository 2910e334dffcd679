"""WGAN-GP losses with ProGAN's drift term (official `loss.py`, `D_wgangp_acgan`,
`G_wgan_acgan`), and for a conditional run their AC-GAN class terms.

`WGANGP` holds the settings of `config.loss` (their defaults are in configs/default.py alone)
and checks them; its methods are the two losses.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from progan_jax.nets.layers import at_least_float32, lerp
from progan_jax.runtime.errors import ConfigError

# images [N, H, W, C] -> scores [N], or (scores [N], label logits [N, classes]) if conditional
CriticFn = Callable[[jax.Array], jax.Array | tuple[jax.Array, jax.Array]]

# How the penalised gradient norm relates to the critic's native-resolution one (see
# `WGANGP.gp_norm_scale`): 'official' as if the images were upscaled to full resolution, as the
# official code feeds them; 'native' unscaled.
GP_SCALES = ("official", "native")


def scores_and_logits(outputs) -> tuple[jax.Array, jax.Array | None]:
    """A critic's outputs as (scores, label logits or None)."""
    return outputs if isinstance(outputs, tuple) else (outputs, None)


def label_penalty(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy of the critic's label logits against one-hot `labels`,
    in float32 (the official `softmax_cross_entropy_with_logits_v2`)."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)


def gradient_penalty(
    critic_fn: CriticFn, mixed: jax.Array, target: float = 1.0, norm_scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Per-sample `(s ||grad_x D(x)|| - target)^2 / target^2` and the penalised norms `s ||.||`.

    The gradient is taken of the *sum* of the scores over the batch, as the official code does:
    minibatch stddev couples the samples, and the cross-sample terms belong to the penalty.
    `s = norm_scale` turns the norm at this resolution into the norm the penalty is defined on
    (1 / f for a critic fed f-times nearest-upscaled images that it average-pools back).
    The gradient is taken with respect to (at least) float32 images, so that it and its norm
    are float32 whatever the images' and the critic's compute dtype.
    """

    def summed_scores(x):  # the penalty acts on the scores alone, not the label logits
        return jnp.sum(scores_and_logits(critic_fn(x))[0])

    grads = jax.grad(summed_scores)(at_least_float32(mixed))
    flat = grads.reshape(grads.shape[0], -1)
    norms = optax.safe_norm(flat, 0.0, axis=1) * norm_scale
    return jnp.square(norms - target) / target**2, norms


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.loss.{field}: {message}")


@dataclasses.dataclass(frozen=True)
class WGANGP:
    """The critic's and the generator's losses with the settings of `config.loss`.

    Frozen and hashable: a constant of the compiled step, like the networks. No field has a
    default: configs/default.py's are the only ones (`from_config`). An invalid setting cannot
    be built (`validate`), so the config check and the loss cannot disagree.
    """

    gp_weight: float  # weight of the gradient penalty
    gp_target: float  # the gradient norm the penalty pulls towards
    drift_weight: float  # weight of the drift term D(real)^2, which keeps the scores near 0
    gp_scale: str  # one of GP_SCALES: the norm the penalty acts on (`gp_norm_scale`)
    cond_weight: float  # weight of the class terms (conditional networks only)
    cond_fakes: bool  # the critic's class term covers the fakes too (officially)

    @classmethod
    def from_config(cls, loss: ml_collections.ConfigDict) -> "WGANGP":
        """The loss `config.loss` describes; a key it does not know is an error, not ignored."""
        return cls(**loss)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises a ConfigError naming the first invalid `config.loss` field."""
        for field in ("gp_weight", "drift_weight"):
            if (value := getattr(self, field)) < 0:
                _fail(field, f"must be >= 0, got {value}")
        if self.gp_target <= 0:
            _fail("gp_target", f"must be positive, got {self.gp_target}")
        if self.gp_scale not in GP_SCALES:
            _fail("gp_scale", f"must be one of {', '.join(GP_SCALES)}, got {self.gp_scale!r}")

    def gp_norm_scale(self, stage: int, last_stage: int) -> float:
        """Factor on the critic's input-gradient norm inside the penalty at `stage`.

        The official critic always receives full-resolution images: G's output and the reals
        nearest-upscaled by f = 2**(last_stage - stage), average-pooled back inside D. Its
        gradient w.r.t. that input is the native one spread over f*f pixels and divided by
        f*f, so its norm is the native norm / f: the native penalty would be f times too
        strong early on (32x at 4x4 in a 128x128 run). 'official' scales instead of upscaling.
        """
        if self.gp_scale == "native":
            return 1.0
        return 2.0 ** (stage - last_stage)

    def critic_loss(
        self,
        critic_fn: CriticFn,
        reals: jax.Array,
        fakes: jax.Array,
        key: jax.Array,
        norm_scale: float,
        labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`mean(D(fake) - D(real) + gp_weight * penalty + drift_weight * D(real)^2)` and its
        parts.

        The penalty is evaluated at `lerp(real, fake, u)` with `u ~ U[0, 1]` per sample, on the
        gradient norm times `norm_scale` (the stage's `gp_norm_scale`; see `gradient_penalty`);
        the reported `gradient_norm` is that scaled norm, the one the penalty pulls towards
        `gp_target`. A conditional critic (one-hot `labels` of the reals, which the fakes were
        generated with) also adds `cond_weight` times the label penalty of the reals and, with
        `cond_fakes`, of the fakes, as the official code; without, of the reals only, as
        pytorch_GAN_zoo. Both penalties are reported either way.
        """
        fakes = jax.lax.stop_gradient(fakes)
        # One batched evaluation of both sets; vmap keeps them apart for minibatch stddev.
        outputs = jax.vmap(critic_fn)(jnp.stack([reals, fakes]))
        both_scores, both_logits = scores_and_logits(outputs)
        real_scores, fake_scores = both_scores
        u = jax.random.uniform(key, (reals.shape[0], 1, 1, 1), dtype=reals.dtype)
        mixed = lerp(reals, fakes, u)
        penalty, norms = gradient_penalty(critic_fn, mixed, self.gp_target, norm_scale)
        drift = jnp.square(real_scores)
        per_sample = (
            fake_scores - real_scores + self.gp_weight * penalty + self.drift_weight * drift
        )
        label_parts = {}
        if labels is not None:
            real_labels, fake_labels = (label_penalty(logits, labels) for logits in both_logits)
            trained = real_labels + fake_labels if self.cond_fakes else real_labels
            per_sample = per_sample + self.cond_weight * trained
            label_parts = {
                "label_penalty_reals": jnp.mean(real_labels),
                "label_penalty_fakes": jnp.mean(fake_labels),
            }
        loss = jnp.mean(per_sample)
        parts = {
            "critic_loss": loss,
            "wasserstein": jnp.mean(real_scores - fake_scores),
            "gradient_penalty": jnp.mean(penalty),
            "gradient_norm": jnp.mean(norms),
            "drift": jnp.mean(drift),
            "real_score": jnp.mean(real_scores),
            "fake_score": jnp.mean(fake_scores),
            **label_parts,
        }
        return loss, parts

    def generator_loss(
        self, critic_fn: CriticFn, fakes: jax.Array, labels: jax.Array | None = None
    ) -> jax.Array:
        """`-mean(D(G(z)))`; conditional (one-hot `labels` the fakes were asked for), plus
        `cond_weight` times the critic's label penalty of the fakes."""
        scores, logits = scores_and_logits(critic_fn(fakes))
        per_sample = -scores
        if labels is not None:
            per_sample = per_sample + self.cond_weight * label_penalty(logits, labels)
        return jnp.mean(per_sample)
