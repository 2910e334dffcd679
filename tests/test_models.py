"""The growing networks: shapes, parameter layout, fade-in semantics, paper parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import celeba_hq1024
from progan_jax.nets import models
from progan_jax.nets.gan import GAN, create_train_state
from progan_jax.nets.layers import count_params, downsample2x, pixel_norm, upsample2x
from progan_jax.runtime import stages


def _latents(n, size, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size))


def _images(n, res, channels=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, res, res, channels), minval=-1, maxval=1)


@pytest.mark.slow
def test_shapes_at_every_stage(tiny):
    config, gan, state = tiny
    z = _latents(4, config.model.latent_size)
    for stage in range(stages.num_stages(config.model.resolution)):
        res = stages.stage_resolution(stage)
        images = gan.generate(state.generator_params, z, stage, 0.5)
        assert images.shape == (4, res, res, 3) and images.dtype == jnp.float32
        scores = gan.critic_fn(state.critic_params, stage, 0.5)(images)
        assert scores.shape == (4,) and scores.dtype == jnp.float32


def test_every_stage_has_parameters_from_init(tiny):
    _, _gan, state = tiny
    names = set(state.generator_params)
    for res in (4, 8, 16):
        assert f"to_rgb_{res}x{res}" in names
        assert f"from_rgb_{res}x{res}" in state.critic_params
    assert {"conv0_up_16x16", "conv1_16x16"} <= names
    assert "conv1_down_16x16" in state.critic_params


def test_generator_fade_limits(tiny):
    config, gan, state = tiny
    z = _latents(4, config.model.latent_size, seed=1)
    for stage in (1, 2):
        # alpha = 0: exactly the previous stage's image, upsampled.
        previous = gan.generate(state.generator_params, z, stage - 1, 1.0)
        faded_out = gan.generate(state.generator_params, z, stage, 0.0)
        np.testing.assert_allclose(faded_out, upsample2x(previous), rtol=1e-5, atol=1e-5)
        # alpha = 1: the new path alone; the previous toRGB no longer matters.
        new = gan.generate(state.generator_params, z, stage, 1.0)
        res = stages.stage_resolution(stage - 1)
        perturbed = dict(state.generator_params)
        perturbed[f"to_rgb_{res}x{res}"] = jax.tree.map(
            lambda p: p + 1.0, perturbed[f"to_rgb_{res}x{res}"]
        )
        np.testing.assert_allclose(gan.generate(perturbed, z, stage, 1.0), new, atol=1e-5)
        assert not np.allclose(gan.generate(perturbed, z, stage, 0.5), new)
        # In between: linear in alpha.
        half = gan.generate(state.generator_params, z, stage, 0.5)
        np.testing.assert_allclose(half, 0.5 * (new + faded_out), rtol=1e-4, atol=1e-5)


def test_critic_fade_limits_and_uses_alpha(tiny):
    _, gan, state = tiny
    for stage in (1, 2):
        res = stages.stage_resolution(stage)
        images = _images(8, res, seed=stage)
        critic = lambda a, s=stage: gan.critic_fn(state.critic_params, s, a)
        # alpha = 0: the previous stage's critic on the 2x2-averaged image.
        np.testing.assert_allclose(
            critic(0.0)(images),
            critic(1.0, stage - 1)(downsample2x(images)),
            rtol=1e-4,
            atol=1e-5,
        )
        # A critic that ignores alpha is a known bug elsewhere: the scores must move with it.
        s0, s_half, s1 = (np.asarray(critic(a)(images)) for a in (0.0, 0.5, 1.0))
        assert np.abs(s0 - s_half).max() > 1e-3
        assert np.abs(s_half - s1).max() > 1e-3
        assert np.abs(s0 - s1).max() > 1e-3


def test_critic_rejects_wrong_resolution(tiny):
    _, gan, state = tiny
    with pytest.raises(ValueError, match="expects 8x8"):
        gan.critic_fn(state.critic_params, 1, 1.0)(_images(4, 16))
    with pytest.raises(ValueError, match="stage must be in"):
        gan.generate(state.generator_params, _latents(4, 16), 3, 1.0)


def test_official_parameter_counts():
    """The official 1024x1024 networks' exact counts (the paper's Table 2 says 23.1M each). G's
    first dense has one bias per feature map, added after the reshape, not one per unit."""
    gan = GAN.from_config(celeba_hq1024.get_config())
    shapes = jax.eval_shape(lambda: create_train_state(gan, jax.random.key(0)))
    assert shapes.generator_params["dense_4x4"]["bias"].shape == (512,)
    assert count_params(shapes.generator_params) == 23_079_115
    assert count_params(shapes.critic_params) == 23_087_249


@pytest.mark.parametrize("use_pixelnorm", [True, False])
def test_normalize_latents_acts_whatever_use_pixelnorm(tiny, use_pixelnorm):
    """The latent is pixel-normalised iff normalize_latents, independently of use_pixelnorm (as
    in the official code): G(z) with it is G(pixel_norm(z)) without it, and differs from G(z)."""
    config, _, state = tiny
    z = 3.0 * _latents(4, config.model.latent_size, seed=2)  # far from unit RMS
    # Non-zero biases: with the zero biases of init, PixelNorm would hide the latent's scale.
    params = jax.tree.map(lambda p: p + 0.1, state.generator_params)
    generators = {}
    for normalize in (True, False):
        model = config.model.copy_and_resolve_references()
        model.use_pixelnorm, model.normalize_latents = use_pixelnorm, normalize
        generator = models.make_generator(model)
        generators[normalize] = lambda x, g=generator: g.apply(
            {"params": params}, x, stage=1, alpha=0.5
        )
    with_norm = generators[True](z)
    np.testing.assert_allclose(with_norm, generators[False](pixel_norm(z)), rtol=1e-5, atol=1e-6)
    assert np.abs(with_norm - generators[False](z)).max() > 1e-3


@pytest.mark.slow
def test_grayscale_and_bfloat16(tiny_config):
    config = tiny_config  # a fresh config per test: the module-scoped `tiny` is shared
    config.model.num_channels = 1
    gan = GAN.from_config(config)
    state = create_train_state(gan, jax.random.key(0))
    images = gan.generate(state.generator_params, _latents(4, 16), 2, 0.3)
    assert images.shape == (4, 16, 16, 1)
    config.model.compute_dtype = "bfloat16"
    gan16 = GAN.from_config(config)
    images16 = gan16.generate(state.generator_params, _latents(4, 16), 2, 0.3)
    assert images16.dtype == jnp.float32  # outputs and parameters stay float32
    np.testing.assert_allclose(images16, images, atol=0.1)
    scores = gan16.critic_fn(state.critic_params, 2, 0.3)(images)
    np.testing.assert_allclose(scores, gan.critic_fn(state.critic_params, 2, 0.3)(images), atol=0.1)


@pytest.fixture(scope="module")
def conditional():
    """tiny's networks with 5 classes, and their initial state."""
    from configs import tiny

    config = tiny.get_config()
    config.model.label_size = 5
    gan = GAN.from_config(config)
    return config, gan, create_train_state(gan, jax.random.key(0))


def test_labels_join_the_latent_under_the_first_pixel_norm(conditional):
    """G's first layer reads latent and one-hot label together, normalized together (the
    official `combo_in`): scaling both leaves the images unchanged, scaling one does not."""
    config, gan, state = conditional
    latent = config.model.latent_size
    kernel = state.generator_params["dense_4x4"]["kernel"]
    assert kernel.shape[0] == latent + 5
    z = _latents(4, latent)
    one_hot = jax.nn.one_hot(jnp.array([0, 1, 2, 4]), 5)

    def images(z, labels):
        params = {"params": state.generator_params}
        return gan.generator.apply(params, z, stage=1, alpha=0.5, labels=labels)

    np.testing.assert_allclose(images(3 * z, 3 * one_hot), images(z, one_hot), atol=1e-5)
    assert not np.allclose(images(3 * z, one_hot), images(z, one_hot), atol=1e-3)
    np.testing.assert_array_equal(
        gan.generate(state.generator_params, z, 1, 0.5, jnp.array([0, 1, 2, 4])), images(z, one_hot)
    )
    with pytest.raises(ValueError, match="5 classes takes one-hot labels"):
        gan.generate(state.generator_params, z, 1, 0.5)


def test_label_scale_multiplies_the_one_hot_beside_the_latent(conditional):
    """`model.label_scale` is the one-hot's value before the first PixelNorm: a G of scale 3
    draws, from the same parameters, what a G of scale 1 draws from labels three times one-hot;
    and at a larger scale the class moves the images further from the latent's."""
    config, gan, state = conditional
    z = _latents(4, config.model.latent_size)
    one_hot = jax.nn.one_hot(jnp.array([0, 1, 2, 4]), 5)
    params = {"params": state.generator_params}

    def images(scale, labels):
        generator = gan.generator.clone(label_scale=scale)
        return generator.apply(params, z, stage=1, alpha=0.5, labels=labels)

    np.testing.assert_allclose(images(3.0, one_hot), images(1.0, 3 * one_hot), atol=1e-5)
    other = jax.nn.one_hot(jnp.array([1, 2, 4, 0]), 5)
    change = [float(jnp.abs(images(s, other) - images(s, one_hot)).mean()) for s in (1.0, 10.0)]
    assert change[1] > 2 * change[0]


def test_the_critic_adds_a_logit_per_class(conditional):
    _, gan, state = conditional
    images = _images(4, 8)
    scores, logits = gan.critic_fn(state.critic_params, 1, 0.5)(images)
    assert scores.shape == (4,) and logits.shape == (4, 5)
    assert scores.dtype == logits.dtype == jnp.float32
    assert state.critic_params["dense1_4x4"]["kernel"].shape[-1] == 1 + 5


def test_label_gradients_reach_the_generators_input_layer(conditional):
    """The class term of G's loss trains G's label inputs: the first layer's rows of the
    classes asked for get gradients, those of classes not asked for none."""
    config, gan, state = conditional
    labels = jnp.array([1, 1, 3, 3])

    def loss(params):
        fakes = gan.generate(params, _latents(4, config.model.latent_size), 1, 0.5, labels)
        critic = gan.critic_fn(state.critic_params, 1, 0.5)
        return gan.loss.generator_loss(critic, fakes, gan.one_hot(labels))

    grads = jax.grad(loss)(state.generator_params)["dense_4x4"]["kernel"]
    label_rows = np.abs(np.asarray(grads[config.model.latent_size :])).reshape(5, -1).sum(axis=1)
    assert (label_rows[[1, 3]] > 0).all() and (label_rows[[0, 2, 4]] == 0).all()
