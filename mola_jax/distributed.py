"""Several processes, one run (jax.distributed): joining them, and the few decisions and reads they must take
together. Only process 0 writes logs and results; every process runs every computation and writes its own
checkpoint shards. With one process every function here is a no-op or a local read.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from mola_jax.errors import ConfigError


def _truthy(value: str | None) -> bool:
  return (value or "").strip().lower() in ("1", "true", "yes", "on")


def initialize_distributed(requested: bool = False) -> bool:
  """jax.distributed.initialize() if `requested` (cfg.distributed) or MOLA_DISTRIBUTED=1; call it before
  anything touches a device. The coordinator, process count and id come from the cluster (Cloud TPU, SLURM,
  Open MPI, Kubernetes are auto-detected) or from JAX_COORDINATOR_ADDRESS, MOLA_NUM_PROCESSES and
  MOLA_PROCESS_ID (e.g. several CPU processes on one machine: launch/local.sh). Returns whether it ran."""
  if not (requested or _truthy(os.environ.get("MOLA_DISTRIBUTED"))):
    return False
  kwargs = {}
  if os.environ.get("MOLA_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["MOLA_NUM_PROCESSES"])
  if os.environ.get("MOLA_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["MOLA_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  return True


def is_lead() -> bool:
  """Process 0: the only one that writes logs and results (every process writes its checkpoint shards). Asked of a
  single process, it starts no backend: a study's driver whose cells run in child processes leaves them the devices."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync(name: str) -> None:
  """Wait until every process gets here (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def fetch(tree):
  """Device arrays -> numpy on every process. An array whose shards all live in this process, or one that every
  device holds whole (fully replicated), is read locally; any other (e.g. batch-sharded over the devices of
  several processes) is gathered by a collective, so every process must call this at the same point, as they do:
  they run the same program."""

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def agree(flag: bool) -> bool:
  """Process 0's `flag` on every process (no-op with one process): a decision that every process must take alike,
  such as saving a collective checkpoint now, although each would judge it by its own clock."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def mesh_devices(n: int) -> list:
  """The first `n` devices, taken evenly from every process (a sub-mesh must span all processes, since every
  process runs every computation)."""
  if n == jax.device_count():
    return jax.devices()
  count = jax.process_count()
  if n % count:
    raise ConfigError(f"a mesh of {n} devices cannot be spread evenly over {count} processes")
  per = n // count
  devices = []
  for p in range(count):
    devices += [d for d in jax.devices() if d.process_index == p][:per]
  return devices
