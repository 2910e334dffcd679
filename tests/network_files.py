"""Network files as other code bases write them, made here without their code.

- `write_official_v2`: an official `tfutil.Network` version-2 pickle (G, D, Gs) of variables.
- `write_official_theano`: the Theano-era format of the published pickles, as Python 2 wrote
  it (numpy 1's `numpy.core` paths, str payloads), whose parameters the official loader turns
  into the given variables: the inverse of the layout facts in docs/pretrained.md.
- `write_torch`: `torch.save` of a tree with tensors, in torch's zip or legacy format.

Globals are written by name (`Global`), so no module of those code bases is needed.
"""

import collections
import io
import math
import pickle
import zipfile
from typing import ClassVar

import numpy as np


class Global:
    """A global written into a pickle by module and name, never imported here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce asks for a callable
        raise TypeError("a stand-in")


class Call:
    """An object pickled as `func(*args)`, then given `state` (BUILD)."""

    def __init__(self, func: Global, args: tuple = (), state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class Py2Str(bytes):
    """A Python 2 `str`: bytes that unpickle (with encoding='latin1') as text."""


class _Pickler(pickle._Pickler):
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_global(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_py2str(self, obj: Py2Str) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + bytes(obj))
        self.memoize(obj)

    dispatch[Global] = _save_global
    dispatch[Py2Str] = _save_py2str


def dumps(obj, protocol: int = 4, persistent_id=None) -> bytes:
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=protocol)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id
    pickler.dump(obj)
    return buffer.getvalue()


# ------------------------------------------------------------------------- official, v2


def official_v2_network(func: str, kwargs: dict, variables: dict, lod: float) -> Call:
    state = {
        "version": 2,
        "name": func[0],
        "static_kwargs": kwargs,
        "build_module_src": "raise RuntimeError('never executed')",
        "build_func_name": func,
        "variables": [*variables.items(), ("lod", np.float32(lod))],
    }
    return Call(Global("tfutil", "Network"), (), state)


def write_official_v2(path, g_kwargs, d_kwargs, g_vars, d_vars, gs_vars, lod: float) -> None:
    networks = (
        official_v2_network("G_paper", g_kwargs, g_vars, lod),
        official_v2_network("D_paper", d_kwargs, d_vars, lod),
        official_v2_network("G_paper", g_kwargs, gs_vars, lod),
    )
    with open(path, "wb") as file:
        file.write(dumps(networks, protocol=4))


# ---------------------------------------------------------------------- official, Theano


def _py2(tree):
    """Text as Python 2 str, arrays as numpy 1 wrote them."""
    if isinstance(tree, str):
        return Py2Str(tree.encode("latin1"))
    if isinstance(tree, dict):
        return {_py2(k): _py2(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_py2(v) for v in tree)
    if isinstance(tree, np.ndarray | np.floating):
        array = np.array(tree, np.float32)  # a copy, C-ordered, 0-d stays 0-d
        dtype = Call(
            Global("numpy", "dtype"),
            (Py2Str(b"f4"), 0, 1),
            (3, Py2Str(b"<"), None, None, None, -1, -1, 0),
        )
        empty = (Global("numpy", "ndarray"), (0,), Py2Str(b"b"))
        state = (1, array.shape, dtype, False, Py2Str(array.tobytes()))
        return Call(Global("numpy.core.multiarray", "_reconstruct"), empty, state)
    return tree


def _theano_params(func: str, spec: dict, variables: dict, rng) -> list[np.ndarray]:
    """`param_values` whose official conversion gives `variables`: per layer the Theano
    weight, a random scale (equalized LR) and the bias, in the official order."""
    top = int(math.log2(spec["resolution"]))
    params = []

    def layer(name: str, gain: float, to_theano) -> None:
        weight = variables[f"{name}/weight"].astype(np.float64)
        scale = rng.uniform(0.5, 2.0)
        he = gain / math.sqrt(np.prod(weight.shape[:-1]))
        theano_weight = to_theano(weight * he / scale).astype(np.float32)
        params.extend([theano_weight, np.float32(scale), variables[f"{name}/bias"]])

    def conv(w):  # HWIO correlation -> OIHW convolution
        return w[::-1, ::-1].transpose(3, 2, 0, 1)

    def one_by_one(w):
        return w[0, 0]

    relu = math.sqrt(2)
    if func == "G_paper":
        fan_in = variables["4x4/Dense/weight"].shape[0]
        layer("4x4/Dense", relu / 4, lambda w: w.reshape(fan_in, -1, 4, 4).transpose(1, 0, 2, 3))
        layer("4x4/Conv", relu, conv)
        for res in range(3, top + 1):
            layer(f"{2**res}x{2**res}/Conv0", relu, conv)
            layer(f"{2**res}x{2**res}/Conv1", relu, conv)
        for lod in range(top - 1):
            layer(f"ToRGB_lod{lod}", 1.0, one_by_one)
    else:
        layer("FromRGB_lod0", relu, one_by_one)
        for res in range(top, 2, -1):
            layer(f"{2**res}x{2**res}/Conv0", relu, conv)
            layer(f"{2**res}x{2**res}/Conv1", relu, conv)
            layer(f"FromRGB_lod{top - res + 1}", relu, one_by_one)
        layer("4x4/Conv", relu, conv)
        layer("4x4/Dense0", relu, lambda w: w.T.reshape(w.shape[1], -1, 4, 4)[:, :, ::-1, ::-1])
        layer("4x4/Dense1", 1.0, lambda w: w)
    return params


def theano_network(func: str, spec: dict, variables: dict, lod: float, rng) -> Call:
    state = {
        "build_func_spec": {"func": func, **spec},
        "param_values": _theano_params(func, spec, variables, rng),
        "toplevel_params": {"cur_lod": np.float32(lod)},
    }
    return Call(Global("network", "Network"), (), _py2(state))


def write_official_theano(path, g_spec, d_spec, g_vars, d_vars, gs_vars, lod, seed=0) -> None:
    rng = np.random.default_rng(seed)
    networks = (
        theano_network("G_paper", g_spec, g_vars, lod, rng),
        theano_network("D_paper", d_spec, d_vars, lod, rng),
        theano_network("G_paper", g_spec, gs_vars, lod, rng),
    )
    with open(path, "wb") as file:
        file.write(dumps(networks, protocol=2))


# ------------------------------------------------------------------------------- torch


class Tensor:
    """A float32 tensor for `write_torch`; `view` (offset, size, stride) overrides the
    contiguous view of its storage that torch writes."""

    def __init__(self, array: np.ndarray, view: tuple | None = None):
        self.array = np.ascontiguousarray(array, np.float32)
        self.view = view


def _torch_tree(tree, storages: list):
    if isinstance(tree, Tensor):
        storages.append(tree.array)
        key = str(len(storages) - 1)
        strides = tuple(int(s // 4) for s in tree.array.strides)
        offset, size, stride = tree.view or (0, tree.array.shape, strides)
        storage = _StorageRef(key, tree.array.size)
        args = (storage, offset, size, stride, False, collections.OrderedDict())
        return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)
    if isinstance(tree, dict):
        return type(tree)((k, _torch_tree(v, storages)) for k, v in tree.items())
    if isinstance(tree, Call):
        return Call(tree.func, tree.args, _torch_tree(tree.state, storages))
    return tree


def gan_zoo_checkpoint(states: dict[str, dict], config: dict) -> dict:
    """What pytorch_GAN_zoo saves: its `BaseConfig` object and state dicts of tensors."""
    return {
        "config": Call(Global("models.utils.config", "BaseConfig"), (), config),
        **{name: {k: Tensor(v) for k, v in state.items()} for name, state in states.items()},
    }


class _StorageRef:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


def _persistent_id(obj):
    if isinstance(obj, _StorageRef):
        return ("storage", Global("torch", "FloatStorage"), obj.key, "cpu", obj.numel)
    return None


def write_torch(path, tree, zipped: bool = True) -> None:
    """`torch.save(tree)`, tensors given as `Tensor`s, in the zip or the legacy format."""
    storages: list[np.ndarray] = []
    body = dumps(_torch_tree(tree, storages), protocol=2, persistent_id=_persistent_id)
    if zipped:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", body)
            archive.writestr("archive/byteorder", "little")
            for key, array in enumerate(storages):
                archive.writestr(f"archive/data/{key}", array.astype("<f4").tobytes())
            archive.writestr("archive/version", "3\n")
        return
    with open(path, "wb") as file:
        file.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        file.write(pickle.dumps(1001, protocol=2))
        info = {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        }
        file.write(pickle.dumps(info, protocol=2))
        file.write(body)
        file.write(pickle.dumps([str(k) for k in range(len(storages))], protocol=2))
        for array in storages:
            file.write(np.int64(array.size).tobytes())
            file.write(array.astype("<f4").tobytes())
