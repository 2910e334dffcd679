"""Reading network files from the internet without running code from them.

A pickle is a program: each global it names is imported and may be called, so an ordinary
`pickle.load` of a downloaded file can run anything (the official loader even `exec`s the
source a network pickle carries). `load` admits only the globals a network file needs: stand-in
classes that keep an object's state as data (`Stub`), numpy's array and dtype reconstruction,
and what Python's own protocol uses for dicts and bytes. Any other global is refused, by name,
before it is imported.

Torch's `.pth` files hold such a pickle whose tensors point into raw storages; `load_torch`
rebuilds them as numpy arrays, with no torch installed.
"""

import codecs
import collections
import dataclasses
import io
import math
import pickle
import zipfile
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import numpy as np

from progan_jax.runtime import paths
from progan_jax.runtime.errors import UserError


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A file asked for a global this reader does not admit; the message names it."""


class UnreadableFileError(UserError, ValueError):
    """A file is not a network file of a known format (truncated, or something else)."""


class Stub:
    """A pickled object of a class this reader stands in for: its state as plain data.

    `module` and `name` say which class the file named; `state` is what the file's BUILD set
    (the official `Network.__getstate__` dict), `args` what its constructor was given.
    """

    module: str = ""
    name: str = ""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name} stand-in>"


def stub_class(module: str, name: str) -> type[Stub]:
    """A `Stub` subclass standing in for `module.name`."""
    return type(name, (Stub,), {"module": module, "name": name})


def _reconstruct_object(cls: type, base: type, state: Any) -> Any:
    """`copyreg._reconstructor` (protocol 0 and 1 pickles of new-style objects), for admitted
    classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)) or base is not object:
        raise UnsafePickleError(f"refused to rebuild {cls!r} from {base!r}")
    return cls()


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode`, as protocol-2 pickles from Python 3 write bytes; text codecs only."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise UnsafePickleError(f"refused the codec {encoding!r} in _codecs.encode")
    return codecs.encode(text, encoding)


# numpy's own rebuilds are not admitted: `dtype.__setstate__` takes flags and item sizes as
# given, so a crafted dtype makes an array of raw pointers that numpy later dereferences. The
# stand-ins below rebuild plain numeric arrays from checked byte strings instead.
NUMERIC_DTYPES = frozenset(("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"))
_NDARRAY = object()  # `numpy.ndarray`, the class `_reconstruct` is asked to make: a name only


class _DType:
    """`numpy.dtype(code, align, copy)` and its BUILD, numeric codes only."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False):
        if code not in NUMERIC_DTYPES:
            raise UnsafePickleError(
                f"refused the dtype {code!r}: a network file holds arrays of numbers only"
            )
        self.code, self.order = code, "="

    def __setstate__(self, state: Any) -> None:
        ok = isinstance(state, tuple) and len(state) >= 4 and state[1] in ("<", ">", "|", "=")
        if not ok or state[2] is not None or state[3] is not None:  # no subarrays, no fields
            raise UnsafePickleError(f"refused the dtype state {state!r}")
        self.order = state[1]

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(("=" if self.order == "|" else self.order) + self.code)


def _array(raw: Any, dtype: Any, shape: Any, fortran: bool = False) -> np.ndarray:
    """A native-order array of `shape` from exactly its bytes."""
    if not isinstance(dtype, _DType):
        raise UnsafePickleError(f"refused an array of {dtype!r}")
    if isinstance(raw, str):  # a Python 2 str, read as latin-1 text
        raw = raw.encode("latin1")
    if not isinstance(raw, bytes | bytearray):
        raise UnsafePickleError(f"refused array data of type {type(raw).__name__}")
    shape = tuple(shape) if isinstance(shape, tuple | list) else (shape,)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnreadableFileError(f"an array of shape {shape!r}")
    dt = dtype.numpy
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise UnreadableFileError(
            f"an array of shape {shape} and dtype {dt} holds {len(raw)} bytes; the file is "
            "damaged or truncated"
        )
    flat = np.frombuffer(bytes(raw), dt)
    return flat.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="))


class _Array:
    """`numpy.core.multiarray._reconstruct(ndarray, ...)` and its BUILD; `.array` after it."""

    def __init__(self, cls: Any, *unused: Any):
        if cls is not _NDARRAY:
            raise UnsafePickleError(f"refused to reconstruct {cls!r}")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"refused the array state of {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array(raw, dtype, shape, bool(fortran))


def _scalar(dtype: Any, raw: Any = b"") -> np.generic:
    """`numpy.core.multiarray.scalar`: one number."""
    return _array(raw, dtype, ())[()]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    """`numpy._core.numeric._frombuffer`, protocol 5's arrays."""
    return _array(buffer, dtype, shape, order == "F")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The stand-ins under numpy 1's (`numpy.core`) and numpy 2's (`numpy._core`) module
    paths: Python 2-era files name the first."""
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = _Array
        found[(f"{package}.multiarray", "scalar")] = _scalar
        found[(f"{package}.numeric", "_frombuffer")] = _frombuffer
    return found


def _replaced(tree: Any, replace: Callable[[Any], Any]) -> Any:
    """`tree` with `replace` applied to each leaf, through dicts, lists, tuples and stubs."""
    if isinstance(tree, dict):
        return type(tree)((key, _replaced(value, replace)) for key, value in tree.items())
    if isinstance(tree, list | tuple):
        return type(tree)(_replaced(value, replace) for value in tree)
    if isinstance(tree, Stub):
        tree.args = _replaced(tree.args, replace)
        tree.state = _replaced(tree.state, replace)
        return tree
    return replace(tree)


def _numpy_arrays(leaf: Any) -> Any:
    if isinstance(leaf, _Array):
        if leaf.array is None:
            raise UnreadableFileError("an array without its data; the file is damaged")
        return leaf.array
    if isinstance(leaf, _DType):
        return leaf.numpy
    return leaf


_PYTHON_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("copy_reg", "_reconstructor"): _reconstruct_object,
    ("copyreg", "_reconstructor"): _reconstruct_object,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
    ("_codecs", "encode"): _encode_latin1,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(
        self,
        file: BinaryIO,
        admitted: dict[tuple[str, str], Any],
        persistent_load: Callable[[Any], Any] | None,
    ):
        super().__init__(file, encoding="latin1")  # Python 2's str: bytes as latin-1 text
        self._admitted = admitted
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        found = self._admitted.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"the file asks for the global {module}.{name}, which a network file does not "
                "need; refused without importing it (a pickle can run any code it names)."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        return self._persistent(pid)


# What unpickling a damaged or truncated file raises (a crafted one too: it may ask for
# absurd sizes or nest without end).
_DAMAGED = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError,
    MemoryError, RecursionError,
)  # fmt: skip


def load(
    file: BinaryIO,
    stubs: Iterable[tuple[str, str]] = (),
    extra: dict[tuple[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    what: str = "file",
) -> Any:
    """The object pickled in `file`, with `stubs` (module, class name) read as `Stub`s.

    Raises UnsafePickleError naming the first global not admitted, and UnreadableFileError for
    a file that ends early or is not a pickle.
    """
    admitted = {**_numpy_globals(), **_PYTHON_GLOBALS, **(extra or {})}
    admitted.update({key: stub_class(*key) for key in stubs})
    try:
        loaded = _RestrictedUnpickler(file, admitted, persistent_load).load()
        return _replaced(loaded, _numpy_arrays)
    except (UnsafePickleError, UnreadableFileError):
        raise
    except _DAMAGED as error:
        raise UnreadableFileError(
            f"{what} is not a complete pickle ({type(error).__name__}: {error}); it may be "
            "truncated: download it again."
        ) from error


# --------------------------------------------------------------------------- torch's files

_TORCH_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_MAGIC = b"PK\x03\x04"


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A storage the pickle refers to; its bytes are read once the pickle is done."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self, flat: np.ndarray) -> np.ndarray:
        """This tensor of `flat` (its storage's elements), with torch's element strides: every
        element it views inside the storage, none twice unless the strides say so."""
        whole = (self.offset, *self.size, *self.stride)
        if not all(isinstance(n, int) and n >= 0 for n in whole):
            raise UnreadableFileError(f"a tensor of size {self.size}, strides {self.stride}")
        count = math.prod(self.size)
        reach = sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if count and (count > flat.size or self.offset + reach >= flat.size):
            raise UnreadableFileError(f"a tensor reaches past its storage {self.storage.key}")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


class _StorageType:
    """`torch.FloatStorage` and its kin, as names: they are never called."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_TORCH_STORAGES[name])


def _storage(pid: Any) -> _Storage:
    """torch's persistent id of a storage: ('storage', type, key, location, numel[, view])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise UnsafePickleError(f"unexpected persistent id {pid!r}")
    if not isinstance(pid[1], _StorageType):
        raise UnreadableFileError(f"unsupported storage type {pid[1]!r}")
    if len(pid) == 6 and pid[5] is not None:
        raise UnreadableFileError("storage views (torch < 1.0 files) are not supported")
    if not (isinstance(pid[4], int) and pid[4] >= 0):
        raise UnreadableFileError(f"a storage of {pid[4]!r} elements")
    return _Storage(str(pid[2]), pid[1].dtype, pid[4])


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *unused) -> _Tensor:
    """`torch._utils._rebuild_tensor_v2`."""
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _Tensor, *unused) -> _Tensor:
    return data


def _torch_globals() -> dict[tuple[str, str], Any]:
    admitted: dict[tuple[str, str], Any] = {
        ("torch", name): _StorageType(name) for name in _TORCH_STORAGES
    }
    admitted[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor
    admitted[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
    return admitted


def _with_arrays(tree: Any, flat: Callable[[_Storage], np.ndarray]) -> Any:
    """`tree` with every tensor as a numpy array of its storage's elements (`flat`)."""

    def array(leaf: Any) -> Any:
        return leaf.array(flat(leaf.storage)) if isinstance(leaf, _Tensor) else leaf

    return _replaced(tree, array)


def _elements(raw: bytes, storage: _Storage, what: str) -> np.ndarray:
    itemsize = storage.dtype.itemsize
    if len(raw) < storage.numel * itemsize:
        raise UnreadableFileError(
            f"{what}: storage {storage.key} holds {len(raw) // itemsize} of its "
            f"{storage.numel} elements; the file is truncated: download it again."
        )
    raw = raw[: storage.numel * itemsize]
    return np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)


def load_torch(path: str, stubs: Iterable[tuple[str, str]] = ()) -> Any:
    """The object `torch.save` wrote to `path`, tensors as numpy arrays, without torch.

    Both of torch's formats: the zip archive (torch >= 1.6: `<archive>/data.pkl` and a raw
    little-endian buffer per storage in `<archive>/data/<key>`) and the older sequential one
    (a magic number, the protocol, system info, the pickle, its storage keys, then each
    storage as an int64 count and its elements).
    """
    with paths.resolve(path).open("rb") as file:
        zipped = file.read(4) == ZIP_MAGIC
    return (_load_torch_zip if zipped else _load_torch_legacy)(path, tuple(stubs))


def _load_torch_zip(path: str, stubs: tuple) -> Any:
    with paths.resolve(path).open("rb") as file:
        try:
            archive = zipfile.ZipFile(file)
        except zipfile.BadZipFile as error:
            raise UnreadableFileError(
                f"{path} is not a complete zip file ({error}); it may be truncated: download "
                "it again."
            ) from error
        return _read_torch_zip(archive, path, stubs)


def _read_torch_zip(archive: zipfile.ZipFile, path: str, stubs: tuple) -> Any:
    with archive:
        pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
        if len(pickles) != 1:
            raise UnreadableFileError(f"{path}: a torch zip holds one data.pkl, found {pickles}")
        root = pickles[0][: -len("data.pkl")]

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except (KeyError, zipfile.BadZipFile, OSError) as error:
                raise UnreadableFileError(
                    f"{path}: cannot read {name} ({error}); the file may be truncated."
                ) from error

        tree = load(io.BytesIO(read(pickles[0])), stubs, _torch_globals(), _storage, what=path)
        cache: dict[str, np.ndarray] = {}

        def flat(storage: _Storage) -> np.ndarray:
            if storage.key not in cache:
                cache[storage.key] = _elements(read(f"{root}data/{storage.key}"), storage, path)
            return cache[storage.key]

        return _with_arrays(tree, flat)


def _load_torch_legacy(path: str, stubs: tuple) -> Any:
    with paths.resolve(path).open("rb") as file:
        magic = load(file, what=path)
        if magic != _TORCH_LEGACY_MAGIC:
            raise UnreadableFileError(
                f"{path} is neither a network pickle nor a torch file (it starts with {magic!r})"
            )
        load(file, what=path)  # the protocol version
        load(file, what=path)  # system info: byte order and type sizes
        storages: dict[str, _Storage] = {}

        def remember(pid: Any) -> _Storage:
            storage = _storage(pid)
            storages[storage.key] = storage
            return storage

        tree = load(file, stubs, _torch_globals(), remember, what=path)
        keys = load(file, what=path)
        arrays = {}
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise UnreadableFileError(f"{path}: its storage keys do not match its tensors")
        for key in keys:
            storage = storages[str(key)]
            header = file.read(8)
            if len(header) < 8:
                raise UnreadableFileError(f"{path}: truncated before storage {key}")
            count = int(np.frombuffer(header, "<i8")[0])
            if count != storage.numel:
                raise UnreadableFileError(
                    f"{path}: storage {key} says {count} elements, its tensors {storage.numel}"
                )
            raw = file.read(count * storage.dtype.itemsize)
            arrays[storage.key] = _elements(raw, storage, path)
    return _with_arrays(tree, lambda storage: arrays[storage.key])
