"""Convolutions (progan_jax.nets.conv) against NumPy references and XLA's own convolution
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.nets import conv, layers


def _rng(seed=0):
    return np.random.default_rng(seed)


def _xla_conv(x, w, padding):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "kernel,padding",
    [(3, ((1, 1), (1, 1))), (1, ((0, 0), (0, 0))), (2, ((1, 1), (1, 1))), (2, ((0, 0), (0, 0)))],
)
def test_conv_first_and_second_derivatives_match_xla(kernel, padding):
    """The custom VJP (matrix-product weight gradients) against XLA's convolution gradients,
    including the gradient of a gradient norm, which is what the gradient penalty needs."""
    rng = _rng(kernel)
    x = jnp.asarray(rng.normal(size=(3, 6, 5, 4)))
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 4, 7)))
    with jax.enable_x64(True):
        x, w = x.astype(jnp.float64), w.astype(jnp.float64)

        def loss(f):
            return lambda x, w: jnp.sum(jnp.sin(f(x, w, padding)))

        ours = loss(lambda x, w, padding: conv.conv(x, w, "matmul", padding))
        ref = loss(_xla_conv)
        for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)

        def penalty(f):  # d/d(x, w) of ||d f / d x||^2
            return lambda x, w: jnp.sum(jax.grad(f)(x, w) ** 2)

        got = jax.grad(penalty(ours), (0, 1))(x, w)
        want = jax.grad(penalty(ref), (0, 1))(x, w)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kernel,padding",  # 3x3 'SAME' takes XLA's filter gradient, the others the per-tap products
    [((3, 3), ((1, 1), (1, 1))), ((3, 3), ((2, 0), (0, 2))), ((2, 2), ((1, 1), (1, 1)))],
)
def test_weight_grad_matches_numpy_sum_over_positions(kernel, padding):
    rng = _rng(kernel[0] + padding[0][0])
    x = rng.normal(size=(2, 5, 6, 3))
    xp = np.pad(x, ((0, 0), *padding, (0, 0)))
    ho, wo = xp.shape[1] - kernel[0] + 1, xp.shape[2] - kernel[1] + 1
    dy = rng.normal(size=(2, ho, wo, 4))
    want = np.zeros((*kernel, 3, 4))
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            patch = xp[:, u : u + ho, v : v + wo, :]
            want[u, v] = np.einsum("npqi,npqo->io", patch, dy)
    with jax.enable_x64(True):
        got = conv.weight_grad(jnp.asarray(x), jnp.asarray(dy), kernel, padding)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("rules", conv.GRADIENT_RULES)
def test_fused_conv_gradients_match_separate_ops(rules):
    rng = _rng(3)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)).astype(np.float32))
    for fused, separate in [
        (
            lambda x, w: conv.upsample_conv(x, w, rules),
            lambda x, w: conv.conv(layers.upsample2x(x), w, rules),
        ),
        (
            lambda x, w: conv.conv_downsample(x, w, rules),
            lambda x, w: layers.downsample2x(conv.conv(x, w, rules)),
        ),
    ]:
        squares = [lambda x, w, f=f: jnp.sum(f(x, w) ** 2) for f in (fused, separate)]
        for argnum in (0, 1):
            a, b = (jax.grad(f, argnum)(x, w) for f in squares)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
