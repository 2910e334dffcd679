"""The growing generator and critic (Karras et al. 2018, Table 2), as Flax linen modules.

Both are called as `apply(params, x, stage=s, alpha=a)`: `stage` (0 -> 4x4, 1 -> 8x8, ...) is a
static Python int and `alpha` a traced scalar in [0, 1] that fades the newest stage in. The
parameters of every stage are created at init, so the parameter tree never changes shape as
the networks grow: one optimizer state and one checkpoint layout serve the whole run.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from progan_jax.nets import conv
from progan_jax.nets.layers import (
    SQRT2,
    EqualizedConv,
    EqualizedDense,
    at_least_float32,
    at_least_float32_dtype,
    downsample2x,
    fade,
    leaky_relu,
    minibatch_stddev,
    pixel_norm,
    upsample2x,
)
from progan_jax.runtime import stages


def feature_maps(stage: int, fmap_base: int, fmap_max: int, fmap_decay: float = 1.0) -> int:
    """The official `nf(stage) = min(fmap_base / 2**(stage * decay), fmap_max)`.

    A block at resolution 2**r uses nf(r - 1), i.e. the block of stage s uses nf(s + 1).
    """
    return min(int(fmap_base / 2.0 ** (stage * fmap_decay)), fmap_max)


_RGB_LAYERS = ("to_rgb_", "from_rgb_")


def is_active(module_name: str, stage: int) -> bool:
    """Whether a top-level module of either network takes part in the pass at `stage`.

    Module names end in their resolution (`conv1_32x32`): blocks up to the stage's resolution
    are active, and of the RGB layers only those of this stage and the previous one (the fade).
    """
    resolution = int(module_name.rsplit("_", 1)[1].split("x")[0])
    if module_name.startswith(_RGB_LAYERS):
        return resolution in (stages.stage_resolution(stage), stages.stage_resolution(stage) // 2)
    return resolution <= stages.stage_resolution(stage)


class _Growing(nn.Module):
    """Fields and helpers shared by both networks."""

    resolution: int = 1024
    num_channels: int = 3
    fmap_base: int = 8192
    fmap_max: int = 512
    fmap_decay: float = 1.0
    use_wscale: bool = True
    fused_scale: bool = True
    conv_gradients: str = "xla"  # conv.GRADIENT_RULES
    dtype: Any = jnp.float32

    @property
    def num_stages(self) -> int:
        return stages.num_stages(self.resolution)

    def nf(self, stage: int) -> int:
        return feature_maps(stage, self.fmap_base, self.fmap_max, self.fmap_decay)

    def conv(self, features: int, **kwargs) -> EqualizedConv:
        return EqualizedConv(
            features,
            use_wscale=self.use_wscale,
            fused=self.fused_scale,
            gradients=self.conv_gradients,
            dtype=self.dtype,
            **kwargs,
        )

    def dense(self, features: int, **kwargs) -> EqualizedDense:
        kwargs.setdefault("dtype", self.dtype)
        return EqualizedDense(features, use_wscale=self.use_wscale, **kwargs)

    def check_stage(self, stage: int) -> None:
        if not 0 <= stage < self.num_stages:
            raise ValueError(
                f"stage must be in [0, {self.num_stages - 1}] for resolution {self.resolution}, "
                f"got {stage}"
            )


class Generator(_Growing):
    """Latent [N, latent_size] -> image [N, r, r, num_channels] with r = 4 * 2**stage.

    The output is linear (no tanh), as in the official code; images live in [-1, 1]. With
    `label_size` classes it also takes one-hot labels [N, label_size], times `label_scale`,
    joined to the latent before the first PixelNorm, which so normalizes both (the official
    `combo_in`, whose scale is 1).
    """

    latent_size: int = 512
    label_size: int = 0
    label_scale: float = 1.0
    normalize_latents: bool = True
    use_pixelnorm: bool = True
    pixelnorm_epsilon: float = 1e-8
    dense_bias_per_unit: bool = False  # the first layer's bias: per feature map, or per unit

    def _norm(self, x: jax.Array) -> jax.Array:
        return pixel_norm(x, self.pixelnorm_epsilon) if self.use_pixelnorm else x

    def _block(self, x: jax.Array, stage: int) -> jax.Array:
        res = stages.stage_resolution(stage)
        nf = self.nf(stage + 1)
        if stage == 0:
            # Independent of use_pixelnorm, as in the official code.
            x = pixel_norm(x, self.pixelnorm_epsilon) if self.normalize_latents else x
            x = self.dense(
                nf,
                gain=SQRT2 / 4,
                map_shape=(4, 4),
                bias_per_unit=self.dense_bias_per_unit,
                name="dense_4x4",
            )(x)
            x = self._norm(leaky_relu(x))
            return self._norm(leaky_relu(self.conv(nf, name="conv_4x4")(x)))
        x = self._norm(leaky_relu(self.conv(nf, resample="up", name=f"conv0_up_{res}x{res}")(x)))
        return self._norm(leaky_relu(self.conv(nf, name=f"conv1_{res}x{res}")(x)))

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        *,
        stage: int,
        alpha: jax.Array | float,
        labels: jax.Array | None = None,
    ) -> jax.Array:
        self.check_stage(stage)
        if (labels is None) != (self.label_size == 0):
            raise ValueError(
                f"a generator of {self.label_size} classes takes "
                f"{'one-hot labels' if self.label_size else 'no labels'}"
            )
        to_rgb = [
            self.conv(self.num_channels, kernel_size=1, gain=1.0, name=f"to_rgb_{r}x{r}")
            for r in map(stages.stage_resolution, range(self.num_stages))
        ]
        last = self.num_stages - 1 if self.is_initializing() else stage
        features = []
        x = z
        if labels is not None:
            x = jnp.concatenate([z, self.label_scale * labels.astype(z.dtype)], axis=-1)
        for s in range(last + 1):
            x = self._block(x, s)
            features.append(x)
        if self.is_initializing():  # create every stage's toRGB
            for s in range(self.num_stages):
                to_rgb[s](features[s])
        image = to_rgb[stage](features[stage])
        if stage > 0:
            previous = upsample2x(to_rgb[stage - 1](features[stage - 1]))
            image = fade(previous, image, alpha)
        return at_least_float32(image)


class Critic(_Growing):
    """Image [N, r, r, num_channels] with r = 4 * 2**stage -> scores [N] (float32).

    With `label_size` classes its last dense layer has `1 + label_size` outputs, as the
    official critic's: it returns (scores [N], label logits [N, label_size]).
    """

    mbstd_group_size: int = 4
    mbstd_consecutive: bool = False  # groups of consecutive samples, not strided ones
    mbstd_unbiased: bool = False  # the groups' variance divides by G - 1, not G
    # Pool after the leaky ReLU, not before it: the official critic's separate resampling
    # (fused_scale=False) and pytorch_GAN_zoo's. The fused official one pools before it.
    downsample_after_activation: bool = False
    label_size: int = 0

    def _block(self, x: jax.Array, stage: int) -> jax.Array:
        res = stages.stage_resolution(stage)
        if stage == 0:
            if self.mbstd_group_size > 1:
                x = minibatch_stddev(
                    x, self.mbstd_group_size, self.mbstd_consecutive, self.mbstd_unbiased
                )
            x = leaky_relu(self.conv(self.nf(1), name="conv_4x4")(x))
            x = x.reshape(x.shape[0], -1)
            x = leaky_relu(self.dense(self.nf(0), name="dense0_4x4")(x))
            # The score in float32: bfloat16 would round it (and so the Wasserstein estimate
            # and the drift term) to 2**-9 of the terms it sums.
            wide = at_least_float32_dtype(self.dtype)
            return self.dense(1 + self.label_size, gain=1.0, dtype=wide, name="dense1_4x4")(x)
        x = leaky_relu(self.conv(self.nf(stage + 1), name=f"conv0_{res}x{res}")(x))
        name = f"conv1_down_{res}x{res}"
        if self.downsample_after_activation:
            return downsample2x(leaky_relu(self.conv(self.nf(stage), name=name)(x)))
        return leaky_relu(self.conv(self.nf(stage), resample="down", name=name)(x))

    @nn.compact
    def __call__(
        self, image: jax.Array, *, stage: int, alpha: jax.Array | float
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        self.check_stage(stage)
        expected = stages.stage_resolution(stage)
        if image.shape[1:3] != (expected, expected):
            raise ValueError(
                f"critic at stage {stage} expects {expected}x{expected} images, got {image.shape}"
            )
        from_rgb = [
            self.conv(self.nf(s + 1), kernel_size=1, name=f"from_rgb_{r}x{r}")
            for s, r in enumerate(map(stages.stage_resolution, range(self.num_stages)))
        ]
        if self.is_initializing():  # create every stage's fromRGB
            smaller = image
            for s in reversed(range(stage)):
                smaller = downsample2x(smaller)
                from_rgb[s](smaller)
        x = self._block(leaky_relu(from_rgb[stage](image)), stage)
        if stage > 0:
            previous = leaky_relu(from_rgb[stage - 1](downsample2x(image)))
            x = fade(previous, x, alpha)
            for s in reversed(range(stage)):
                x = self._block(x, s)
        return x[:, 0] if self.label_size == 0 else (x[:, 0], x[:, 1:])


def _common_kwargs(model: ml_collections.ConfigDict) -> dict:
    return dict(
        resolution=model.resolution,
        num_channels=model.num_channels,
        fmap_base=model.fmap_base,
        fmap_max=model.fmap_max,
        fmap_decay=model.fmap_decay,
        use_wscale=model.use_wscale,
        fused_scale=model.fused_scale,
        conv_gradients=conv_gradients(model.conv_gradients),
        dtype=jnp.dtype(model.compute_dtype),
    )


def conv_gradients(setting: str) -> str:
    """`model.conv_gradients` decided: 'auto' becomes the default backend's faster rules, once,
    when the networks are built (so a traced step never looks at the platform)."""
    return conv.gradient_rules_for(jax.default_backend()) if setting == "auto" else setting


def make_generator(model: ml_collections.ConfigDict) -> Generator:
    return Generator(
        latent_size=model.latent_size,
        label_size=model.label_size,
        label_scale=model.label_scale,
        normalize_latents=model.normalize_latents,
        use_pixelnorm=model.use_pixelnorm,
        pixelnorm_epsilon=model.pixelnorm_epsilon,
        dense_bias_per_unit=model.dense_bias_per_unit,
        **_common_kwargs(model),
    )


def make_critic(model: ml_collections.ConfigDict) -> Critic:
    return Critic(
        mbstd_group_size=model.mbstd_group_size,
        mbstd_consecutive=model.mbstd_consecutive,
        mbstd_unbiased=model.mbstd_unbiased,
        downsample_after_activation=model.downsample_after_activation,
        label_size=model.label_size,
        **_common_kwargs(model),
    )
