"""The device mesh and the placement of states and batches on it.

Training is data parallel over every device of every process: a 1-D mesh with one axis,
`data`. States are replicated; a batch's leading axis is split over the axis.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divides(batch_size: int, devices: int, what: str = "batch size") -> None:
    if batch_size % devices:
        raise ValueError(
            f"{what} {batch_size} does not divide by the {devices} devices; "
            f"use a multiple of {devices}."
        )


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles this process's rows into the global batch array, split along `data`."""
    check_batch_divides(len(local_batch), len(mesh.local_devices), "this process's batch")
    return jax.make_array_from_process_local_data(data_sharded(mesh), local_batch)
