"""Every mode on an imported workdir, through main.py: import, generate, evaluate, export,
summary, and train, which fine-tunes the imported networks on a folder of images."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from progan_jax.modes import generate
from progan_jax.nets import gan as gan_lib
from progan_jax.pretrained import importer
from progan_jax.training import checkpointing
from tests import network_files
from tests import official_networks as ref
from tests.runs import run
from tests.test_pretrained import D_ARGS, G_ARGS, official_variables

pytestmark = pytest.mark.slow  # main.py in subprocesses


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imported(tmp_path_factory, compile_cache):
    """A workdir of an official v2 pickle at lod 0 (16x16, fused, non-default widths)."""
    root = tmp_path_factory.mktemp("imported")
    g_args, d_args = {**G_ARGS, "fused_scale": True}, {**D_ARGS, "fused_scale": True}
    variables = official_variables(g_args, d_args)
    path = root / "network-final.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, 0.0)
    workdir = root / "workdir"
    result = run(workdir, compile_cache, "--mode=import", f"--config.pretrained.path={path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _json_line(result.stdout)
    assert (summary["stage"], summary["alpha"], summary["images_shown"]) == (2, 1.0, 256)
    return workdir, path, g_args, variables


def test_generate_draws_the_official_generators_images(imported, compile_cache, tmp_path):
    workdir, path, g_args, (_, _, gs_vars) = imported
    out = tmp_path / "generated"
    flags = ("num_images=4", "grid=2", "keyframes=2", "frames_per_keyframe=2", f"output={out}")
    result = run(
        workdir, compile_cache, "--mode=generate", *(f"--config.generate.{flag}" for flag in flags)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config.model.fmap_decay: the checkpoints were trained with 0.8" in result.stderr
    config = importer.model_config(tiny.get_config(), importer.read_file(str(path)).model)
    z = np.asarray(generate.latents(gan_lib.GAN.from_config(config), 0, 4, None))
    expected = ref.generator(gs_vars, g_args, z.astype(np.float64), 0.0).transpose(0, 2, 3, 1)
    expected = np.clip(np.rint((expected + 1) * 127.5), 0, 255)
    got = np.stack([np.asarray(Image.open(out / "images" / f"0_{i:05d}.png")) for i in range(4)])
    assert np.abs(got.astype(int) - expected).max() <= 1  # rounding at a half
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 4


def test_evaluate_summary_and_export_read_the_imported_networks(imported, compile_cache):
    workdir, *_ = imported
    small = ("--config.evals.swd.images=64", "--config.evals.ms_ssim.images=8")
    evaluated = run(workdir, compile_cache, "--mode=evaluate", *small)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = _json_line(evaluated.stdout)
    assert metrics["resolution"] == 16 and np.isfinite(metrics["swd_x1e3_avg"])
    summary = run(workdir, compile_cache, "--mode=summary")
    assert summary.returncode == 0, summary.stderr[-3000:]
    g_count = sum(int(np.prod(s)) for s in ref.generator_shapes({**G_ARGS}).values())
    assert f"{g_count:,}" in summary.stdout
    exported = run(workdir, compile_cache, "--mode=export", "--config.export.platforms=('cpu',)")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (workdir / "export" / "256" / "saved_model.pb").exists()


def test_train_fine_tunes_the_imported_networks_on_a_folder(imported, compile_cache, tmp_path):
    workdir, *_ = imported
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):  # non-square, some grayscale: decoded as any image folder
        pixels = rng.integers(0, 256, (20, 24, 3) if i % 3 else (24, 20), np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    before = checkpointing.Checkpointer(workdir).latest_images_shown()
    result = run(
        workdir,
        compile_cache,
        "--config.data.source=image_folder",
        f"--config.data.path={folder}",
        "--config.schedule.final_stabilize_images=320",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpointer = checkpointing.Checkpointer(workdir)
    assert checkpointer.latest_images_shown() == before + 320 == 576
    config = importer.model_config(
        tiny.get_config(), json.loads((workdir / "config.json").read_text())["model"]
    )
    gan = gan_lib.GAN.from_config(config)
    target = jax.eval_shape(lambda: gan_lib.create_train_state(gan, jax.random.key(0)))
    start, _ = checkpointer.restore(target, before)
    tuned, progress = checkpointer.restore(target, 576)
    checkpointer.close()
    assert (progress.stage, progress.alpha) == (2, 1.0)
    change = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        start.critic_params,
        tuned.critic_params,
    )
    assert 0 < max(jax.tree.leaves(change)) < 1.0  # trained from the imported weights
