"""--mode=export: a checkpoint's EMA generator as a SavedModel that plain TensorFlow can run.

The checkpoint is written in-process (configs/tiny.py, stage 2 mid-fade at alpha 0.375, with
perturbed EMA weights); the SavedModel is loaded in a subprocess that cannot import JAX or
progan_jax, and its images are compared with the JAX generator's.
"""

import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import tiny
from progan_jax.modes import export
from progan_jax.nets import gan as gan_lib
from progan_jax.nets import sampling
from progan_jax.runtime import parallel
from progan_jax.training import checkpointing
from tests.runs import run

pytestmark = pytest.mark.slow  # SavedModels written, run by TensorFlow in a subprocess

STAGE, ALPHA, IMAGES_SHOWN = 2, 0.375, 224
BATCHES = (1, 7)  # polymorphic batch: any size works

# Runs in the subprocess: TensorFlow and NumPy only, with JAX and this project unimportable
# (TensorFlow imports JAX on its own when it can, which would hide a dependency on it).
_TF_ONLY = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("jax", "jaxlib", "progan_jax"):
                raise ImportError(f"{name} is blocked")

    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf

    model_dir, latents_file, out_file = sys.argv[1:]
    model = tf.saved_model.load(model_dir)
    results = {}
    inputs = dict(np.load(latents_file))
    for name, z in inputs.items():
        if name.endswith("_labels"):
            continue
        given = {"latents": tf.constant(z)}
        if f"{name}_labels" in inputs:  # a conditional generator's class ids
            given["labels"] = tf.constant(inputs[f"{name}_labels"])
        for signature in ("images_uint8", "images_float"):
            images = model.signatures[signature](**given)["images"]
            results[f"{signature}_{name}"] = images.numpy()
    np.savez(out_file, **results)
    assert "jax" not in sys.modules and "progan_jax" not in sys.modules
    """
)


def _perturbed(params, seed: int = 1):
    """EMA weights with noise on every leaf, so that no bias or output is trivially zero."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [np.asarray(x) + 0.3 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]
    return jax.tree.unflatten(treedef, noisy)


def _checkpoint(workdir: pathlib.Path):
    """A stage-2 checkpoint mid-fade; returns the GAN and its (perturbed) EMA parameters."""
    config = tiny.get_config()
    gan, state = gan_lib.initialize(config, parallel.make_mesh())
    state = state.replace(generator_ema_params=_perturbed(state.generator_ema_params))
    checkpointer = checkpointing.Checkpointer(workdir)
    progress = checkpointing.Progress(IMAGES_SHOWN, phase_index=3, stage=STAGE, alpha=ALPHA)
    checkpointer.save(state, progress)
    checkpointer.close()
    return gan, jax.tree.map(np.asarray, state.generator_ema_params)


def _run_in_tensorflow(model_dir, latents: dict, tmp: pathlib.Path) -> dict:
    np.savez(tmp / "latents.npz", **latents)
    result = subprocess.run(
        [sys.executable, "-c", _TF_ONLY, str(model_dir), tmp / "latents.npz", tmp / "out.npz"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,  # not the repository root, from where progan_jax would import
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(tmp / "out.npz"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The export of a fresh checkpoint, its outputs in TensorFlow and the JAX side."""
    tmp = tmp_path_factory.mktemp("export")
    gan, params = _checkpoint(tmp / "run")
    info = export.export_generator(tiny.get_config(), str(tmp / "run"))
    rng = np.random.default_rng(0)
    latents = {
        f"b{n}": rng.standard_normal((n, gan.latent_size)).astype(np.float32) for n in BATCHES
    }
    outputs = _run_in_tensorflow(info["saved_model"], latents, tmp)
    return info, gan, params, latents, outputs


def test_export_writes_the_saved_model_and_its_description(exported, tmp_path):
    info = exported[0]
    model_dir = pathlib.Path(info["saved_model"])
    assert model_dir.parts[-2:] == ("export", str(IMAGES_SHOWN))
    assert (model_dir / "saved_model.pb").exists()
    written = json.loads((model_dir / export.METADATA_FILE).read_text())
    assert written == {key: value for key, value in info.items() if key != "saved_model"}
    assert written["signatures"] == list(export.SIGNATURES)
    assert (written["latent_size"], written["resolution"]) == (16, 16)
    assert (written["stage"], written["alpha"], written["images_shown"]) == (
        STAGE,
        ALPHA,
        IMAGES_SHOWN,
    )


@pytest.mark.parametrize("batch", BATCHES)
def test_tensorflow_images_match_jax_at_the_checkpoints_alpha(exported, batch):
    _, gan, params, latents, outputs = exported
    z = latents[f"b{batch}"]
    expected = sampling.host_images(gan, params, z, STAGE, ALPHA)
    floats, uint8 = outputs[f"images_float_b{batch}"], outputs[f"images_uint8_b{batch}"]
    assert floats.shape == uint8.shape == (batch, 16, 16, 3)
    assert floats.dtype == np.float32 and uint8.dtype == np.uint8
    np.testing.assert_allclose(floats, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(uint8, sampling.to_uint8(floats))  # the same conversion
    difference = np.abs(uint8.astype(int) - sampling.to_uint8(expected).astype(int))
    assert difference.max() <= 1  # only where float noise moves a value across a .5
    at_alpha_1 = sampling.host_images(gan, params, z, STAGE, 1.0)
    assert np.abs(floats - at_alpha_1).max() > 1e-2


def test_a_bucket_output_is_written_through_a_local_copy(tmp_path, monkeypatch):
    """Outputs that TensorFlow cannot write to directly are saved locally, then copied."""
    gan, params = _checkpoint(tmp_path / "run")
    generator = sampling.GeneratorSnapshot(gan, params, STAGE, ALPHA, IMAGES_SHOWN)
    output = tmp_path / "bucket" / "model"
    monkeypatch.setattr(export.paths, "is_remote", lambda path: str(path) == str(output))
    export.save(generator, export.paths.resolve(output), ("cpu",))
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert {"saved_model.pb", export.METADATA_FILE, "variables/variables.index"} <= set(written)


def test_main_exports_a_chosen_checkpoint_to_a_chosen_folder(tmp_path, compile_cache):
    _checkpoint(tmp_path / "run")
    output = tmp_path / "model"
    result = run(
        tmp_path / "run",
        compile_cache,
        "--mode=export",
        f"--config.checkpoint_images_shown={IMAGES_SHOWN}",
        f"--config.export.output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["saved_model"] == str(output)
    assert (printed["stage"], printed["alpha"]) == (STAGE, ALPHA)
    assert (output / "saved_model.pb").exists()


def test_a_tpu_target_is_exported_from_this_cpu(tmp_path):
    """The SavedModel's serialized program is lowered for every platform asked for, the TPU
    included, without one."""
    gan, params = _checkpoint(tmp_path / "run")
    generator = sampling.GeneratorSnapshot(gan, params, STAGE, ALPHA, IMAGES_SHOWN)
    info = export.save(generator, export.paths.resolve(tmp_path / "model"), ("cpu", "tpu"))
    assert info["platforms"] == ["cpu", "tpu"]
    assert (tmp_path / "model" / "saved_model.pb").exists()


def test_only_process_0_writes_the_export(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "run")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    info = export.export_generator(tiny.get_config(), str(tmp_path / "run"))
    assert info["stage"] == STAGE and not pathlib.Path(info["saved_model"]).exists()


def test_a_conditional_generator_exports_with_a_label_input(tmp_path):
    """Both signatures take int32 class ids beside the latents and draw those classes."""
    config = tiny.get_config()
    config.model.label_size = 3
    gan, state = gan_lib.initialize(config, parallel.make_mesh())
    state = state.replace(generator_ema_params=_perturbed(state.generator_ema_params))
    checkpointer = checkpointing.Checkpointer(tmp_path / "run")
    progress = checkpointing.Progress(IMAGES_SHOWN, phase_index=3, stage=STAGE, alpha=ALPHA)
    checkpointer.save(state, progress)
    checkpointer.close()
    info = export.export_generator(config, str(tmp_path / "run"))
    assert info["labels"] == {"classes": 3}
    z = np.random.default_rng(0).standard_normal((4, gan.latent_size)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.int32)
    outputs = _run_in_tensorflow(info["saved_model"], {"b4": z, "b4_labels": labels}, tmp_path)
    params = jax.tree.map(np.asarray, state.generator_ema_params)
    want = sampling.host_images(gan, params, z, STAGE, ALPHA, np.float32, labels)
    np.testing.assert_allclose(outputs["images_float_b4"], want, atol=2e-5)
    other = sampling.host_images(gan, params, z, STAGE, ALPHA, np.float32, labels * 0)
    assert not np.allclose(outputs["images_float_b4"], other, atol=1e-3)
