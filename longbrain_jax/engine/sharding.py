"""The subject axis spread over devices (and hosts) with a JAX mesh.

Per-subject models never talk to each other, so the only thing sharding has to do
is place each device's slice of the subject axis on it; `jit` partitions the
vmapped program accordingly with no communication. Arrays are built with
`jax.make_array_from_callback`, which under `jax.distributed.initialize()` gives each
host only its own devices' slices of a global array, so the same code runs on one
device, several local devices, or several hosts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "subjects"


def subject_mesh(devices: list | None = None, subjects: int | None = None) -> Mesh:
    """A one-axis mesh named "subjects" over `devices` (default: every device of every host).

    `subjects`: a cohort with fewer subjects than devices gets a mesh of only as many devices
    as it has subjects (on one process; every host keeps its devices), so that no device
    trains padding: on the CPU, the devices of `--xla_force_host_platform_device_count` or
    `jax_num_cpu_devices` share the same cores, and 2 subjects padded to 4 slots cost twice
    the compute of 2.
    """
    devices = jax.devices() if devices is None else list(devices)
    if subjects is not None and jax.process_count() == 1:
        devices = devices[: max(1, min(len(devices), subjects))]
    return Mesh(np.asarray(devices), (AXIS,))


def padded_count(n: int, mesh: Mesh) -> int:
    """`n` rounded up to a multiple of the number of devices in `mesh`."""
    d = mesh.devices.size
    return -(-n // d) * d


def pad_subjects(tree, n: int):
    """Zero-pad every leaf's leading (subject) axis to length `n` (host arrays)."""

    def pad(x):
        x = np.asarray(x)
        return np.concatenate([x, np.zeros((n - x.shape[0], *x.shape[1:]), x.dtype)]) if x.shape[0] < n else x

    return jax.tree_util.tree_map(pad, tree)


def pad_scans(x: np.ndarray, t_max: int) -> np.ndarray:
    """Zero-pad the scan axis (axis 1) of a (n, T, ...) host array to `t_max` slots (no copy if it has them)."""
    if x.shape[1] == t_max:
        return x
    return np.concatenate([x, np.zeros((x.shape[0], t_max - x.shape[1], *x.shape[2:]), x.dtype)], 1)


def shard_subjects(tree, mesh: Mesh):
    """Host arrays (same on every host) -> global arrays sharded on their leading axis."""
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def replicate(tree, mesh: Mesh):
    """Host arrays -> global arrays replicated on every device of `mesh`."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def to_host(tree):
    """Global arrays -> full numpy arrays on this host (gathered across hosts if needed)."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(np.asarray, tree)
