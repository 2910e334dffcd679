"""Importing pretrained networks: equal to NumPy references of the official and pytorch_GAN_zoo
networks, read without running code, and refused with clear errors when they cannot be.

Files are written by `tests/network_files.py` with random weights and biases at 16x16 with
non-default widths (fmap_decay 0.8, a 12-d latent). Ours are compared with the references at
the official level of detail: G's image of a coarser lod is repeated up to full size as the
official G does, and D sees the full-size image box-filtered down to its stage.
"""

import json
import math
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from progan_jax.nets import gan as gan_lib
from progan_jax.pretrained import importer, official, safe_pickle
from progan_jax.pretrained.imported import UnsupportedNetworkError
from progan_jax.runtime.errors import ConfigError, UserError
from progan_jax.training import trained
from tests import gan_zoo_networks as zoo_ref
from tests import network_files
from tests import official_networks as ref

TOLERANCE = 1e-4
_SHARED_ARGS = dict(
    num_channels=3,
    resolution=16,
    fmap_base=64,
    fmap_decay=0.8,
    fmap_max=24,
    use_wscale=True,
    label_size=0,
)
G_ARGS = dict(_SHARED_ARGS, latent_size=12, normalize_latents=True, use_pixelnorm=True)
D_ARGS = dict(_SHARED_ARGS, mbstd_group_size=4)


def official_variables(g_args: dict, d_args: dict, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        ref.random_variables(ref.generator_shapes(g_args), rng),
        ref.random_variables(ref.critic_shapes(d_args), rng),
        ref.random_variables(ref.generator_shapes(g_args), rng),
    )


def ours(imported, latents: np.ndarray, images: np.ndarray, lod: float, labels=None):
    """Our G_ema's images and D's outputs of an import at the official lod, NCHW, full size
    (D's scores, or with `labels` (one-hot) its scores and class logits side by side)."""
    config = importer.model_config(tiny.get_config(), imported.model)
    gan = gan_lib.GAN.from_config(config)
    stage, alpha = imported.stage, imported.alpha
    drawn = gan.generator.apply(
        {"params": imported.generator_ema},
        jnp.asarray(latents),
        stage=stage,
        alpha=alpha,
        labels=labels,
    )
    factor = 2 ** math.floor(lod)
    drawn = np.asarray(drawn).repeat(factor, 1).repeat(factor, 2).transpose(0, 3, 1, 2)
    seen = ref.downscale(images, factor).transpose(0, 2, 3, 1).astype(np.float32)
    scores = gan.critic.apply({"params": imported.critic}, seen, stage=stage, alpha=alpha)
    if labels is not None:
        scores = np.concatenate([np.asarray(scores[0])[:, None], np.asarray(scores[1])], axis=1)
    return drawn, np.asarray(scores)


def assert_scores_close(scores: np.ndarray, expected: np.ndarray) -> None:
    """Within the tolerance, relative to the scores' size where they exceed 1."""
    assert np.abs(scores - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def compare_official(path, g_args, d_args, variables, lod: float) -> None:
    _, d_vars, gs_vars = variables
    imported = importer.read_file(str(path))
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(8, g_args["latent_size"])).astype(np.float32)
    images = rng.uniform(-1, 1, size=(8, g_args["num_channels"], 16, 16))
    drawn, scores = ours(imported, latents, images, lod)
    expected_images = ref.generator(gs_vars, g_args, latents.astype(np.float64), lod)
    expected_scores = ref.critic(d_vars, d_args, images, lod)[:, 0]
    assert np.abs(drawn - expected_images).max() <= TOLERANCE
    assert_scores_close(scores, expected_scores)
    # The comparison can fail: another lod's images differ by far more than the tolerance.
    other = ref.generator(gs_vars, g_args, latents.astype(np.float64), lod + 0.5)
    assert np.abs(drawn - other).max() > 100 * TOLERANCE


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("lod", [0.0, 0.3, 1.6])
def test_an_official_v2_pickle_imports_equal_to_the_reference(tmp_path, fused, lod):
    g_args, d_args = {**G_ARGS, "fused_scale": fused}, {**D_ARGS, "fused_scale": fused}
    variables = official_variables(g_args, d_args)
    path = tmp_path / "network-final.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, lod)
    compare_official(path, g_args, d_args, variables, lod)


def test_a_conditional_official_pickle_imports_with_its_classes(tmp_path):
    """The one-hot labels join the latent (the official `combo_in`), and the critic's class
    logits follow its score."""
    g_args = {**G_ARGS, "label_size": 3, "fused_scale": True}
    d_args = {**D_ARGS, "label_size": 3, "fused_scale": True}
    _, d_vars, gs_vars = variables = official_variables(g_args, d_args)
    path = tmp_path / "conditional.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, 0.4)
    imported = importer.read_file(str(path))
    assert imported.model["label_size"] == 3 and imported.model["label_scale"] == 1.0
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(8, 12)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]
    images = rng.uniform(-1, 1, size=(8, 3, 16, 16))
    drawn, outputs = ours(imported, latents, images, 0.4, labels)
    expected = ref.generator(gs_vars, g_args, latents.astype(np.float64), 0.4, labels)
    assert np.abs(drawn - expected).max() <= TOLERANCE
    assert_scores_close(outputs, ref.critic(d_vars, d_args, images, 0.4))
    other = ref.generator(gs_vars, g_args, latents.astype(np.float64), 0.4, labels[::-1])
    assert np.abs(drawn - other).max() > 100 * TOLERANCE  # the classes matter


def test_grayscale_networks_without_equalized_lr_or_minibatch_stddev_import_equal(tmp_path):
    g_args = {**G_ARGS, "num_channels": 1, "use_wscale": False, "use_pixelnorm": False}
    d_args = {**D_ARGS, "num_channels": 1, "use_wscale": False, "mbstd_group_size": 0}
    variables = [  # stored He-scaled, as the official init does without equalized LR
        {k: v / np.sqrt(np.prod(v.shape[:-1])) if k.endswith("weight") else v
         for k, v in tree.items()}
        for tree in official_variables(g_args, d_args)
    ]  # fmt: skip
    path = tmp_path / "gray.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, 0.6)
    imported = importer.read_file(str(path))
    assert not imported.model["use_wscale"] and imported.model["mbstd_group_size"] == 0
    compare_official(path, g_args, d_args, variables, 0.6)


def test_a_schedule_without_a_phase_for_the_networks_is_named(tmp_path):
    path = tmp_path / "n.pkl"
    network_files.write_official_v2(path, G_ARGS, D_ARGS, *official_variables(G_ARGS, D_ARGS), 0.5)
    config = import_config(path)
    config.schedule.fade_images = 0
    with pytest.raises(ConfigError, match=r"no fade-in.*fade_images"):
        importer.import_networks(config, str(tmp_path / "w"))


@pytest.mark.parametrize("lod", [0.0, 1.25])
def test_a_theano_era_pickle_imports_equal_to_the_reference(tmp_path, lod):
    """The published files' format: separate resampling and minibatch groups of 16 (the
    official loader's), Theano kernels, per-layer scales, Python 2 strings, numpy.core."""
    spec = {k: v for k, v in G_ARGS.items() if k != "label_size"}
    d_spec = {k: v for k, v in D_ARGS.items() if k not in ("label_size", "mbstd_group_size")}
    theano = {"use_batchnorm": False, "tanh_at_end": None, "use_gdrop": True}
    g_args = {**G_ARGS, "fused_scale": False}
    d_args = {**D_ARGS, "fused_scale": False, "mbstd_group_size": 16}
    variables = official_variables(g_args, d_args)
    path = tmp_path / "karras2018iclr-tiny.pkl"
    network_files.write_official_theano(
        path, {**spec, **theano}, {**d_spec, **theano, "mbstat_func": "Tstdeps"}, *variables, lod
    )
    imported = importer.read_file(str(path))
    assert imported.model["mbstd_group_size"] == 16
    assert imported.model["downsample_after_activation"]
    compare_official(path, g_args, d_args, variables, lod)


def test_the_separate_critic_pools_after_its_activation(tmp_path):
    """Without `downsample_after_activation` the official separate-resampling critic differs:
    the field is what makes it equal."""
    g_args, d_args = {**G_ARGS, "fused_scale": False}, {**D_ARGS, "fused_scale": False}
    variables = official_variables(g_args, d_args)
    path = tmp_path / "n.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, 0.0)
    imported = importer.read_file(str(path))
    wrong = imported.model | {"downsample_after_activation": False}
    imported = type(imported)(**{**imported.__dict__, "model": wrong})
    images = np.random.default_rng(2).uniform(-1, 1, size=(8, 3, 16, 16))
    _, scores = ours(imported, np.zeros((8, 12), np.float32), images, 0.0)
    expected = ref.critic(variables[1], d_args, images, 0.0)[:, 0]
    assert np.abs(scores - expected).max() > 100 * TOLERANCE


def test_stage_and_alpha_follow_the_level_of_detail():
    assert official.stage_and_alpha(0.0, 1024) == (8, 1.0)
    assert official.stage_and_alpha(1.0, 1024) == (7, 1.0)
    assert official.stage_and_alpha(1.25, 1024) == (7, 0.75)
    assert official.stage_and_alpha(8.0, 1024) == (0, 1.0)
    with pytest.raises(UnsupportedNetworkError, match="lod 9"):
        official.stage_and_alpha(9.0, 1024)


# ---------------------------------------------------------------------- pytorch_GAN_zoo

ZOO_DEPTHS = [24, 24, 12]  # 4x4, 8x8, 16x16: fmap_base 96, fmap_max 24


def zoo_checkpoint(rng, alpha: float, drop: str | None = None):
    states = zoo_ref.random_networks(ZOO_DEPTHS, 12, rng)
    config = dict(
        depthScale0=24,
        depthOtherScales=ZOO_DEPTHS[1:],
        latentVectorDim=12,
        noiseVectorDim=12,
        categoryVectorDim=0,
        dimOutput=3,
        miniBatchStdDev=True,
        equalizedlR=True,
        alpha=alpha,
        leakyReluLeak=0.2,
        perChannelNormalization=True,
        lossCriterion="WGANGP",
        initBiasToZero=True,
    )
    tree = network_files.gan_zoo_checkpoint(states, config)
    if drop:
        del tree[drop]
    return tree, states


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_a_gan_zoo_checkpoint_imports_equal_to_the_reference(tmp_path, zipped, alpha):
    rng = np.random.default_rng(0)
    tree, states = zoo_checkpoint(rng, alpha)
    if not zipped:  # keys as pytorch_GAN_zoo also reads them: without `.module`
        tree["avgG"] = {k.replace(".module.", "."): v for k, v in tree["avgG"].items()}
    path = tmp_path / "celebaHQ_s2_i1.pth"
    network_files.write_torch(path, tree, zipped=zipped)
    imported = importer.read_file(str(path))
    assert (imported.stage, imported.alpha) == (2, 1.0 - alpha)
    latents = rng.normal(size=(8, 12)).astype(np.float32)
    images = rng.uniform(-1, 1, size=(8, 3, 16, 16))
    drawn, scores = ours(imported, latents, images, 0.0)
    expected = zoo_ref.generator(states["avgG"], 2, latents.astype(np.float64), alpha)
    assert np.abs(drawn - expected).max() <= TOLERANCE
    expected_scores = zoo_ref.critic(states["netD"], 2, images, alpha)[:, 0]
    assert_scores_close(scores, expected_scores)
    assert np.abs(drawn - zoo_ref.generator(states["netG"], 2, latents, alpha)).max() > 0.01


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_would_run_code_is_refused_with_the_global_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps((_RunsCode(), 1, 2)))
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"(posix|os)\.system"):
        importer.read_file(str(path))
    assert not (tmp_path / "PWNED").exists()


def test_a_torch_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    network_files.write_torch(
        path,
        {
            "config": network_files.Call(
                network_files.Global("builtins", "eval"),
                ("__import__('os').system('touch PWNED')",),
            )
        },
    )
    with pytest.raises(safe_pickle.UnsafePickleError, match=r"builtins\.eval"):
        importer.read_file(str(path))
    assert not (tmp_path / "PWNED").exists()


def test_a_crafted_dtype_is_refused(tmp_path):
    """numpy's own dtype rebuild takes flags as given: an object dtype marked as holding no
    references would make an array of raw pointers from the file's bytes."""
    Call, Global = network_files.Call, network_files.Global
    dtype = Call(
        Global("numpy", "dtype"), ("O", False, True), (3, "|", None, None, None, -1, -1, 0)
    )
    empty = (Global("numpy", "ndarray"), (0,), b"b")
    array = Call(
        Global("numpy.core.multiarray", "_reconstruct"), empty, (1, (1,), dtype, False, b"A" * 8)
    )
    path = tmp_path / "pointers.pkl"
    path.write_bytes(network_files.dumps((array, array, array)))
    with pytest.raises(safe_pickle.UnsafePickleError, match="refused the dtype 'O'"):
        importer.read_file(str(path))


@pytest.mark.parametrize(
    "view",
    [(0, (4,), (-1,)), (-2, (4,), (1,)), (0, (3, 3), (100000, -100000)), (0, (10**6,), (0,))],
    ids=["negative_stride", "negative_offset", "cancelling_strides", "repeated_element"],
)
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, view):
    path = tmp_path / "reach.pth"
    network_files.write_torch(path, {"netG": {"w": network_files.Tensor(np.zeros(4), view)}})
    with pytest.raises(safe_pickle.UnreadableFileError, match="tensor"):
        safe_pickle.load_torch(str(path))


def write_v2(tmp_path, lod=0.0, g_args=None, d_args=None, g_func="G_paper"):
    g_args, d_args = {**G_ARGS, **(g_args or {})}, {**D_ARGS, **(d_args or {})}
    variables = official_variables(g_args, d_args)
    path = tmp_path / "network.pkl"
    networks = (
        network_files.official_v2_network(g_func, g_args, variables[0], lod),
        network_files.official_v2_network("D_paper", d_args, variables[1], lod),
        network_files.official_v2_network(g_func, g_args, variables[2], lod),
    )
    path.write_bytes(network_files.dumps(networks))
    return path


def test_an_argument_the_model_cannot_express_is_named(tmp_path):
    path = write_v2(tmp_path, g_args={"use_leakyrelu": False})
    with pytest.raises(UnsupportedNetworkError, match="use_leakyrelu"):
        importer.read_file(str(path))


def import_config(path, **data) -> object:
    config = tiny.get_config()
    config.pretrained.path = str(path)
    config.data.update(data)
    return config


def _truncated(tmp_path):
    path = write_v2(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, safe_pickle.UnreadableFileError, "truncated"


def _truncated_torch(tmp_path):
    tree, _ = zoo_checkpoint(np.random.default_rng(0), 0.0)
    path = tmp_path / "zoo.pth"
    network_files.write_torch(path, tree, zipped=False)
    path.write_bytes(path.read_bytes()[:-1000])
    return path, safe_pickle.UnreadableFileError, "truncated"


def _stylegan(tmp_path):
    return write_v2(tmp_path, g_func="G_style"), UnsupportedNetworkError, "G_style"


def _zoo_without_netD(tmp_path):
    tree, _ = zoo_checkpoint(np.random.default_rng(0), 0.0, drop="netD")
    path = tmp_path / "zoo.pth"
    network_files.write_torch(path, tree)
    return path, UnsupportedNetworkError, "lacks netD"


@pytest.mark.parametrize("bad_file", [_truncated, _truncated_torch, _stylegan, _zoo_without_netD])
def test_a_bad_file_is_a_clear_error_and_leaves_no_workdir_behind(tmp_path, bad_file):
    path, error, message = bad_file(tmp_path)
    workdir = tmp_path / "imported"
    with pytest.raises(error, match=message):
        importer.import_networks(import_config(path), str(workdir))
    assert not workdir.exists() or not any(workdir.iterdir())


def test_a_data_set_of_another_resolution_is_an_error_naming_both(tmp_path):
    path = write_v2(tmp_path, g_args={"resolution": 256}, d_args={"resolution": 256})
    with pytest.raises(ConfigError, match=r"128x128.*256x256"):
        importer.import_networks(import_config(path, source="celeb_a"), str(tmp_path / "w"))


def test_an_import_writes_a_workdir_at_the_pickles_stage_and_never_overwrites_one(tmp_path):
    g_args, d_args = {**G_ARGS, "fused_scale": True}, {**D_ARGS, "fused_scale": True}
    variables = official_variables(g_args, d_args)
    path = tmp_path / "network.pkl"
    network_files.write_official_v2(path, g_args, d_args, *variables, 1.5)
    workdir = tmp_path / "imported"
    config = import_config(path)
    summary = importer.import_networks(config, str(workdir))
    assert (summary["stage"], summary["alpha"]) == (1, 0.5)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["fmap_decay"] == 0.8 and saved["model"]["latent_size"] == 12
    provenance = json.loads((workdir / "imported.json").read_text())
    assert provenance["lod"] == 1.5 and provenance["format"] == "official"
    # The 8x8 stage fades in over tiny's 64 images from 64: halfway is 96 images shown.
    assert summary["images_shown"] == 96
    model_config = importer.model_config(
        config, summary_model := official.model_fields(*official.read_networks(str(path))[:2])
    )
    generator = trained.load_generator(model_config, str(workdir), None)
    assert (generator.stage, generator.alpha, generator.images_shown) == (1, 0.5, 96)
    assert summary_model["resolution"] == 16
    expected = importer.read_file(str(path)).generator_ema["to_rgb_8x8"]["kernel"]
    np.testing.assert_array_equal(np.asarray(generator.params["to_rgb_8x8"]["kernel"]), expected)
    with pytest.raises(UserError, match="already holds checkpoints"):
        importer.import_networks(config, str(workdir))
