"""Several processes (hosts) as one JAX program: initialization, who writes, who reads which data.

`initialize` calls `jax.distributed.initialize` when the run is multi-process: from explicit settings
(coordinator address, process count and id — e.g. GPU hosts, or several local CPU processes), from the
environment variables jax reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or on a
Cloud TPU VM pod slice, where jax discovers everything itself. Single-process runs skip it.
"""

from __future__ import annotations

import os
from typing import Literal

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from yarn_jax.errors import ConfigError
from yarn_jax.platforms import tpu_attached


class DistributedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: initialize when settings/environment/TPU pod say multi-process; "
        "on: always (jax auto-detects the cluster); off: single process")
    coordinator_address: str | None = Field(None, description="host:port of process 0")
    num_processes: int | None = Field(None, description="number of processes")
    process_id: int | None = Field(None, description="this process's id, 0..num_processes-1")
    local_device_ids: list[int] | None = Field(None, description="devices this process uses (GPU hosts)")
    timeout_s: int = Field(300, description="seconds to wait for every process to join")


def _tpu_vm() -> bool:
    """A Cloud TPU VM (TPU chips attached, or the slice's worker list set): jax.distributed.initialize()
    discovers the slice's hosts itself (one process on a single-host slice). libtpu alone is no sign: it
    is installed for ahead-of-time compilation on machines without a TPU."""
    return tpu_attached() or "TPU_WORKER_HOSTNAMES" in os.environ


def initialize(cfg: DistributedConfig | None = None) -> bool:
    """Join the multi-process run if there is one; returns whether jax.distributed was initialized. Call it
    before anything touches a device."""
    cfg = cfg or DistributedConfig()
    if jax.distributed.is_initialized():
        return True
    explicit = cfg.coordinator_address is not None or cfg.num_processes is not None
    env = "JAX_COORDINATOR_ADDRESS" in os.environ
    if cfg.mode == "off" or (cfg.mode == "auto" and not (explicit or env or _tpu_vm())):
        return False
    if explicit and None in (cfg.coordinator_address, cfg.num_processes, cfg.process_id):
        raise ConfigError("distributed: coordinator_address, num_processes and process_id go together "
                          f"(got {cfg.coordinator_address!r}, {cfg.num_processes!r}, {cfg.process_id!r})")
    if cfg.process_id is not None and not 0 <= cfg.process_id < (cfg.num_processes or 1):
        raise ConfigError(f"distributed.process_id {cfg.process_id} is outside 0..{cfg.num_processes - 1}")
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                               process_id=cfg.process_id, local_device_ids=cfg.local_device_ids,
                               initialization_timeout=cfg.timeout_s)
    return True


def is_primary() -> bool:
    """Process 0: the one that logs, writes results and plots."""
    return jax.process_index() == 0


def share_from_primary(obj):
    """Process 0's value of a JSON-serializable object, on every process (the identity when single-process):
    e.g. which evaluation cells are already done, so that every process runs the same computations."""
    if jax.process_count() == 1:
        return obj
    import json

    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_primary() else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
    buf = np.zeros(n, np.uint8)
    buf[:data.size] = data
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())


def process_block(sharding, global_shape) -> tuple[slice, ...]:
    """The block of a global array this process's devices hold under `sharding` (e.g. its rows of a batch,
    and all tokens or its part of them): what the process loads; the rest of the data it never reads."""
    indices = sharding.addressable_devices_indices_map(tuple(global_shape)).values()
    block = []
    for dim, n in enumerate(global_shape):
        ranges = [idx[dim].indices(n)[:2] for idx in indices]
        block.append(slice(min(r[0] for r in ranges), max(r[1] for r in ranges)))
    return tuple(block)


def from_process_block(local: np.ndarray, sharding, global_shape) -> jax.Array:
    """The global array from each process's own block (`process_block`) of it."""
    return jax.make_array_from_process_local_data(sharding, np.asarray(local), tuple(global_shape))


def from_host(array: np.ndarray, sharding) -> jax.Array:
    """The global array from a host array every process holds whole (each device takes its block)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])
