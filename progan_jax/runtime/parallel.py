"""The device mesh and the placement of states and batches on it.

Training is data parallel over every device of every process: a 1-D mesh with one axis,
`data`. States are replicated; a batch's leading axis is split over the axis. Sampling and
metrics split their minibatches the same way (`Rows`, `rowwise`), so each device computes
only its own images.
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from progan_jax.runtime import collectives

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch, mesh: Mesh):
    """Assembles this process's rows (an array, or a pytree of arrays with the same leading
    axis) into the global batch, split along `data` (the config's batches divide by the
    devices and processes: `config_checks`)."""
    with jax.transfer_guard_host_to_device("allow"):  # intended (see shard_rows)
        return jax.tree.map(
            lambda rows: jax.make_array_from_process_local_data(data_sharded(mesh), rows),
            local_batch,
        )


def round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


def local_mesh() -> Mesh:
    """This process's devices alone: for rows that only this process holds (its reals)."""
    return make_mesh(jax.local_devices())


@dataclasses.dataclass(frozen=True)
class Rows:
    """A minibatch split along `data`: the first `count` rows of `array`; the rows after them
    pad it to a whole number of rows per device, so that every device gets a slice."""

    array: jax.Array
    count: int

    @property
    def mesh(self) -> Mesh:
        return self.array.sharding.mesh

    @property
    def per_device(self) -> int:
        return len(self.array) // self.mesh.size

    def host(self, start: int = 0) -> np.ndarray:
        """Rows `start` to `count` as a NumPy array on every process (gathered from the other
        processes' devices where the mesh spans them)."""
        if self.array.is_fully_addressable:
            return np.asarray(self.array)[start : self.count]
        return collectives.gather_rows(self.array[start : self.count])


def shard_rows(rows: np.ndarray, mesh: Mesh, size: int | None = None) -> Rows:
    """Host rows padded with zeros to `size` (by default the next multiple of the mesh's
    devices) and split along `data`: each device receives only its slice. On a mesh that spans
    processes, every process passes the same rows."""
    rows = np.asarray(rows)
    size = round_up(len(rows), mesh.size) if size is None else size
    padded = np.zeros((size, *rows.shape[1:]), rows.dtype)
    padded[: len(rows)] = rows
    # An intended copy to the devices (the training loop runs under a transfer guard that
    # refuses implicit ones, and JAX counts this one as implicit).
    with jax.transfer_guard_host_to_device("allow"):
        array = jax.make_array_from_callback(padded.shape, data_sharded(mesh), padded.__getitem__)
    return Rows(array, len(rows))


def as_rows(batch: np.ndarray | Rows) -> Rows:
    """A metric's minibatch on devices: generated rows as they are, host rows (this process's
    reals, which other processes do not share) over this process's devices."""
    return batch if isinstance(batch, Rows) else shard_rows(batch, local_mesh())


def rowwise(fn: Callable, mesh: Mesh, differentiates: bool = False) -> Callable:
    """`fn(shared, rows)` jitted over `mesh`: each device runs it on its own slice of `rows` (a
    pytree of arrays split along `data`) with the whole of `shared` (parameters, scalars), and
    the outputs stay split the same way: no device computes, or receives, another's rows.

    An `fn` that `differentiates` through the networks turns the replication check off: the
    convolutions' custom VJPs return per-device weight gradients for replicated weights, which
    it cannot type (as in the train step); its outputs are per row all the same.
    """
    rep, data = PartitionSpec(), PartitionSpec(DATA_AXIS)
    mapped = jax.shard_map(
        fn, mesh=mesh, in_specs=(rep, data), out_specs=data, check_vma=not differentiates
    )
    return jax.jit(
        mapped,
        in_shardings=(replicated(mesh), data_sharded(mesh)),
        out_shardings=data_sharded(mesh),
    )
