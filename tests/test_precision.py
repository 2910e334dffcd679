"""Mixed precision: what bfloat16 compute keeps in float32, and float32 metrics.

bfloat16 keeps 8 significant bits: alpha = 0.999 rounds to 1 and 1/3 to 0.33398, and a sum
rounds to within 2**-9 of its size. The fade blends, the critic's score and the penalty's
gradient norm are computed in float32 from the bfloat16 layers' outputs, so they are checked
against float64 at float32's tolerance (a few ulps, 1e-6 of the values' size): bfloat16
rounding anywhere in them misses by about 2e-3.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.metrics import swd
from progan_jax.nets import losses
from progan_jax.nets.gan import GAN, create_train_state
from progan_jax.nets.layers import downsample2x, he_scale, upsample2x
from progan_jax.runtime import parallel
from progan_jax.training import config_checks, schedule, train_step

ALPHAS = [1 / 3, 0.999]  # both round in bfloat16


@pytest.fixture(scope="module")
def bf16_gan_and_state():
    from configs import tiny

    config = tiny.get_config()
    config.model.compute_dtype = "bfloat16"
    gan = GAN.from_config(config)
    return gan, create_train_state(gan, jax.random.key(0))


def _images(n: int, res: int, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, res, res, 3), minval=-1, maxval=1)


def _assert_float32_lerp(blend, at0, at1, alpha: float) -> None:
    """`blend` is `lerp(at0, at1, alpha)` as float32 computes it."""
    at0, at1 = np.asarray(at0, np.float64), np.asarray(at1, np.float64)
    scale = max(np.abs(at0).max(), np.abs(at1).max())
    assert blend.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(blend), at0 + (at1 - at0) * alpha, atol=1e-6 * scale)


def _with_input_of(module_name: str, fn):
    """`fn` jitted, returning also the input that module `module_name` is called with."""

    def run(*args):
        seen = []

        def record(next_fun, call_args, kwargs, context):
            if context.module.name == module_name and context.method_name == "__call__":
                seen.append(call_args[0])
            return next_fun(*call_args, **kwargs)

        with nn.intercept_methods(record):
            out = fn(*args)
        return out, seen[0]

    return jax.jit(run)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_generator_fade_is_float32_under_bfloat16(bf16_gan_and_state, alpha):
    """The two RGB paths do not depend on alpha: the output at alpha is their float32 blend."""
    gan, state = bf16_gan_and_state
    z = gan.sample_latents(jax.random.key(1), 4)
    generate = jax.jit(lambda a: gan.generate(state.generator_params, z, 2, a))
    at0, at1 = generate(jnp.float32(0.0)), generate(jnp.float32(1.0))
    _assert_float32_lerp(generate(jnp.float32(alpha)), at0, at1, alpha)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_critic_fade_is_float32_under_bfloat16(bf16_gan_and_state, alpha):
    """What the 8x8 block receives at stage 2 is the float32 blend of the fromRGB paths."""
    gan, state = bf16_gan_and_state
    images = _images(4, 16)
    critic = _with_input_of("conv0_8x8", lambda a: gan.critic_fn(state.critic_params, 2, a)(images))
    (_, at0), (_, at1) = critic(jnp.float32(0.0)), critic(jnp.float32(1.0))
    _assert_float32_lerp(critic(jnp.float32(alpha))[1], at0, at1, alpha)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_faded_reals_are_float32_whatever_the_images_dtype(alpha):
    reals = _images(2, 8).astype(jnp.bfloat16)
    wide = jnp.asarray(reals, jnp.float32)
    _assert_float32_lerp(
        train_step.fade_reals(reals, 1, alpha), upsample2x(downsample2x(wide)), wide, alpha
    )


def test_critic_score_is_float32_under_bfloat16(bf16_gan_and_state):
    """The last dense layer computes in float32 from the bfloat16 features it is given."""
    gan, state = bf16_gan_and_state
    critic = _with_input_of("dense1_4x4", gan.critic_fn(state.critic_params, 2, 0.5))
    scores, features = critic(_images(4, 16))
    layer = state.critic_params["dense1_4x4"]
    weights = np.asarray(layer["kernel"], np.float64) * he_scale(features.shape[-1], 1.0, True)
    terms = np.asarray(features, np.float64)[:, :, None] * weights
    want = terms.sum(axis=1)[:, 0] + float(layer["bias"][0])
    assert scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, want, atol=1e-6 * np.abs(terms).sum(axis=1).max())


def test_penalty_gradient_norm_is_float32_for_bfloat16_images():
    """A linear critic's input gradient is its weights, whose norm is known exactly."""
    weights = jax.random.normal(jax.random.key(0), (8, 8, 3))
    critic = lambda x: jnp.sum(x * weights, axis=(1, 2, 3))
    _, norms = losses.gradient_penalty(critic, _images(2, 8).astype(jnp.bfloat16))
    assert norms.dtype == jnp.float32
    np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(weights, np.float64)), rtol=1e-6)


def test_float16_is_refused_for_want_of_loss_scaling(tiny_config):
    tiny_config.model.compute_dtype = "float16"
    with pytest.raises(config_checks.ConfigError, match=r"compute_dtype: .*no loss scaling"):
        config_checks.validate(tiny_config, devices=1)


def _flat_update(state, initial, field: str) -> np.ndarray:
    """All of `state.<field>` minus `initial.<field>`, as one vector."""
    moved = jax.tree.map(
        lambda p, p0: np.ravel(p - p0), getattr(state, field), getattr(initial, field)
    )
    return np.concatenate(jax.tree.leaves(moved))


_SCORE_METRICS = ("real_score", "fake_score", "wasserstein", "generator_loss")


@pytest.mark.slow
def test_bfloat16_steps_track_float32(tiny_config):
    """Three steps of the 16x16 fade (alpha 1/8 to 3/8) from one state, float32 and bfloat16.

    Metrics: within 5%. bfloat16 rounds each activation to 2**-9 of its size; through the tiny
    networks' ten or so layers, forward and double backward, that compounds to about 1% in the
    first step's critic metrics (measured: 0.75% at most), and the updates taken in bfloat16
    add about as much over three steps (measured: 1.3% at most, 2.5% after six steps). Scores
    are compared against the scores' size: they are differences of terms of that size.

    Parameters: the difference between the two runs' updates is under half the float32
    update's norm. Adam (beta1 = 0) moves each parameter by about +-lr; where a gradient is
    near zero, its sign in bfloat16 may differ and the parameter moves 2 lr the other way
    (measured: 0.26 for G and 0.17 for D). Updates unrelated to float32's would be at sqrt(2).
    """
    stage, steps = 2, 3
    initial = create_train_state(GAN.from_config(tiny_config), jax.random.key(0))
    mesh = parallel.make_mesh(jax.devices()[:1])
    runs = {}
    for dtype in ("float32", "bfloat16"):
        tiny_config.model.compute_dtype = dtype
        gan = GAN.from_config(tiny_config)
        step = train_step.make_train_step(
            gan, mesh, schedule.Schedule.from_config(tiny_config).stage_schedule(stage)
        )
        state = jax.tree.map(jnp.copy, initial)  # steps donate their input state
        shown, history = jnp.int32(200), []  # 8 images into the 64-image fade
        for i in range(steps):
            images = np.asarray((_images(8, 16, seed=i) + 1) * 127.5, np.uint8)
            batch = {"images": images, "mirror": np.zeros(8, bool)}
            state, shown, metrics = step(state, batch, shown)
            history.append(metrics)
        runs[dtype] = (state, history)
    (want, want_history), (got, got_history) = runs["float32"], runs["bfloat16"]

    assert all(
        p.dtype == jnp.float32 for p in jax.tree.leaves((got.generator_params, got.critic_params))
    )
    for i, (got_metrics, want_metrics) in enumerate(zip(got_history, want_history, strict=True)):
        score_size = max(abs(float(want_metrics[k])) for k in ("real_score", "fake_score"))
        for name in (*_SCORE_METRICS, "gradient_norm", "gradient_penalty", "critic_loss"):
            assert got_metrics[name].dtype == jnp.float32
            size = score_size if name in _SCORE_METRICS else abs(float(want_metrics[name]))
            difference = abs(float(got_metrics[name]) - float(want_metrics[name]))
            assert difference <= 0.05 * size, (i, name, difference / size)
    for field in ("generator_params", "critic_params"):
        want_update = _flat_update(want, initial, field)
        got_update = _flat_update(got, initial, field)
        ratio = np.linalg.norm(got_update - want_update) / np.linalg.norm(want_update)
        assert ratio < 0.5, (field, ratio)


def test_swd_projections_run_at_highest_precision():
    """GPUs and TPUs would otherwise multiply in TF32 or bfloat16 passes: not the metric."""
    size = swd.NHOOD_SIZE
    descriptors = jnp.zeros((4, size, size, 3))
    directions = jnp.zeros((swd.DIR_REPEATS, size * size * 3, swd.DIRS_PER_REPEAT))
    text = swd.sliced_wasserstein.lower(descriptors, (descriptors,), directions).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert dots and all("HIGHEST" in line for line in dots), dots
