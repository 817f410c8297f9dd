"""A split's rows held on the device, and batches gathered there from window indices.

Training and evaluation hand the step a few bytes per batch (the window indices) instead of building every batch
on the host: on a small machine, host work per step competes with the step itself for the same cores. The
indices come from data.orders (`train_order`, `eval_order`). `gather` is the one window gather of the package:
`DeviceWindows.take` jits it alone, and a program that loops over batches on the device calls it in its body.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mola_jax import sharding
from mola_jax.data.panel import PanelSplit
from mola_jax.data.sources import WindowSource


def gather(arrays: dict, idx, mask=None, *, seq_len: int, pred_len: int) -> dict:
  """arrays: a split on the device (DeviceWindows.arrays: "values" [rows, D], "marks" [rows, F], "start" [] the
  split's first row in the series, and "observed" [rows, D] if any value was filled), idx int [B] (window i starts
  at the split's row i) -> {"x": [B, L, D], "x_mark": [B, L, F], "y": [B, H, D], "y_mark": [B, H, F], "t0": [B]
  (each window's first row in the series)}, with "y_observed" [B, H, D] if the split has "observed" and "mask"
  [B] if given; split along the window axis by the `batch` rule under a mesh. A panel's split (PanelSplit.arrays)
  also holds per series its first row, grid position and (mean, std): each window's "series" [B], its "t0" on its
  series' grid and its series' "series_scale" [B, 2] come from them."""
  values, marks = arrays["values"], arrays["marks"]
  # One gather of B x length rows per array, not a slice per window: vmapped slices compile to a loop over the
  # windows on a TPU (about five ops a window), a gather of rows to a few ops for the whole batch.
  rows = lambda a, start, length: jnp.take(a, start[:, None] + jnp.arange(length), axis=0, mode="clip")
  batch = {
    "x": rows(values, idx, seq_len),
    "x_mark": rows(marks, idx, seq_len),
    "y": rows(values, idx + seq_len, pred_len),
    "y_mark": rows(marks, idx + seq_len, pred_len),
  }
  if "observed" in arrays:
    batch["y_observed"] = rows(arrays["observed"], idx + seq_len, pred_len)
  if "series_first" in arrays:  # a panel: windows of many series, each on its own grid
    s = jnp.searchsorted(arrays["series_first"], idx, side="right") - 1
    batch["t0"] = arrays["series_t0"][s] + idx - arrays["series_first"][s]
    batch["series"], batch["series_scale"] = s, arrays["series_scale"][s]
  else:
    batch["t0"] = arrays["start"] + idx
  if mask is not None:
    batch["mask"] = mask
  return jax.tree.map(lambda a: sharding.constrain(a, ("batch",) + (None,) * (a.ndim - 1)), batch)


@functools.partial(jax.jit, static_argnames=("seq_len", "pred_len", "layout"))
def _take(arrays, idx, mask, *, seq_len: int, pred_len: int, layout) -> dict:
  del layout  # keys the compiled program by the active mesh layout, which `constrain` reads while tracing
  return gather(arrays, idx, mask, seq_len=seq_len, pred_len=pred_len)


class DeviceWindows:
  """The rows of one split on the device (replicated under a mesh); `take(idx[, mask])` -> a batch of its
  windows, as `WindowSource.__getitem__` would build them, stacked. `rows` maps window numbers to the rows the
  gather takes: the same numbers for a WindowSource, a table lookup for a panel's split (PanelSplit)."""

  def __init__(self, src: WindowSource | PanelSplit):
    if isinstance(src, PanelSplit):
      arrays, self.rows = src.arrays(), src.rows
    else:
      rows = slice(src.start, src.end)
      arrays = {"values": src.values[rows], "marks": src.marks[rows], "start": np.int32(src.start)}
      if src.observed is not None:
        arrays["observed"] = src.observed[rows]  # [rows, D] bool
      self.rows = lambda i: np.asarray(i, np.int32)
    self.arrays = sharding.replicate(arrays)
    self.seq_len, self.pred_len, self.size = src.seq_len, src.pred_len, len(src)
    self.series = len(src.first) if isinstance(src, PanelSplit) else 0  # a panel's series count

  @property
  def values(self) -> jax.Array:
    return self.arrays["values"]  # [rows, D]

  @property
  def marks(self) -> jax.Array:
    return self.arrays["marks"]  # [rows, F]

  def take(self, idx: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """idx int [B] (window numbers) -> batch on the device; with `mask` bool [B] it is added as "mask" (an eval
    batch)."""
    idx = self.rows(idx)
    if sharding.current() is not None:  # else jit moves the host arrays itself, for less than device_put costs
      idx, mask = sharding.replicate((idx, mask))
    return _take(self.arrays, idx, mask, seq_len=self.seq_len, pred_len=self.pred_len, layout=sharding.current())
