"""WGAN-GP with drift against closed forms and finite differences."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from progan_jax.nets import losses
from progan_jax.nets.gan import GAN, create_train_state
from progan_jax.training import config_checks


def _loss(**settings) -> losses.WGANGP:
    """The default config's loss, but for `settings`."""
    return dataclasses.replace(losses.WGANGP.from_config(default.get_config().loss), **settings)


def _coupled_linear_critic(w, v, c):
    """D(x)_i = <w, x_i> + c * mean_j <v, x_j>: linear, with a cross-sample term like mbstd."""

    def critic(x):
        flat = x.reshape(x.shape[0], -1)
        return flat @ w + c * jnp.mean(flat @ v)

    return critic


def test_critic_loss_parts_match_closed_form():
    rng = np.random.default_rng(0)
    n, shape = 6, (2, 2, 3)
    dim = int(np.prod(shape))
    w, v = rng.normal(size=dim) * 0.3, rng.normal(size=dim)
    c = 0.7
    reals = rng.normal(size=(n, *shape)).astype(np.float32)
    fakes = rng.normal(size=(n, *shape)).astype(np.float32)
    critic = _coupled_linear_critic(jnp.asarray(w, jnp.float32), jnp.asarray(v, jnp.float32), c)
    wgan_gp = _loss(gp_weight=10.0, gp_target=1.0, drift_weight=1e-3)
    loss, parts = wgan_gp.critic_loss(critic, reals, fakes, jax.random.key(0), 1.0)

    score = lambda x: x.reshape(n, -1) @ w + c * np.mean(x.reshape(n, -1) @ v)
    real_s, fake_s = score(reals), score(fakes)
    # The gradient of the *sum* of scores w.r.t. sample i is w + c * v (the whole coupling term),
    # the same for every sample and every interpolation point.
    norm = np.linalg.norm(w + c * v)
    penalty = (norm - 1.0) ** 2
    expected = np.mean(fake_s - real_s + 10.0 * penalty + 1e-3 * real_s**2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(parts["gradient_norm"], norm, rtol=1e-5)
    np.testing.assert_allclose(parts["gradient_penalty"], penalty, rtol=1e-5)
    np.testing.assert_allclose(parts["wasserstein"], np.mean(real_s - fake_s), rtol=1e-5)
    np.testing.assert_allclose(parts["drift"], np.mean(real_s**2), rtol=1e-5)
    np.testing.assert_allclose(parts["real_score"], real_s.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts["fake_score"], fake_s.mean(), rtol=1e-5, atol=1e-6)


def test_penalty_target_normalisation():
    critic = _coupled_linear_critic(jnp.full(4, 0.5), jnp.zeros(4), 0.0)  # ||grad|| = 1
    penalty, norms = losses.gradient_penalty(critic, jnp.ones((3, 1, 2, 2)), target=2.0)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    np.testing.assert_allclose(penalty, (1.0 - 2.0) ** 2 / 4.0, rtol=1e-6)


@pytest.mark.slow
def test_penalty_of_the_real_critic_matches_finite_differences(tiny_config):
    """The gradient inside the penalty, for the ProGAN critic with minibatch stddev, against
    central differences of the summed scores in float64."""
    state = create_train_state(GAN.from_config(tiny_config), jax.random.key(0))
    with jax.enable_x64(True):
        tiny_config.model.compute_dtype = "float64"
        gan = GAN.from_config(tiny_config)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), state.critic_params)
        critic = jax.jit(gan.critic_fn(params, 1, 0.3))
        x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), jnp.float64, -1, 1)
        penalty, norms = losses.gradient_penalty(critic, x)
        grad = jax.grad(lambda y: jnp.sum(critic(y)))(x)
        flat = np.asarray(x).ravel()
        rng = np.random.default_rng(0)
        eps = 1e-6
        for index in rng.choice(flat.size, 12, replace=False):
            up, down = flat.copy(), flat.copy()
            up[index] += eps
            down[index] -= eps
            fd = (
                jnp.sum(critic(jnp.asarray(up).reshape(x.shape)))
                - jnp.sum(critic(jnp.asarray(down).reshape(x.shape)))
            ) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad).ravel()[index], fd, rtol=1e-5, atol=1e-8)
        expected_norms = np.linalg.norm(np.asarray(grad).reshape(4, -1), axis=1)
        np.testing.assert_allclose(norms, expected_norms, rtol=1e-10)
        np.testing.assert_allclose(penalty, (expected_norms - 1.0) ** 2, rtol=1e-10)


def test_generator_loss_is_negative_mean_score():
    critic = _coupled_linear_critic(jnp.ones(4), jnp.zeros(4), 0.0)
    fakes = jnp.arange(8.0).reshape(2, 1, 2, 2)
    np.testing.assert_allclose(_loss().generator_loss(critic, fakes), -np.mean([6.0, 22.0]))


def test_mixing_factor_is_drawn_per_sample():
    """D(x)_i = ||x_i||^2 / (2 sqrt(d)) has gradient x_i / sqrt(d): with reals 0 and fakes 1
    the norm at the mixing point is u_i itself. mean((u - 1)^2) - (mean(u) - 1)^2 = var(u) is
    1/12 for a u per sample, 0 for one shared by the batch (and ~0 for a u per pixel)."""
    n, shape = 256, (2, 2, 3)
    dim = int(np.prod(shape))
    critic = lambda x: jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) / (2 * dim**0.5)
    reals, fakes = jnp.zeros((n, *shape)), jnp.ones((n, *shape))
    _, parts = _loss(gp_target=1.0).critic_loss(critic, reals, fakes, jax.random.key(3), 1.0)
    mean_u = float(parts["gradient_norm"])
    var_u = float(parts["gradient_penalty"]) - (mean_u - 1.0) ** 2
    assert 0.06 < var_u < 0.11, var_u
    assert abs(mean_u - 0.5) < 0.06, mean_u


def _upscale(x: jax.Array, f: int) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, f, axis=1), f, axis=2)


def _avgpool(x: jax.Array, f: int) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


@pytest.mark.slow
@pytest.mark.parametrize("stage,f", [(0, 4), (1, 2)])
def test_official_penalty_scale_equals_upscaling_and_pooling(tiny_config, stage, f):
    """The official critic sees images nearest-upscaled by f and pools them back: the gradient
    w.r.t. its input has the native norm / f, and the 'official' loss is the native loss of
    that critic on the upscaled batch (the real ProGAN critic of a 16x16 run)."""
    gan = GAN.from_config(tiny_config)
    last = gan.generator.num_stages - 1
    assert gan.loss.gp_scale == "official" and gan.loss.gp_norm_scale(stage, last) == 1.0 / f
    params = create_train_state(gan, jax.random.key(0)).critic_params
    critic = gan.critic_fn(params, stage, 0.3)
    full_res = lambda x: critic(_avgpool(x, f))
    res = 4 * 2**stage
    reals, fakes, x = (
        jax.random.uniform(jax.random.key(i), (8, res, res, 3), minval=-1, maxval=1)
        for i in (1, 2, 3)
    )
    _, native = losses.gradient_penalty(critic, x)
    _, upscaled = losses.gradient_penalty(full_res, _upscale(x, f))
    np.testing.assert_allclose(upscaled, native / f, rtol=1e-5)

    key = jax.random.key(4)
    loss, parts = gan.loss.critic_loss(critic, reals, fakes, key, 1.0 / f)
    want_loss, want_parts = gan.loss.critic_loss(
        full_res, _upscale(reals, f), _upscale(fakes, f), key, 1.0
    )
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for name, value in want_parts.items():
        np.testing.assert_allclose(parts[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_penalty_scale_is_one_at_the_last_stage_and_native_is_unscaled():
    official, native = _loss(gp_scale="official"), _loss(gp_scale="native")
    assert [official.gp_norm_scale(s, 2) for s in range(3)] == [0.25, 0.5, 1.0]
    assert [native.gp_norm_scale(s, 2) for s in range(3)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("gp_scale", "upscaled", "must be one of official, native, got 'upscaled'"),
        ("gp_weight", -1.0, "must be >= 0, got -1.0"),
        ("drift_weight", -0.5, "must be >= 0, got -0.5"),
        ("gp_target", 0.0, "must be positive, got 0.0"),
    ],
)
def test_an_invalid_setting_is_refused_naming_its_field(tiny_config, field, value, message):
    """By the config check before a run, and by the loss itself however it is built."""
    config_checks.validate(tiny_config, devices=1)
    tiny_config.loss[field] = value
    want = f"config.loss.{field}: {message}"
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.validate(tiny_config, devices=1)
    assert str(error.value) == want
    with pytest.raises(config_checks.ConfigError) as error:
        _loss(**{field: value})
    assert str(error.value) == want


def test_the_loss_takes_its_settings_from_the_config_alone(tiny_config):
    """Every field of `config.loss` and nothing else: a setting the loss does not know is an
    error, not silently ignored."""
    loss = losses.WGANGP.from_config(tiny_config.loss)
    assert dataclasses.asdict(loss) == tiny_config.loss.to_dict()
    assert hash(loss) == hash(losses.WGANGP.from_config(tiny_config.loss))  # a static constant
    tiny_config.loss.unknown_weight = 1.0
    with pytest.raises(TypeError, match="unknown_weight"):
        losses.WGANGP.from_config(tiny_config.loss)


def _softmax_cross_entropy(logits: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(one_hot * log_probs).sum(axis=1)


def _linear_conditional_critic(w, m):
    """(scores <w, x_i>, label logits x_i M): the penalty must see the scores alone."""

    def critic(x):
        flat = x.reshape(x.shape[0], -1)
        return flat @ w, flat @ m

    return critic


def test_conditional_critic_loss_adds_the_class_terms_of_reals_and_fakes():
    rng = np.random.default_rng(1)
    n, shape, classes = 6, (2, 2, 3), 4
    dim = int(np.prod(shape))
    w, m = rng.normal(size=dim) * 0.3, rng.normal(size=(dim, classes))
    reals = rng.normal(size=(n, *shape)).astype(np.float32)
    fakes = rng.normal(size=(n, *shape)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    critic = _linear_conditional_critic(jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32))
    wgan_gp = _loss(gp_weight=10.0, gp_target=1.0, drift_weight=1e-3, cond_weight=0.5)
    loss, parts = wgan_gp.critic_loss(critic, reals, fakes, jax.random.key(0), 1.0, labels)

    flat = lambda x: x.reshape(n, -1).astype(np.float64)
    real_s, fake_s = flat(reals) @ w, flat(fakes) @ w
    real_ce = _softmax_cross_entropy(flat(reals) @ m, labels)
    fake_ce = _softmax_cross_entropy(flat(fakes) @ m, labels)
    penalty = (np.linalg.norm(w) - 1.0) ** 2  # of the scores only: the logits' M plays no part
    want = np.mean(fake_s - real_s + 10.0 * penalty + 1e-3 * real_s**2 + 0.5 * (real_ce + fake_ce))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(parts["label_penalty_reals"]), real_ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(parts["label_penalty_fakes"]), fake_ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(parts["gradient_penalty"]), penalty, rtol=1e-5)

    reals_only, parts = dataclasses.replace(wgan_gp, cond_fakes=False).critic_loss(
        critic, reals, fakes, jax.random.key(0), 1.0, labels
    )
    np.testing.assert_allclose(float(reals_only), want - 0.5 * fake_ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(parts["label_penalty_fakes"]), fake_ce.mean(), rtol=1e-5)


def test_conditional_generator_loss_adds_the_class_term_of_the_fakes():
    rng = np.random.default_rng(2)
    n, shape, classes = 5, (2, 2, 3), 3
    dim = int(np.prod(shape))
    w, m = rng.normal(size=dim), rng.normal(size=(dim, classes))
    fakes = rng.normal(size=(n, *shape)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    critic = _linear_conditional_critic(jnp.asarray(w, jnp.float32), jnp.asarray(m, jnp.float32))
    got = _loss(cond_weight=2.0).generator_loss(critic, fakes, labels)

    flat = fakes.reshape(n, -1).astype(np.float64)
    want = np.mean(-(flat @ w) + 2.0 * _softmax_cross_entropy(flat @ m, labels))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    unconditional = _loss(cond_weight=2.0).generator_loss(lambda x: critic(x)[0], fakes)
    np.testing.assert_allclose(float(unconditional), np.mean(-(flat @ w)), rtol=1e-5)
