"""Layers (progan_jax.nets.layers) against NumPy references: normalisation, minibatch stddev,
resampling, equalized learning rate, fused resampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.nets import conv, layers


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_pixel_norm_gives_unit_rms_per_pixel():
    x = _rng().normal(size=(2, 3, 3, 16)).astype(np.float32) * 7.0
    y = np.asarray(layers.pixel_norm(jnp.asarray(x)))
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=-1)), 1.0, rtol=1e-5)
    # Direction is kept: it only rescales each feature vector.
    np.testing.assert_allclose(y * np.sqrt(np.mean(x**2, -1, keepdims=True)), x, rtol=1e-4)


def _numpy_minibatch_stddev(x: np.ndarray, group_size: int) -> np.ndarray:
    """The official TF layer, transcribed to NumPy (NHWC)."""
    n = x.shape[0]
    g = min(group_size, n)
    m = n // g
    out = np.empty(n)
    for group in range(m):
        members = x[group::m]  # sample i belongs to group i mod m
        std = np.sqrt(members.var(axis=0) + 1e-8)
        out[group::m] = std.mean()
    stat = np.broadcast_to(out[:, None, None, None], (*x.shape[:3], 1))
    return np.concatenate([x, stat], axis=-1)


@pytest.mark.parametrize("n,group", [(8, 4), (4, 4), (2, 4), (6, 3)])
def test_minibatch_stddev_matches_numpy_reference(n, group):
    x = _rng(n).normal(size=(n, 4, 4, 5)).astype(np.float32)
    got = np.asarray(layers.minibatch_stddev(jnp.asarray(x), group))
    np.testing.assert_allclose(got, _numpy_minibatch_stddev(x, group), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_groups_are_strided():
    # Samples 0 and 2 form one group of two, 1 and 3 the other: only the first pair differs.
    x = np.zeros((4, 1, 1, 1), np.float32)
    x[2] = 2.0
    stat = np.asarray(layers.minibatch_stddev(jnp.asarray(x), 2))[:, 0, 0, 1]
    np.testing.assert_allclose(stat, [1.0, 1e-4, 1.0, 1e-4], rtol=1e-3)


def test_minibatch_stddev_rejects_batch_not_divisible_by_group():
    with pytest.raises(ValueError, match="mbstd_group_size"):
        layers.minibatch_stddev(jnp.zeros((6, 4, 4, 2)), 4)


def test_resampling_ops():
    x = np.arange(2 * 2 * 2 * 1, dtype=np.float32).reshape(2, 2, 2, 1)
    up = np.asarray(layers.upsample2x(jnp.asarray(x)))
    np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))
    down = np.asarray(layers.downsample2x(jnp.asarray(up)))
    np.testing.assert_array_equal(down, x)
    y = _rng().normal(size=(1, 4, 4, 3)).astype(np.float32)
    expected = y.reshape(1, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(layers.downsample2x(jnp.asarray(y))), expected, rtol=1e-6)


def test_resampling_has_second_derivatives_under_jit():
    """The penalty differentiates the critic's pooling twice, inside the jitted step.
    f(x) = sum(down(up(x))**3) = sum(x**3): its gradient 3x**2, and d/dx sum((3x**2)**2)
    = 36 x**3."""

    def penalty_like(x):
        inner = jax.grad(lambda y: jnp.sum(layers.downsample2x(layers.upsample2x(y)) ** 3))
        return jnp.sum(inner(x) ** 2)

    x = _rng(5).normal(size=(2, 4, 4, 3)).astype(np.float32)
    got = jax.jit(jax.grad(penalty_like))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), 36 * x**3, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gain", [math.sqrt(2), 1.0])
def test_equalized_dense_scales_weights_at_run_time(gain):
    dense = layers.EqualizedDense(300, gain=gain)
    x = _rng().normal(size=(4, 200)).astype(np.float32)
    params = dense.init(jax.random.key(0), jnp.asarray(x))["params"]
    kernel = np.asarray(params["kernel"])
    assert abs(kernel.std() - 1.0) < 0.02  # stored as N(0, 1)
    assert abs(kernel.mean()) < 0.02
    bias = _rng(1).normal(size=300).astype(np.float32)
    params = {"kernel": params["kernel"], "bias": jnp.asarray(bias)}
    y = np.asarray(dense.apply({"params": params}, jnp.asarray(x)))
    np.testing.assert_allclose(y, x @ (kernel * gain / math.sqrt(200)) + bias, rtol=1e-4, atol=1e-4)


def test_equalized_dense_to_feature_maps_has_one_bias_per_map():
    """The official G's first layer: dense, reshape to [N, 4, 4, C], then a bias per map."""
    dense = layers.EqualizedDense(5, map_shape=(4, 4))
    x = _rng().normal(size=(2, 7)).astype(np.float32)
    params = dense.init(jax.random.key(0), jnp.asarray(x))["params"]
    assert params["kernel"].shape == (7, 4 * 4 * 5) and params["bias"].shape == (5,)
    bias = np.arange(5, dtype=np.float32)
    y = np.asarray(dense.apply({"params": {**params, "bias": jnp.asarray(bias)}}, jnp.asarray(x)))
    flat = x @ (np.asarray(params["kernel"]) * math.sqrt(2) / math.sqrt(7))
    np.testing.assert_allclose(y, flat.reshape(2, 4, 4, 5) + bias, rtol=1e-4, atol=1e-5)


def test_equalized_conv_uses_fan_in_of_kernel_and_channels():
    module = layers.EqualizedConv(8, kernel_size=3, gain=2.0)
    x = _rng().normal(size=(1, 5, 5, 6)).astype(np.float32)
    params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
    y = module.apply({"params": params}, jnp.asarray(x))
    scaled = params["kernel"] * 2.0 / math.sqrt(3 * 3 * 6)
    expected = jax.lax.conv_general_dilated(
        jnp.asarray(x), scaled, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rules", conv.GRADIENT_RULES)  # each has its own fused forms
@pytest.mark.parametrize("resample", ["up", "down"])
def test_fused_resampling_equals_separate_ops(resample, rules):
    x = jnp.asarray(_rng().normal(size=(2, 8, 8, 5)).astype(np.float32))
    fused = layers.EqualizedConv(7, resample=resample, fused=True, gradients=rules)
    separate = layers.EqualizedConv(7, resample=resample, fused=False, gradients=rules)
    params = fused.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # non-zero bias too
    a = fused.apply(params, x)
    b = separate.apply(params, x)
    assert a.shape == b.shape == ((2, 16, 16, 7) if resample == "up" else (2, 4, 4, 7))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
