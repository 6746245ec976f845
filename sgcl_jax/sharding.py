"""Device mesh, shardings and multi-host set-up: one jit over global arrays (the modern form of pmap)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)
DATA, MODEL = "data", "model"
HEARTBEAT_TIMEOUT_S = 100  # JAX's own default


def maybe_initialize_distributed(flag: bool | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
    """Calls jax.distributed.initialize() for multi-process runs (flag, or JAX's coordinator env variables).

    On TPU pods and SLURM/Kubernetes GPU clusters initialize() finds its peers by itself; for local tests
    set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. A process whose heartbeats stop for
    heartbeat_timeout_s is declared dead and the run stops at its last checkpoint.
    """
    env = os.environ
    if flag is False:
        return
    if flag or "JAX_COORDINATOR_ADDRESS" in env:
        kwargs: dict[str, Any] = {"heartbeat_timeout_seconds": heartbeat_timeout_s}
        if "JAX_COORDINATOR_ADDRESS" in env:
            kwargs |= {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                      "num_processes": int(env["JAX_NUM_PROCESSES"]), "process_id": int(env["JAX_PROCESS_ID"])}
        jax.distributed.initialize(**kwargs)
        log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def make_mesh(data: int = -1, model: int = 1, devices: Any = None) -> Mesh:
    """A (data, model) mesh over all devices (or `devices`, e.g. a TPU topology's); data=-1 takes every device not
    used by the model axis. Devices are ordered along the chips' interconnect, and over several slices the data
    axis is slice-major (a hybrid ICI x DCN mesh), so only the gradient reduction crosses slices."""
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else np.asarray(devices).reshape(-1))
    n = len(devices)
    if data == -1:
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh {data}x{model} does not cover the {n} devices")
    slices = len({getattr(d, "slice_index", 0) or 0 for d in devices})
    if devices[0].platform != "tpu":  # CPU/GPU: the given order (one host's devices, or one per process)
        grid = np.asarray(devices).reshape(data, model)
    elif slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh((data // slices, model), (slices, 1), devices)
    else:
        grid = mesh_utils.create_device_mesh((data, model), devices)
    return Mesh(grid, (DATA, MODEL))


# Arrays smaller than this stay replicated under FSDP: biases and LayerNorm scales cost more to gather than to keep.
FSDP_MIN_SIZE = 2**14


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live on a mesh: the batch split over `data`; params, optimizer state and guide either
    replicated, or (fsdp) every large array split over `data` as well (ZeRO-3: XLA gathers weights where they are
    used and reduce-scatters their gradients). Hashable, so it can key a compiled step."""

    mesh: Mesh
    fsdp: bool = False
    min_size: int = FSDP_MIN_SIZE  # smaller arrays stay replicated under FSDP

    @property
    def batch(self) -> NamedSharding:
        """The leading (batch) axis split over the data axis."""
        return batch_sharding(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        """Every device holds the whole array."""
        return replicated(self.mesh)

    def spec(self, shape: tuple[int, ...]) -> PartitionSpec:
        """Replicated, or under FSDP the largest axis that divides by the data axis (arrays >= min_size)."""
        n = self.mesh.shape[DATA]
        if not self.fsdp or n == 1 or math.prod(shape) < self.min_size:
            return PartitionSpec()
        axes = [i for i in sorted(range(len(shape)), key=lambda i: -shape[i]) if shape[i] % n == 0]
        if not axes:
            return PartitionSpec()
        return PartitionSpec(*[DATA if i == axes[0] else None for i in range(len(shape))])

    def params(self, tree: Any) -> Any:
        """A NamedSharding for every leaf of a (concrete or abstract) param or optimizer-state tree."""
        return jax.tree.map(lambda x: NamedSharding(self.mesh, self.spec(tuple(np.shape(x)))), tree)


def log_mesh(mesh: Mesh, global_batch: int) -> None:
    """Logs the mesh once at start: devices, processes and the per-device batch."""
    n = mesh.shape[DATA]
    log.info("mesh %s over %d %s device(s) in %d process(es); global batch %d = %d per data-parallel device",
             dict(mesh.shape), mesh.devices.size, mesh.devices.flat[0].platform, jax.process_count(), global_batch,
             global_batch // n)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (params, optimizer state, guide)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch(global_batch: int, mesh: Mesh) -> None:
    """The global batch must divide over the data axis."""
    n = mesh.shape[DATA]
    if global_batch % n:
        raise ValueError(f"data.batch_size={global_batch} does not divide by the {n} devices of the data axis; "
                         f"use a multiple of {n}")


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's rows into one global array sharded on the data axis."""
    n = jax.process_count()
    return {k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * n, *v.shape[1:]))
            for k, v in local.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of the mesh (every process passes the same values)."""
    return put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def put(tree: Any, shardings: Any) -> Any:
    """Places a host pytree on the mesh with one sharding per leaf (every process passes the same values)."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, shardings)


def to_host(tree: Any) -> Any:
    """A global pytree -> NumPy on this host (replicated or sharded, also when the arrays span several processes)."""
    def get(x: Any) -> Any:
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        if x.is_fully_addressable:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def max_over_processes(value: int) -> int:
    """The largest value any process holds (per-process data that must pad to one length; a decision that every
    process must take the same way, such as whether a run folder is resumed)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value]))))
