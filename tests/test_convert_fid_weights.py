"""The FID weight converters (progan_jax.metrics.convert_fid_weights): the two naming schemes,
and the torch-free TorchScript reader."""

import collections
import io
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from progan_jax.metrics import convert_fid_weights, inception


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


@pytest.mark.slow
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


def _torchscript_zip(data_pkl: bytes, storages: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return buffer.getvalue()


def test_torchscript_reader_refuses_foreign_globals():
    malicious = _torchscript_zip(pickle.dumps(collections.Counter({"a": 1})), {})
    with pytest.raises(pickle.UnpicklingError, match=r"unexpected global collections\.Counter"):
        convert_fid_weights.read_torchscript_state(malicious)
