"""Building blocks of ProGAN: equalized-learning-rate layers and the parameter-free ops.

All tensors are NHWC. Weights are stored as N(0, 1) and multiplied by He's constant
`gain / sqrt(fan_in)` at run time ("equalized learning rate"): Adam's per-parameter
normalisation then gives every layer the same effective learning rate.
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from progan_jax.nets import conv

SQRT2 = math.sqrt(2.0)
LEAKY_SLOPE = 0.2


def leaky_relu(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


def lerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """`a` at t=0, `b` at t=1."""
    return a + (b - a) * t


# Both resamplings are written as XLA's own windowed operations, not as reshapes to
# [n, h, 2, w, 2, c]: TPUs tile an array's two minor dimensions to (8, 128), so those 6-D
# forms of an RGB image (minor dimensions 2 and 3) take ~100x its memory (docs/performance.md,
# "Memory on TPUs").


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling: a stride-2 transposed convolution with a 2x2 kernel
    of ones, one channel at a time (each output pixel copies the one input pixel it sees)."""
    c = x.shape[-1]
    ones = jnp.ones((2, 2, 1, c), x.dtype)
    return jax.lax.conv_general_dilated(
        x,
        ones,
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,  # a copy: no bfloat16 passes on TPU or GPU
    )


def downsample2x(x: jax.Array) -> jax.Array:
    """2x2 average pooling."""
    # A NumPy zero, so that JAX sees a sum (and differentiates it) even inside a trace.
    total = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, (1, 2, 2, 1),
                                  (1, 2, 2, 1), "VALID")  # fmt: skip
    return total * jnp.asarray(0.25, x.dtype)


def at_least_float32_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def at_least_float32(x: jax.Array) -> jax.Array:
    """Statistics and outputs are kept in (at least) float32 under bfloat16 compute."""
    return x.astype(at_least_float32_dtype(x.dtype))


def fade(old: jax.Array, new: jax.Array, alpha: jax.Array | float) -> jax.Array:
    """`lerp(old, new, alpha)` in at least float32, whatever the compute dtype.

    bfloat16 keeps 8 significant bits: it would round alpha = 0.999 to 1 (the fade's end
    skipped) and 1/3 to 0.334, and round the blend to 2**-9 of its size.
    """
    old, new = at_least_float32(old), at_least_float32(new)
    return lerp(old, new, jnp.asarray(alpha, new.dtype))


def pixel_norm(x: jax.Array, epsilon: float = 1e-8) -> jax.Array:
    """Normalises each pixel's feature vector to unit RMS."""
    wide = at_least_float32(x)
    norm = jax.lax.rsqrt(jnp.mean(jnp.square(wide), axis=-1, keepdims=True) + epsilon)
    return (wide * norm).astype(x.dtype)


def minibatch_stddev(
    x: jax.Array, group_size: int, consecutive: bool = False, unbiased: bool = False
) -> jax.Array:
    """Appends one feature map: the average stddev of the features over a group of samples.

    Groups are strided as in the official code (`reshape([G, -1, ...])`): sample i belongs to
    group i mod (N / G); `consecutive` groups (pytorch_GAN_zoo's) hold samples i // G. The
    variance divides by G, or by G - 1 if `unbiased` (pytorch_GAN_zoo's; a group of one
    then has a stddev of 0). The group size is clipped to the batch this layer sees (one
    device's shard), which must then divide by it.
    """
    n, h, w, c = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(
            f"minibatch stddev: the per-device batch ({n}) must be divisible by the group size "
            f"({g}); change model.mbstd_group_size or the batch size."
        )
    wide = at_least_float32(x)
    y = wide.reshape(n // g, g, h, w, c) if consecutive else wide.reshape(g, n // g, h, w, c)
    member = 1 if consecutive else 0
    y = y - y.mean(axis=member, keepdims=True)
    if unbiased and g == 1:
        y = jnp.zeros((n // g,), y.dtype)
    else:
        divisor = g - 1 if unbiased else g
        y = jnp.sqrt(jnp.sum(jnp.square(y), axis=member) / divisor + 1e-8)
        y = y.mean(axis=(1, 2, 3))  # one value per group
    # sample i -> group i // g (consecutive) or i mod (n // g) (strided)
    y = (jnp.repeat(y, g) if consecutive else jnp.tile(y, g)).astype(x.dtype)
    stat = jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1))
    return jnp.concatenate([x, stat], axis=-1)


def he_scale(fan_in: int, gain: float, use_wscale: bool) -> float:
    return gain / math.sqrt(fan_in) if use_wscale else 1.0


def _weight_init(fan_in: int, gain: float, use_wscale: bool) -> Callable:
    """N(0, 1) with equalized LR; otherwise He init folded into the stored weights."""
    std = 1.0 if use_wscale else gain / math.sqrt(fan_in)
    return nn.initializers.normal(stddev=std)


class EqualizedDense(nn.Module):
    """Dense layer with run-time He scaling.

    With `map_shape=(h, w)` it maps to `[N, h, w, features]` feature maps with one bias per
    map, added after the reshape: the official generator's first layer, whose bias is not one
    per output unit (that would be h * w times as many parameters).
    """

    features: int
    gain: float = SQRT2
    use_wscale: bool = True
    dtype: jnp.dtype = jnp.float32
    map_shape: tuple[int, ...] = ()  # () for a plain dense layer
    # With map_shape: one bias per output unit instead (pytorch_GAN_zoo's first layer).
    bias_per_unit: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        units = math.prod(self.map_shape) * self.features
        kernel = self.param(
            "kernel", _weight_init(fan_in, self.gain, self.use_wscale), (fan_in, units)
        )
        bias_shape = (*self.map_shape, self.features) if self.bias_per_unit else (self.features,)
        bias = self.param("bias", nn.initializers.zeros, bias_shape)
        w = (kernel * he_scale(fan_in, self.gain, self.use_wscale)).astype(self.dtype)
        y = jnp.dot(x.astype(self.dtype), w)
        return y.reshape(*x.shape[:-1], *self.map_shape, self.features) + bias.astype(self.dtype)


class EqualizedConv(nn.Module):
    """Square convolution ('SAME' padding) with run-time He scaling.

    `resample='up'` computes conv(upsample2x(x)) and `resample='down'` computes
    downsample2x(conv(x)); with `fused=True` both run as one cheaper convolution over the
    low-resolution grid (2.25x fewer FLOPs for a 3x3 kernel), as the official code's
    `fused_scale` does. The parameters and the result are the same either way.
    """

    features: int
    kernel_size: int = 3
    gain: float = SQRT2
    resample: str | None = None
    fused: bool = True
    use_wscale: bool = True
    gradients: str = "xla"  # conv.GRADIENT_RULES: how the convolutions are differentiated
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = k * k * x.shape[-1]
        kernel = self.param(
            "kernel",
            _weight_init(fan_in, self.gain, self.use_wscale),
            (k, k, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        w = (kernel * he_scale(fan_in, self.gain, self.use_wscale)).astype(self.dtype)
        x = x.astype(self.dtype)
        rules = self.gradients
        if self.resample == "up":
            y = (
                conv.upsample_conv(x, w, rules)
                if self.fused
                else conv.conv(upsample2x(x), w, rules)
            )
        elif self.resample == "down":
            y = (
                conv.conv_downsample(x, w, rules)
                if self.fused
                else downsample2x(conv.conv(x, w, rules))
            )
        elif self.resample is None:
            y = conv.conv(x, w, rules)
        else:
            raise ValueError(f"resample must be None, 'up' or 'down', got {self.resample!r}")
        return y + bias.astype(self.dtype)


def count_params(tree) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(tree)))
