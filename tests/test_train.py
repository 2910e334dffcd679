"""The training loop in this process: a whole tiny run and its outputs, config errors before
anything is written, and the Adam resets at phase boundaries.

Kill, resume and multi-process runs need processes of their own (tests/test_main.py,
tests/test_multihost.py); everything else about a run is checked here, where it is fast.
"""

import json
import logging
import types

import jax
import numpy as np
import pytest

from progan_jax.modes import evaluate
from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.training import checkpointing, config_checks, schedule, train, train_step


def guard_transfers(monkeypatch) -> list:
    """Makes every train step run under `jax.transfer_guard("disallow")`: an implicit copy of
    its inputs (a Python float for alpha, a host array) raises. Returns the steps' call log."""
    calls = []
    make = train_step.make_train_step

    def guarded_make(*args, **kwargs):
        step = make(*args, **kwargs)

        def guarded(*inputs):
            calls.append(len(inputs))
            with jax.transfer_guard("disallow"):
                return step(*inputs)

        return guarded

    monkeypatch.setattr(train_step, "make_train_step", guarded_make)
    return calls


@pytest.mark.slow
def test_tiny_run_in_process(tmp_path, tiny_config, caplog, monkeypatch):
    """Trains all three stages with every copy to the devices explicit, then evaluates it."""
    config = tiny_config
    config.logging.profile_steps = 2
    config.logging.profile_stage = 1
    caplog.set_level(logging.INFO)
    calls = guard_transfers(monkeypatch)
    state = train.train(config, str(tmp_path))

    total = schedule.Schedule.from_config(config).total_images
    assert (
        int(state.step)
        == schedule.Schedule.from_config(config).steps_between(0, total)
        == len(calls)
    )
    checkpointer = checkpointing.Checkpointer(tmp_path)
    try:
        assert checkpointer.latest_images_shown() == total
    finally:
        checkpointer.close()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        f"{n:09d}.png"
        for n in (64, 192, 320)  # the ends of the three stages
    ]
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert "Profiling 2 steps of stage 1" in caplog.text

    config.evals.swd.images = 64
    config.evals.ms_ssim.images = 16
    results = evaluate.evaluate(config, str(tmp_path))
    assert results["images_shown"] == total and results["resolution"] == 16
    assert all(np.isfinite(v) for k, v in results.items() if k.startswith(("swd", "ms_ssim")))


@pytest.mark.parametrize(
    "field,value",
    [("model.resolution", 100), ("schedule.batch_sizes", (8, 8)), ("schedule.fade_images", -5)],
    ids=["resolution", "batch_sizes", "fade_images"],
)
def test_config_errors_name_the_field(tmp_path, tiny_config, field, value):
    """A bad value stops the run, naming its field, before anything is written to the workdir
    (main.py's exit with the message: test_main.py)."""
    section, name = field.split(".")
    tiny_config[section][name] = value
    with pytest.raises(config_checks.ConfigError) as error:
        train.train(tiny_config, str(tmp_path / "bad"))
    assert f"config.{field}" in str(error.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.slow
def test_the_guard_catches_an_implicit_copy(tiny_config, monkeypatch):
    from progan_jax.nets import gan as gan_lib
    from progan_jax.runtime import parallel

    guard_transfers(monkeypatch)
    mesh = parallel.make_mesh()
    gan, state = gan_lib.initialize(tiny_config, mesh)
    batch = {"images": np.zeros((8, 4, 4, 3), np.uint8), "mirror": np.zeros(8, bool)}
    step = train_step.make_train_step(
        gan, mesh, schedule.Schedule.from_config(tiny_config).stage_schedule(0)
    )
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        step(state, parallel.global_batch(batch, mesh), 0)  # a Python int for images shown


def test_the_host_runs_at_most_two_steps_ahead_of_the_device(monkeypatch):
    """Each new step waits for the one dispatched two earlier, so a SIGTERM waits for two steps
    at most, not for a whole log interval of queued ones."""
    awaited = []
    monkeypatch.setattr(jax, "block_until_ready", awaited.append)
    interval = train._Interval()
    steps = [{"critic_loss": jax.numpy.float32(i)} for i in range(5)]
    for metrics in steps:
        interval.add(metrics, 16)
    assert [id(m) for m in awaited] == [id(m) for m in steps[:3]]
    assert interval.metrics == steps and interval.images == 80


def test_the_logged_alpha_is_the_steps_own(tiny_config):
    """`schedule/alpha` is the mean of the alphas the interval's steps returned, computed on the
    device from their count of images shown, not a value the host works out on its own."""
    sched = schedule.Schedule.from_config(tiny_config)
    phase = sched.phase_at(80)  # stage 1's fade: 64 to 128 images
    assert phase.fading and phase.alpha(112) == 0.75
    interval = train._Interval()
    for alpha in (0.25, 0.5, 0.75):  # three steps, as the device computed them
        interval.add({"critic_loss": np.float32(1.0), "alpha": np.float32(alpha)}, 16)
    written = []
    trainer = types.SimpleNamespace(
        interval=interval,
        schedule=sched,
        report=types.SimpleNamespace(estimate=types.SimpleNamespace(seconds_left=lambda n: None)),
        writer=types.SimpleNamespace(write_scalars=lambda step, s: written.append((step, s))),
    )
    progress = checkpointing.Progress(images_shown=112, phase_index=phase.index)
    train.Trainer.flush_metrics(trainer, progress, phase)
    [(step, scalars)] = written
    assert step == 112 and scalars["schedule/alpha"] == pytest.approx(0.5)
    assert scalars["schedule/stage"] == 1 and scalars["loss/critic_loss"] == 1.0


def spy_on_resets(monkeypatch) -> list[int]:
    """Records the train steps taken before each executed reset (the reset is jitted, so the
    record is made by a callback in the compiled program, not when it is traced)."""
    steps = []
    reset = gan_lib.reset_optimizer_states

    def spied(gan, state):
        jax.debug.callback(lambda step: steps.append(int(step)), state.step)
        return reset(gan, state)

    monkeypatch.setattr(gan_lib, "reset_optimizer_states", spied)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("reset", [True, False])
def test_adam_is_reset_at_each_phase_boundary(tmp_path, tiny_config, monkeypatch, reset):
    config = tiny_config
    config.optimizer.reset_at_phase_boundary = reset
    config.evals.swd.every_images = 0
    config.checkpoint.every_images = 0
    steps = spy_on_resets(monkeypatch)
    state = train.Trainer(config, str(tmp_path)).run()

    phases = schedule.Schedule.from_config(config).phases
    batch = config.schedule.batch_sizes[0]
    assert set(config.schedule.batch_sizes) == {batch}  # images shown = steps * batch
    boundaries = [phase.start for phase in phases[1:]]
    assert len(boundaries) == 4  # 4x4; 8x8 fade, stabilize; 16x16 fade, stabilize
    assert [s * batch for s in steps] == (boundaries if reset else [])
    # The moments that trained the last phase: only its steps, or the whole run's.
    since = phases[-1].start if reset else 0
    for opt_state in (state.generator_opt_state, state.critic_opt_state):
        assert int(opt_state.count) == (phases[-1].end - since) // batch


@pytest.mark.slow
def test_the_loop_refuses_implicit_transfers(tmp_path, tiny_config, monkeypatch):
    """The loop runs under a transfer guard: a step fed a host value (here the count of images
    shown as a NumPy scalar instead of the device copy) stops the run instead of paying a
    silent copy every step."""
    monkeypatch.setattr(
        train.Trainer, "images_shown_on_mesh", lambda self, images_shown: np.int32(images_shown)
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match="Disallowed host-to-device transfer"):
        train.train(tiny_config, str(tmp_path))


@pytest.mark.slow
def test_a_conditional_run_trains_on_labelled_data(tmp_path, tiny_config, monkeypatch):
    """The synthetic faces' skin tones reach the step with their images (the label terms are
    logged), and the sample grids ask for one class per row."""
    tiny_config.model.label_size = 3
    tiny_config.data.labels = "skin_tone"
    tiny_config.data.cache_dir = str(tmp_path / "cache")
    asked = []
    host_images = sampling.host_images

    def recording(*args, **kwargs):
        asked.append(args[6] if len(args) > 6 else kwargs.get("labels"))
        return host_images(*args, **kwargs)

    monkeypatch.setattr(sampling, "host_images", recording)
    (tmp_path / "run").mkdir()
    state = train.train(tiny_config, str(tmp_path / "run"))
    assert int(state.step) == 20
    grid = tiny_config.logging.sample_grid
    np.testing.assert_array_equal(asked[0], np.arange(grid**2) // grid % 3)
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    import tensorflow as tf

    tags = {
        v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0])) for v in e.summary.value
    }
    assert {"loss/label_penalty_reals", "loss/label_penalty_fakes"} <= tags
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["names"] == ["light", "medium", "dark"]
    assert sum(classes["shares"].values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_sigterm_during_an_evaluation_saves_and_stops(tmp_path, tiny_config, monkeypatch):
    """SIGTERM while SWD generates its images (every process must finish that together) stops
    the run after the evaluation, with a checkpoint there, not with an unsaved exit."""
    import os
    import signal

    from progan_jax.metrics import evaluators

    run_evaluators = evaluators.run

    def interrupted(due, generator, **kwargs):
        if generator.resolution == 16:  # where SWD has work to do (it skips 4x4 and 8x8)
            os.kill(os.getpid(), signal.SIGTERM)
        return run_evaluators(due, generator, **kwargs)

    monkeypatch.setattr(evaluators, "run", interrupted)
    tiny_config.checkpoint.every_images = 0
    tiny_config.data.cache_dir = str(tmp_path / "cache")
    (tmp_path / "run").mkdir()
    state = train.train(tiny_config, str(tmp_path / "run"))
    assert int(jax.device_get(state.step)) == 256 // 16  # SWD's first evaluation, at 16x16
    checkpointer = checkpointing.Checkpointer(tmp_path / "run")
    try:
        assert checkpointer.latest_images_shown() == 256
    finally:
        checkpointer.close()
