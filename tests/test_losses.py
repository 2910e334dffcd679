"""WGAN-GP with drift against closed forms and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np

from progan_jax import losses
from progan_jax.gan import GAN, create_train_state


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
    loss, parts = losses.critic_loss(critic, reals, fakes, jax.random.key(0), 10.0, 1.0, 1e-3)

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


def test_penalty_of_the_real_critic_matches_finite_differences(tiny_config):
    """The gradient inside the penalty, for the ProGAN critic with minibatch stddev, against
    central differences of the summed scores in float64."""
    state = create_train_state(GAN.from_config(tiny_config), jax.random.key(0))
    with jax.enable_x64(True):
        tiny_config.model.compute_dtype = "float64"
        gan = GAN.from_config(tiny_config)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), state.d_params)
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
    np.testing.assert_allclose(losses.generator_loss(critic, fakes), -np.mean([6.0, 22.0]))
