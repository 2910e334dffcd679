"""The training program end to end, through main.py in subprocesses.

Runs use configs/tiny.py (16x16, three stages, 320 images) on synthetic data (`tests/runs.py`).
"""

import json
import shutil
import signal
import time

import numpy as np
import pytest

from progan_jax.training import checkpointing
from tests.runs import (
    TOTAL_IMAGES,
    assert_same_state,
    final_state,
    free_port,
    multiprocess_flags,
    run,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test runs main.py in subprocesses


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(workdir, compile_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_a_tiny_run_writes_checkpoints_events_and_samples(uninterrupted):
    workdir, _result = uninterrupted
    assert sorted(int(p.name) for p in (workdir / "stage_checkpoints").iterdir()) == [64, 192, 320]
    periodic = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert periodic[-1] == TOTAL_IMAGES and len(periodic) == 3  # keep=3
    assert list(workdir.glob("events.out.tfevents.*"))
    samples = sorted(p.name for p in (workdir / "samples").glob("*.png"))
    assert samples == ["000000064.png", "000000192.png", "000000320.png"]
    state, progress = final_state(workdir)
    assert progress.images_shown == TOTAL_IMAGES
    assert int(state.step) == 20  # batches of 16
    assert (workdir / "config.json").exists()


def test_events_hold_losses_alpha_and_images(uninterrupted):
    import tensorflow as tf

    workdir, _ = uninterrupted
    tags = set()
    for path in workdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    for tag in ("loss/critic_loss", "loss/generator_loss", "loss/gradient_penalty",
                "loss/drift", "loss/wasserstein", "loss/real_score", "loss/fake_score",
                "schedule/alpha", "schedule/stage", "schedule/learning_rate",
                "schedule/batch_size", "speed/images_per_s", "samples",
                "metrics/swd_x1e3_16"):  # fmt: skip
        assert tag in tags, tag


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_evaluate_reports_metrics_of_a_checkpoint(uninterrupted, compile_cache):
    workdir, _ = uninterrupted
    small = ("--config.evals.swd.images=64", "--config.evals.ms_ssim.images=8")
    trained = run(workdir, compile_cache, "--mode=evaluate", *small)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = _json_line(trained.stdout)
    assert result["images_shown"] == TOTAL_IMAGES and result["resolution"] == 16
    for key in ("swd_x1e3_16", "swd_x1e3_avg", "swd_noise_floor_x1e3_16", "ms_ssim"):
        assert np.isfinite(result[key]), key
    assert 0.0 < result["ms_ssim"] < 1.0
    untrained = run(
        workdir,
        compile_cache,
        "--mode=evaluate",
        "--config.checkpoint_images_shown=untrained",
        *small,
    )
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    assert _json_line(untrained.stdout)["images_shown"] == 0
    missing = run(workdir, compile_cache, "--mode=evaluate", "--config.checkpoint_images_shown=100")
    assert missing.returncode == 1
    assert "No checkpoint at 100 images shown" in missing.stderr and "320" in missing.stderr
    no_best = run(
        workdir, compile_cache, "--mode=generate", "--config.checkpoint_images_shown=best"
    )
    assert no_best.returncode == 1  # the run ranked no checkpoint: it computed no FID
    assert "No best checkpoint" in no_best.stderr and "best_metric" in no_best.stderr


def test_generate_writes_what_it_says(uninterrupted, compile_cache, tmp_path):
    from PIL import Image

    workdir, _ = uninterrupted
    out = tmp_path / "generated"
    result = run(
        workdir,
        compile_cache,
        "--mode=generate",
        "--config.checkpoint_images_shown=192",  # a stage-end checkpoint: stage 1, 8x8
        "--config.generate.num_images=5",
        "--config.generate.grid=2",
        "--config.generate.keyframes=3",
        "--config.generate.frames_per_keyframe=2",
        "--config.generate.interpolation_grid=2",
        "--config.generate.truncation=1.0",
        f"--config.generate.output={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = _json_line(result.stdout)
    assert written["images_shown"] == 192 and written["stage"] == 1
    assert written["grid"] == str(out / "grid.png") and written["frames"] == 6
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 16, 2 * 16, 3)  # 8x8 images shown at the config's 16x16
    singles = sorted((out / "images").glob("*.png"))
    assert [p.name for p in singles] == [f"0_{i:05d}.png" for i in range(5)]
    assert np.asarray(Image.open(singles[0])).shape == (8, 8, 3)
    assert len({Image.open(p).tobytes() for p in singles}) == 5  # different latents
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (32, 32)


def test_a_killed_run_resumes_exactly(uninterrupted, tmp_path, compile_cache):
    reference, _ = uninterrupted
    workdir = tmp_path / "killed"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = start(workdir, compile_cache, log)
        # After the first checkpoints: mid-stage 1, in its fade, as a checkpoint is written.
        wait_for(log_path, "Checkpoint at 96 images shown", process)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    before = checkpointing.Checkpointer(workdir)
    killed_at = before.latest_images_shown()
    before.close()
    assert killed_at is not None and killed_at < TOTAL_IMAGES
    result = run(workdir, compile_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {killed_at} images shown" in result.stderr
    resumed, progress = final_state(workdir)
    expected, expected_progress = final_state(reference)
    assert progress == expected_progress
    assert_same_state(resumed, expected)


def test_sigterm_saves_where_it_arrived(tmp_path, compile_cache):
    workdir = tmp_path / "preempted"
    log_path = tmp_path / "run.log"
    no_periodic = ("--config.checkpoint.every_images=0", "--config.checkpoint.every_minutes=0")
    with open(log_path, "w") as log:
        process = start(workdir, compile_cache, log, *no_periodic)
        wait_for(log_path, "Stage 1", process)  # the stage-0 checkpoint is saved
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 0
    text = log_path.read_text()
    assert "Stopped by SIGTERM at" in text
    stopped_at = int(text.split("Stopped by SIGTERM at ")[1].split()[0])
    periodic = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert periodic[-1] == stopped_at and 64 < stopped_at < TOTAL_IMAGES
    assert stopped_at not in [int(p.name) for p in (workdir / "stage_checkpoints").iterdir()]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, compile_cache):
    workdir = tmp_path / "diverged"
    result = run(workdir, compile_cache, "--config.optimizer.learning_rates=(2e-3,1e30,1e30)")
    assert result.returncode == 1
    assert "Non-finite loss" in result.stderr and "last good checkpoint (64" in result.stderr
    checkpointer = checkpointing.Checkpointer(workdir)
    assert checkpointer.latest_images_shown() == 64
    checkpointer.close()


def test_a_config_error_exits_1_with_the_message_on_stderr(tmp_path, compile_cache):
    """main.py's path for a user's error; the checks themselves are tested in-process
    (test_config_checks.py; test_train.py for the run that stops before writing)."""
    result = run(tmp_path / "bad", compile_cache, "--config.model.resolution=100", timeout=120)
    assert result.returncode == 1
    assert "error: config.model.resolution: must be a power of two" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_two_processes_equal_one_process_with_four_devices(tmp_path, compile_cache):
    """JAX's distributed runtime on loopback, gloo collectives, 2 devices per process."""
    # The native penalty scale: the official one, 4x weaker at 4x4 here, lets the GAN amplify
    # float rounding ten times faster, past what the later comparison can tell from a bug.
    native = "--config.loss.gp_scale=native"
    single = run(tmp_path / "single", compile_cache, native, devices=4)
    assert single.returncode == 0, single.stderr[-3000:]

    workdir, port = tmp_path / "multi", free_port()
    processes, logs = [], []
    for index in range(2):
        log = open(tmp_path / f"process{index}.log", "w")  # noqa: SIM115
        flags = (*multiprocess_flags(port, index), "--config.data.shard_per_process=False", native)
        processes.append(start(workdir, compile_cache, log, *flags, devices=2))
        logs.append(log)
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=900) == 0, (tmp_path / "process0.log").read_text()[-3000:]
        log.close()
    for index in range(2):
        text = (tmp_path / f"process{index}.log").read_text()
        first, last = 8 * index, 8 * index + 8
        assert f"process {index} of 2 reads rows [{first}, {last}) of every batch of 16" in text

    # Gloo sums the two processes' gradients in another order than one process sums its four
    # devices', so the runs agree to float rounding, and the GAN amplifies rounding as it goes
    # (Adam scales near-zero gradients up to full steps): tight at the end of stage 0 (4
    # steps), looser after stage 1; the last checkpoint's progress must still agree exactly.
    for images_shown, atol in ((64, 1e-5), (192, 1e-3), (None, None)):
        multi, multi_progress = final_state(workdir, images_shown)
        reference, progress = final_state(tmp_path / "single", images_shown)
        assert multi_progress == progress
        if atol is not None:
            assert_same_state(multi, reference, atol=atol)


def test_resuming_with_other_network_shapes_names_the_field(uninterrupted, compile_cache, tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    wider = run(workdir, compile_cache, "--config.model.latent_size=32", timeout=300)
    assert wider.returncode == 1
    assert "config.model.latent_size: the workdir's checkpoints were trained with other" in (
        wider.stderr
    )
    assert "model.latent_size: 16 -> 32" in wider.stderr
    assert "Traceback" not in wider.stderr
    other_loss = run(workdir, compile_cache, "--config.loss.drift_weight=0.002", timeout=300)
    assert other_loss.returncode == 0, other_loss.stderr[-3000:]
    assert "Resuming with config.loss.drift_weight changed: 0.001 -> 0.002" in other_loss.stderr


def test_sigterm_during_the_first_decode_exits_0_promptly(tmp_path, compile_cache):
    """Preparation is preemptible: decoding 50,000 images would take about a minute."""
    cache = tmp_path / "data"
    log_path = tmp_path / "run.log"
    overrides = ("--config.data.synthetic_size=50000", f"--config.data.cache_dir={cache}")
    with open(log_path, "w") as log:
        process = start(tmp_path / "run", compile_cache, log, *overrides)
        wait_for(log_path, "decoding synthetic into", process)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert process.wait(timeout=120) == 0
    assert time.monotonic() - sent < 15
    text = log_path.read_text()
    assert "SIGTERM during decoding synthetic" in text
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and ".npy" in p.name]
    assert leftovers == [], leftovers


def test_a_checkpoint_is_drawn_with_the_networks_its_run_trained(tmp_path, compile_cache):
    """Generate without the training run's model flags: the workdir's config.json decides the
    networks (a conditional G of label_scale 4, drawn by the unconditional command line), and
    the log names each field it took from there."""
    import dataclasses

    import jax

    from configs import tiny
    from progan_jax.modes import generate
    from progan_jax.nets import gan as gan_lib
    from progan_jax.nets import sampling
    from progan_jax.runtime import parallel

    config = tiny.get_config()
    config.model.label_size, config.model.label_scale = 3, 4.0
    config.data.labels = "skin_tone"
    workdir = tmp_path / "run"
    gan, state = gan_lib.initialize(config, parallel.make_mesh())
    checkpointer = checkpointing.Checkpointer(workdir)
    checkpointer.save(state, checkpointing.Progress(320, phase_index=4, stage=2, alpha=1.0))
    checkpointer.close()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    out = tmp_path / "generated"
    asked = ("num_images=4", "grid=2", "keyframes=1", "labels=2", f"output={out}")
    flags = [f"--config.generate.{flag}" for flag in asked]
    result = run(workdir, compile_cache, "--mode=generate", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config.model.label_size: the checkpoints were trained with 3" in result.stderr
    assert "config.model.label_scale: the checkpoints were trained with 4.0" in result.stderr
    from PIL import Image

    got = np.stack([np.asarray(Image.open(out / "images" / f"0_{i:05d}.png")) for i in range(4)])
    params = jax.tree.map(np.asarray, state.generator_ema_params)
    z = generate.latents(gan, config.generate.seed, 4, None)
    drawn = {
        scale: sampling.host_images(
            dataclasses.replace(gan, generator=gan.generator.clone(label_scale=scale)),
            *(params, z, 2, 1.0, np.uint8, np.full(4, 2)),
        ).astype(int)
        for scale in (4.0, 1.0)
    }
    assert np.abs(got - drawn[4.0]).max() <= 1  # the compilers may round a pixel differently
    assert np.abs(got - drawn[1.0]).mean() > 4 * np.abs(got - drawn[4.0]).mean()
