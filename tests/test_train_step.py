"""The data-parallel train step: multi-device equivalence, EMA, compile count, learning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from progan_jax.nets import gan as gan_lib
from progan_jax.runtime import parallel
from progan_jax.training import schedule, train_step


@pytest.fixture(scope="module")
def gan_and_state():
    from configs import tiny

    gan = gan_lib.GAN.from_config(tiny.get_config())
    return gan, gan_lib.create_train_state(gan, jax.random.key(0))


def _copy(state):
    return jax.tree.map(jnp.copy, state)  # steps donate their input state


def _reals(n, res, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, res, res, 3), minval=-1, maxval=1)


def _batch(n, res, seed=0):
    """A stream batch: random uint8 images, every other one to be mirrored."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, res, res, 3), np.uint8)
    return {"images": jnp.asarray(images), "mirror": jnp.arange(n) % 2 == 1}


def _plan(stage, alpha=1.0, lr=1e-3, batch=8):
    """A stage schedule whose fade runs over images 0..1000, and the count at which its
    alpha is `alpha`."""
    plan = schedule.StageSchedule(stage, batch, lr, fade_start=0, fade_end=1000)
    return plan, jnp.int32(round(alpha * 1000))


def test_decode_reals_converts_and_mirrors_like_numpy():
    batch = _batch(4, 8, seed=3)
    images = np.asarray(batch["images"]).astype(np.float64) / 127.5 - 1.0
    flags = np.asarray(batch["mirror"])
    images[flags] = images[flags][:, :, ::-1]
    got = jax.jit(train_step.decode_reals)(batch)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, images, rtol=0, atol=1e-6)
    assert not np.allclose(got[1], got[1][:, ::-1])  # a flip that could be missed shows


@pytest.mark.parametrize("offset", [0, 1, 21, 63, 64, 127])
def test_alpha_on_the_device_follows_the_host_schedule(offset, tiny_config):
    """At every point of stage 1 (a 64-image fade, then 64 stabilizing) and of stage 0."""
    stage_plan = schedule.Schedule.from_config(tiny_config).stage_schedule(1)
    images = stage_plan.fade_start + offset
    phase = schedule.Schedule.from_config(tiny_config).phase_at(images)
    assert phase.stage == 1
    assert float(stage_plan.alpha(jnp.int32(images))) == pytest.approx(
        phase.alpha(images), abs=1e-7
    )
    assert (
        float(schedule.Schedule.from_config(tiny_config).stage_schedule(0).alpha(jnp.int32(offset)))
        == 1.0
    )


@pytest.mark.slow
def test_eight_devices_equal_per_shard_gradients_averaged(gan_and_state):
    gan, state = gan_and_state
    assert jax.device_count() == 8
    stage, alpha, lr = 2, 0.4, 2e-3
    batch = _batch(16, 16)
    reals = train_step.decode_reals(batch)
    mesh = parallel.make_mesh()
    plan, shown = _plan(stage, alpha, lr, batch=16)
    step = train_step.make_train_step(gan, mesh, plan)
    sharded, next_shown, metrics = step(
        jax.device_put(_copy(state), parallel.replicated(mesh)),
        jax.device_put(batch, parallel.data_sharded(mesh)),
        jax.device_put(shown, parallel.replicated(mesh)),
    )
    assert int(next_shown) == 400 + 16 and float(metrics["alpha"]) == pytest.approx(alpha)

    # The same step by hand on one device: each shard with its own keys, gradients averaged.
    critic_gradients = jax.jit(
        lambda r, k: train_step.critic_gradients(gan, state, r, k, stage, alpha)
    )
    generator_gradients = jax.jit(
        lambda d, k: train_step.generator_gradients(
            gan, state.generator_params, d, k, 2, stage, alpha
        )
    )
    shards = [train_step.fade_reals(r, stage, alpha) for r in jnp.split(reals, 8)]
    keys = [train_step.step_keys(state.rng, i) for i in range(8)]
    d_parts = [critic_gradients(r, k[1]) for r, k in zip(shards, keys, strict=True)]
    critic_grads = jax.tree.map(lambda *g: sum(g) / 8, *[g for g, _ in d_parts])
    critic_params, _ = train_step.adam_update(
        gan, state.critic_params, critic_grads, state.critic_opt_state, lr
    )
    g_parts = [generator_gradients(critic_params, k[2]) for k in keys]
    generator_grads = jax.tree.map(lambda *g: sum(g) / 8, *[g for g, _ in g_parts])
    generator_params, _ = train_step.adam_update(
        gan, state.generator_params, generator_grads, state.generator_opt_state, lr
    )

    for got, want in [
        (sharded.critic_params, critic_params),
        (sharded.generator_params, generator_params),
    ]:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        metrics["critic_loss"], np.mean([float(p["critic_loss"]) for _, p in d_parts]), rtol=1e-5
    )
    np.testing.assert_array_equal(jax.random.key_data(sharded.rng), jax.random.key_data(keys[0][0]))
    assert int(sharded.step) == 1
    # Every device holds the same state.
    leaf = jax.tree.leaves(sharded.generator_params)[0]
    copies = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(copies) == 8 and all(np.array_equal(copies[0], c) for c in copies)


@pytest.mark.slow
def test_generator_ema_follows_the_new_parameters(gan_and_state):
    gan, state = gan_and_state
    mesh = parallel.make_mesh(jax.devices()[:1])
    stage = 1
    ema_before = state.generator_ema_params
    new, _, _ = train_step.make_train_step(gan, mesh, _plan(stage)[0])(
        _copy(state), _batch(8, 8), _plan(stage, 0.5)[1]
    )
    active, inactive = train_step.split_active(new.generator_params, stage)
    assert "conv1_8x8" in active and "conv1_16x16" in inactive and "to_rgb_4x4" in active
    for name in active:
        expected = jax.tree.map(
            lambda e, g: 0.999 * e + 0.001 * g, ema_before[name], new.generator_params[name]
        )
        for a, b in zip(
            jax.tree.leaves(new.generator_ema_params[name]), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    moved = [
        n
        for n in active
        if not np.allclose(new.generator_params[n]["kernel"], state.generator_params[n]["kernel"])
    ]
    assert set(moved) == set(active)
    for name in inactive:  # untouched, and still identical to G
        np.testing.assert_array_equal(
            new.generator_ema_params[name]["kernel"], state.generator_params[name]["kernel"]
        )
        np.testing.assert_array_equal(
            new.generator_params[name]["kernel"], state.generator_params[name]["kernel"]
        )


@pytest.mark.slow
def test_one_compile_per_stage_as_alpha_moves_on_the_device(gan_and_state):
    gan, state = gan_and_state
    mesh = parallel.make_mesh(jax.devices()[:2])
    plan, shown = _plan(1, alpha=0.0)
    step = train_step.make_train_step(gan, mesh, plan)
    current = jax.device_put(_copy(state), parallel.replicated(mesh))
    batch = jax.device_put(_batch(8, 8), parallel.data_sharded(mesh))
    shown = jax.device_put(shown, parallel.replicated(mesh))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: (
            compiles.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
    )
    alphas = []
    for _ in range(4):
        current, shown, metrics = step(current, batch, shown)
        alphas.append(float(metrics["alpha"]))
    assert int(current.step) == 4 and int(shown) == 32
    for count in (500, 1000, 1200):  # mid-fade, its end and past it
        count = jax.device_put(jnp.int32(count), parallel.replicated(mesh))
        current, _, metrics = step(current, batch, count)
        alphas.append(float(metrics["alpha"]))  # the value train.py logs
    assert len(compiles) == 1
    np.testing.assert_allclose(alphas, [0.0, 0.008, 0.016, 0.024, 0.5, 1.0, 1.0], rtol=1e-6)


@pytest.mark.slow
def test_reset_optimizer_states(gan_and_state):
    gan, state = gan_and_state
    mesh = parallel.make_mesh(jax.devices()[:1])
    plan, shown = _plan(0)
    new, _, _ = train_step.make_train_step(gan, mesh, plan)(_copy(state), _batch(8, 4), shown)
    assert int(new.critic_opt_state.count) == 1
    assert np.abs(new.critic_opt_state.nu["conv_4x4"]["kernel"]).max() > 0
    reset = gan_lib.reset_optimizer_states(gan, new)
    for opt in (reset.generator_opt_state, reset.critic_opt_state):
        assert int(opt.count) == 0
        assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves((opt.mu, opt.nu)))
    assert reset.generator_params is new.generator_params


@pytest.mark.slow
def test_a_few_steps_on_a_toy_target_drive_the_losses_the_right_way(gan_and_state):
    """Reals of one colour: the critic first learns to separate them from the fakes (the
    Wasserstein estimate rises), then G matches the colour and the estimate falls again."""
    gan, state = gan_and_state
    colour = np.broadcast_to(np.array([204, 76, 153], np.uint8), (8, 4, 4, 3))
    batch = {"images": jnp.asarray(colour), "mirror": jnp.zeros(8, bool)}
    target = train_step.decode_reals(batch)[0, 0, 0]  # about (0.6, -0.4, 0.2)
    z = gan.sample_latents(jax.random.key(7), 64)

    def colour_error(params):
        return float(jnp.abs(gan.generate(params, z, 0, 1.0).mean(axis=(0, 1, 2)) - target).mean())

    plan, shown = _plan(0, lr=5e-3)
    step = train_step.make_train_step(gan, parallel.make_mesh(jax.devices()[:1]), plan)
    current = _copy(state)
    wasserstein = []
    for _ in range(150):
        current, shown, metrics = step(current, batch, shown)
        wasserstein.append(float(metrics["wasserstein"]))
        assert np.isfinite(float(metrics["critic_loss"]))
    assert colour_error(current.generator_params) < 0.25 * colour_error(state.generator_params)
    peak = max(wasserstein)
    assert peak > 1.0 and peak > 3 * abs(wasserstein[0])
    assert np.mean(wasserstein[-20:]) < 0.5 * peak


@pytest.mark.slow
def test_adam_matches_optax_on_the_active_modules(gan_and_state):
    gan, state = gan_and_state
    active, _ = train_step.split_active(state.critic_params, 0)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), active)
    new, opt = train_step.adam_update(gan, state.critic_params, grads, state.critic_opt_state, 1e-2)
    reference = optax.adam(1e-2, b1=0.0, b2=0.99, eps=1e-8)
    updates, _ = reference.update(grads, reference.init(active))
    for name in active:
        expected = optax.apply_updates(state.critic_params[name], updates[name])
        np.testing.assert_allclose(new[name]["kernel"], expected["kernel"], rtol=1e-6)
    assert new["conv1_down_16x16"] is state.critic_params["conv1_down_16x16"]
    assert int(opt.count) == 1


def _official_fade_lod(reals_nhwc: np.ndarray, alpha: float) -> np.ndarray:
    """The official `process_reals` 'FadeLOD' in NCHW: 2x2 block means tiled back, then
    `lerp(x, y, lod - floor(lod))`, where the lod fraction is 1 - alpha during a fade-in."""
    x = reals_nhwc.transpose(0, 3, 1, 2)
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), keepdims=True)
    y = np.tile(y, (1, 1, 1, 2, 1, 2)).reshape(n, c, h, w)
    lod_fraction = 1.0 - alpha
    return (x + (y - x) * lod_fraction).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_fade_reals_matches_the_official_process_reals(stage, alpha):
    reals = np.asarray(_reals(4, 4 * 2**stage, seed=stage))
    got = train_step.fade_reals(jnp.asarray(reals), stage, jnp.float32(alpha))
    np.testing.assert_allclose(got, _official_fade_lod(reals, alpha), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage,ratio", [(2, 1.0), (1, 0.5)])
def test_penalty_scales_agree_only_at_the_last_stage(gan_and_state, stage, ratio):
    """`critic_gradients` passes the stage's norm scale: 'official' and 'native' give the same step
    at the last stage, and a penalised norm half the native one a stage earlier."""
    gan, state = gan_and_state
    reals = train_step.fade_reals(_reals(8, 4 * 2**stage), stage, 0.5)
    native = dataclasses.replace(gan, loss=dataclasses.replace(gan.loss, gp_scale="native"))
    results = [
        train_step.critic_gradients(g, state, reals, jax.random.key(5), stage, 0.5)
        for g in (gan, native)
    ]
    (official_grads, official), (native_grads, native) = results
    np.testing.assert_allclose(
        official["gradient_norm"], ratio * native["gradient_norm"], rtol=1e-5
    )
    same = all(
        np.allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves(official_grads), jax.tree.leaves(native_grads), strict=True)
    )
    assert same == (ratio == 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_both_conv_gradient_rules_give_the_same_step(stage, tiny_config):
    """The CPU-fast rules ('matmul') and XLA's ('xla', what GPUs and TPUs run) differentiate the
    same maths: the critic's gradients (with the penalty's double backward) and the
    generator's agree, at a fade (both RGB paths) and at the last stage."""
    gans = {}
    for rules in ("matmul", "xla"):
        tiny_config.model.conv_gradients = rules
        gans[rules] = gan_lib.GAN.from_config(tiny_config)
        assert gans[rules].critic.conv_gradients == rules
    state = gan_lib.create_train_state(gans["xla"], jax.random.key(3))
    reals = train_step.fade_reals(_reals(8, 4 * 2**stage, seed=1), stage, 0.6)
    key = jax.random.key(4)
    grads = {}
    for rules, gan in gans.items():
        critic_grads, parts = jax.jit(
            lambda r, k, gan=gan: train_step.critic_gradients(gan, state, r, k, stage, 0.6)
        )(reals, key)
        generator_grads, _ = jax.jit(
            lambda d, k, gan=gan: train_step.generator_gradients(
                gan, state.generator_params, d, k, 8, stage, 0.6
            )
        )(state.critic_params, key)
        grads[rules] = (critic_grads, generator_grads, parts["gradient_penalty"])
    assert float(grads["xla"][2]) > 0  # the penalty takes part
    for a, b in zip(jax.tree.leaves(grads["matmul"]), jax.tree.leaves(grads["xla"]), strict=True):
        scale = float(np.max(np.abs(np.asarray(b)))) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)


def test_auto_conv_gradients_are_decided_by_platform_when_the_networks_are_built(
    tiny_config, monkeypatch
):
    assert gan_lib.GAN.from_config(tiny_config).critic.conv_gradients == "matmul"  # a CPU run
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    gan = gan_lib.GAN.from_config(tiny_config)
    assert (gan.generator.conv_gradients, gan.critic.conv_gradients) == ("xla", "xla")


def test_unknown_conv_gradients_is_a_config_error(tiny_config):
    from progan_jax.training import config_checks

    tiny_config.model.conv_gradients = "cudnn"
    with pytest.raises(config_checks.ConfigError, match=r"model\.conv_gradients: .*'cudnn'"):
        config_checks.validate(tiny_config, devices=1)


@pytest.mark.slow
def test_rematerialization_recomputes_and_gives_the_same_gradients(gan_and_state):
    """`model.rematerialize` recomputes activations in the backward passes (the penalty's
    double backward included) and gives the same gradients. What it saves is measured where
    it matters, on TPU programs (README, "TPUs and GPUs")."""
    gan, state = gan_and_state
    reals = train_step.fade_reals(_reals(8, 16, seed=2), 2, 0.6)
    results = []
    for remat in (False, True):
        g = dataclasses.replace(gan, rematerialize=remat)

        def grads(state, reals, g=g):
            critic_grads, parts = train_step.critic_gradients(
                g, state, reals, jax.random.key(1), 2, 0.6
            )
            generator_grads, _ = train_step.generator_gradients(
                g, state.generator_params, state.critic_params, jax.random.key(2), 8, 2, 0.6
            )
            return critic_grads, generator_grads, parts["gradient_penalty"]

        lowered = jax.jit(grads).lower(state, reals)
        assert ("optimization_barrier" in lowered.as_text()) == remat  # recomputation
        results.append(lowered.compile()(state, reals))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_conditional_step_labels_fakes_like_the_reals_and_draws_gs_from_the_data():
    """The critic's fakes carry the reals' labels (official `D_wgangp_acgan`); G's labels are
    drawn from the data set's class shares (`get_random_labels`): with all the data in one
    class, G is asked for that class alone."""
    from configs import tiny

    config = tiny.get_config()
    config.model.label_size = 3
    gan = gan_lib.GAN.from_config(config)
    state = gan_lib.create_train_state(gan, jax.random.key(0))
    stage, alpha = 1, 0.5
    reals = train_step.fade_reals(train_step.decode_reals(_batch(4, 8)), stage, alpha)
    labels = jnp.array([2, 0, 1, 2])
    key = jax.random.key(5)

    _, parts = train_step.critic_gradients(gan, state, reals, key, stage, alpha, labels)
    z_key, mix_key = jax.random.split(key)
    fakes = gan.generate(state.generator_params, gan.sample_latents(z_key, 4), stage, alpha, labels)
    _, want = gan.loss.critic_loss(
        gan.critic_fn(state.critic_params, stage, alpha),
        reals,
        fakes,
        mix_key,
        gan.loss.gp_norm_scale(stage, gan.generator.num_stages - 1),
        gan.one_hot(labels),
    )
    for name in ("critic_loss", "label_penalty_reals", "label_penalty_fakes"):
        np.testing.assert_allclose(parts[name], want[name], rtol=1e-5)

    def generator_loss(frequencies):
        return train_step.generator_gradients(
            gan, state.generator_params, state.critic_params, key, 4, stage, alpha, frequencies
        )[1]

    only = lambda c: np.eye(3, dtype=np.float32)[c]  # all the data in class c
    z = gan.sample_latents(key, 4)
    for c in range(3):
        asked = jnp.full(4, c)
        fakes = gan.generate(state.generator_params, z, stage, alpha, asked)
        critic = gan.critic_fn(state.critic_params, stage, alpha)
        want = gan.loss.generator_loss(critic, fakes, gan.one_hot(asked))
        np.testing.assert_allclose(generator_loss(only(c)), want, rtol=1e-5)
