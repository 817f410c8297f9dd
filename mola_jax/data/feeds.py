"""The order of a stage's training windows, chunk by chunk, and where their batches are gathered: what fit's epoch
loop trains each chunk of steps on, and the state a resume point keeps of it.

    order = HandOrder(windows, batch_size, seed=s, chunk=C)             # a wide table (the benchmark files)
    order = PanelOrder(split, batch_size, seed=s, chunk=C, host=False)  # a panel, from grain
    for chunk in order.chunks(epoch, first, state):  # the epoch from its batch `first`; `state`: a saved state()
      chunk.idx [C, B] (gathered on the device) or chunk.batch {"x": [C, B, L, 1], ...} (gathered on the host)
      order.state()  # JSON: where the order stands, for the resume record

Two orders, on purpose. The benchmark files keep the hand-written order of data/orders.py, so that their runs give
the numbers they always gave (the README's ETTh1 run, to the last digit). A panel's order comes from grain: a
`MapDataset` of its training windows shuffled by (seed, epoch), in batches; its iterator's state is the resume
record's, so a run killed in the middle of an epoch goes on with the very next batch.

Placement. "device": the panel lies on the device and each chunk is its window indices (a few bytes a batch), the
batches gathered there, as for the benchmark files. "host": a grain pipeline gathers the windows on the host from
the panel's own array (PanelSplit.batch), a background thread PREFETCH chunks ahead of the step, and the chunk
goes to the device as batches; only the chunks in flight are held besides the panel. Each JAX process gathers its
own share of every batch (grain's slice by process index, as ShardByJaxProcess), and the shares make the global
batch; a batch holds the same windows under both placements, so a run gives the same numbers under either.
"auto": the device when the panel takes at most DEVICE_SHARE of its memory, else the host.
"""

from __future__ import annotations

import dataclasses
import os

import grain
import jax
import numpy as np
from grain.experimental import ThreadPrefetchIterDataset

from mola_jax import sharding
from mola_jax.data.orders import epoch_seed, num_train_batches, train_order
from mola_jax.data.panel import PanelSplit
from mola_jax.errors import DataError

PLACEMENTS = ("auto", "device", "host")
DEVICE_SHARE = 0.25  # of the device's memory a panel may take under "auto": the model and its steps need the rest
PREFETCH = 2  # chunks gathered ahead of the step under "host"


def placement(requested: str, nbytes: int) -> str:
  """data.placement resolved for a panel of `nbytes`: "auto" -> "device" if it takes at most DEVICE_SHARE of the
  first device's memory (its bytes_limit; a CPU's: the machine's memory), else "host"."""
  if requested != "auto":
    return requested
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return "device" if nbytes <= DEVICE_SHARE * limit else "host"


@dataclasses.dataclass
class Chunk:
  """C train steps' data: window indices to gather on the device, or the batches gathered on the host."""

  first: int  # the epoch's batch it starts at
  n: int  # its real steps; the last chunk of an epoch may hold fewer than C
  valid: np.ndarray  # bool [C]: step c is real
  idx: np.ndarray | None = None  # int32 [C, B]: the windows' rows (data.gather)
  batch: dict | None = None  # {"x": [C, B, L, D], "y": [C, B, W, D], "t0": [C, B], ...} on the host


def _chunk(n: int, c: int, rows: np.ndarray) -> tuple:
  """rows [n, B] -> (rows padded to [C, B] with window 0's (invalid steps), valid [C])."""
  idx = np.zeros((c, rows.shape[1]), np.int32)
  idx[:n] = rows
  return idx, np.arange(c) < n


class HandOrder:
  """A wide table's order: data.train_order's permutation by (seed, epoch); nothing to save beyond the batch."""

  def __init__(self, windows, batch_size: int, *, seed: int, chunk: int):
    self.windows, self.batch_size, self.seed, self.chunk = windows, batch_size, seed, chunk
    self.steps_per_epoch = num_train_batches(windows, batch_size)

  def chunks(self, epoch: int, first: int, state=None):
    del state
    order = train_order(self.windows, self.batch_size, seed=self.seed, epoch=epoch)
    for at in range(first, self.steps_per_epoch, self.chunk):
      n = min(self.chunk, self.steps_per_epoch - at)
      idx, valid = _chunk(n, self.chunk, order[at : at + n])
      yield Chunk(at, n, valid, idx=idx)

  def state(self):
    return None


class PanelOrder:
  """A panel's order from grain: its training windows shuffled by (seed, epoch) in batches of B (the incomplete
  last one dropped), C batches a chunk, gathered on the device (host=False: each chunk is its indices) or on the
  host (host=True: each chunk is its batches, PREFETCH chunks ahead). state(): the grain iterator's."""

  def __init__(self, split: PanelSplit, batch_size: int, *, seed: int, chunk: int, host: bool):
    processes = jax.process_count() if host else 1  # on the device every process takes the global indices
    if batch_size % processes:
      raise DataError(f"batch_size {batch_size} does not divide among {processes} processes; make it a multiple")
    self.split, self.batch_size, self.seed, self.chunk, self.host = split, batch_size, seed, chunk, host
    self.steps_per_epoch, self.processes, self.iterator = num_train_batches(split, batch_size), processes, None

  def dataset(self, epoch: int) -> grain.IterDataset:
    """The epoch's chunks: windows shuffled by (seed, epoch), batches of B window numbers, C batches a chunk."""
    b = self.batch_size
    ds = grain.MapDataset.range(len(self.split)).shuffle(seed=epoch_seed(self.seed, epoch))[: self.steps_per_epoch * b]
    if self.processes > 1:  # this process's share of every batch (grain.sharding.ShardByJaxProcess's slices)
      ds, b = ds[jax.process_index() :: self.processes], b // self.processes
    batches = ds.batch(b, drop_remainder=True).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    chunks = batches.batch(self.chunk, batch_fn=np.stack).map(self._gather)
    return ThreadPrefetchIterDataset(chunks, prefetch_buffer_size=PREFETCH)

  def _gather(self, numbers: np.ndarray) -> tuple:
    """A chunk's window numbers [n, B] -> (n, valid [C], rows [C, B] or the host batches)."""
    n = len(numbers)
    rows, valid = _chunk(n, self.chunk, self.split.rows(numbers))
    return n, valid, self.split.batch(rows) if self.host else rows

  def chunks(self, epoch: int, first: int, state: dict | None = None):
    """The epoch's chunks from its batch `first` (a resume point's: `state` restores grain's iterator there)."""
    self.iterator = iter(self.dataset(epoch))
    self.iterator.set_state(state if state is not None else {"next_index": first})
    at = first
    try:
      for n, valid, data in self.iterator:
        yield Chunk(at, n, valid, batch=data) if self.host else Chunk(at, n, valid, idx=data)
        at += n
    finally:
      self.iterator.close()

  def state(self) -> dict | None:
    return None if self.iterator is None else self.iterator.get_state()


def place_chunk(batch: dict) -> dict:
  """A host chunk {"x": [C, B_p, ...], ...} (this process's share B_p of every batch) -> device arrays [C, B, ...],
  split along the window axis by the `batch` rule under a mesh."""
  layout = sharding.current()
  if layout is None:
    return jax.device_put(batch)
  out = {}
  for key, x in batch.items():
    shape = (x.shape[0], x.shape[1] * jax.process_count(), *x.shape[2:])
    names = (None, "batch") + (None,) * (x.ndim - 2)
    out[key] = jax.make_array_from_process_local_data(layout.sharding(names, shape), x, shape)
  return out
