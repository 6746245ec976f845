"""Device mesh, shardings and multi-host set-up: one jit over global arrays (the modern form of pmap)."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)
DATA, MODEL = "data", "model"


def maybe_initialize_distributed(flag: bool | None = None) -> None:
    """Calls jax.distributed.initialize() for multi-process runs (flag, or JAX's coordinator env variables).

    On TPU pods and SLURM/Kubernetes GPU clusters initialize() finds its peers by itself; for local tests
    set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    env = os.environ
    if flag is False:
        return
    if flag or "JAX_COORDINATOR_ADDRESS" in env:
        kwargs = {}
        if "JAX_COORDINATOR_ADDRESS" in env:
            kwargs = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
                      "num_processes": int(env["JAX_NUM_PROCESSES"]), "process_id": int(env["JAX_PROCESS_ID"])}
        jax.distributed.initialize(**kwargs)
        log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def make_mesh(data: int = -1, model: int = 1) -> Mesh:
    """A (data, model) mesh over all devices; data=-1 takes every device not used by the model axis."""
    n = jax.device_count()
    if data == -1:
        data = n // model
    if data * model != n:
        raise ValueError(f"mesh {data}x{model} does not cover the {n} devices")
    return Mesh(np.asarray(jax.devices()).reshape(data, model), (DATA, MODEL))


def log_mesh(mesh: Mesh, global_batch: int) -> None:
    """Logs the mesh once at start: devices, processes and the per-device batch."""
    n = mesh.shape[DATA]
    log.info("mesh %s over %d %s device(s) in %d process(es); global batch %d = %d per data-parallel device",
             dict(mesh.shape), mesh.devices.size, jax.devices()[0].platform, jax.process_count(), global_batch,
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
    s = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree)


def to_host(tree: Any) -> Any:
    """A replicated global pytree -> NumPy on this host (works when the arrays span several processes)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def max_over_processes(value: int) -> int:
    """The largest value any process holds (per-process data that must pad to one length; a decision that every
    process must take the same way, such as whether a run folder is resumed)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([value]))))
