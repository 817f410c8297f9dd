"""grain pipelines over a WindowSource: shuffled fixed-size train batches, ordered padded+masked eval batches.

Both return a `grain.MapDataset`: iterable, indexable and sliceable, with no worker processes (workers need
`app.run`). Every function handed to grain is module-level, so pipelines stay picklable.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from mola_jax.data.sources import WindowSource
from mola_jax.errors import DataError


def num_train_batches(src: WindowSource, batch_size: int) -> int:
  """Full batches per epoch: the incomplete one is dropped so every train step has one static shape."""
  return len(src) // batch_size


def num_eval_batches(src: WindowSource, batch_size: int) -> int:
  """Batches that cover every window once: the last one is padded."""
  return -(-len(src) // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit shuffle seed per (seed, epoch): each epoch its own order, reproducible from the two integers."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint32)[0])


def train_batches(src: WindowSource, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0):
  """One epoch of shuffled batches {"x": [B, L, D], "x_mark": [B, L, F], "y": [B, H, D], "y_mark": [B, H, F]} on
  the host, in `train_order`'s order (the windows training gathers on the device).

  `start_batch` skips the first batches of this epoch for resume, by slicing (no sample is read to skip it).
  """
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  n = num_train_batches(src, batch_size)
  if n == 0:
    raise DataError(f"the train split has {len(src)} windows, fewer than batch_size {batch_size}; lower the batch size")
  if not 0 <= start_batch <= n:
    raise DataError(
      f"start_batch {start_batch} is outside this epoch's {n} batches; the checkpoint does not match "
      f"this data and batch size"
    )
  order = train_order(src, batch_size, seed=seed, epoch=epoch).reshape(-1)
  ds = grain.MapDataset.source(order).map(src.__getitem__).batch(batch_size, drop_remainder=True)
  return ds[start_batch:]


def train_order(src: WindowSource, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """int32 [batches, B]: the window indices of one epoch's batches, a permutation drawn from (seed, epoch); the
  incomplete last batch is dropped. Training gathers these windows on the device (data.device); `train_batches`
  builds the same batches on the host."""
  n = num_train_batches(src, batch_size)
  if n == 0:
    raise DataError(f"the train split has {len(src)} windows, fewer than batch_size {batch_size}; lower the batch size")
  order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(len(src))
  return order[: n * batch_size].astype(np.int32).reshape(n, batch_size)


def val_order(src, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """int32 [batches, B]: the validation batches of the official protocol (data.val_protocol="official"): the
  windows shuffled by (seed, epoch) on a stream of their own (not the training order's), the incomplete last
  batch dropped, as the official code's shuffled, drop_last validation loader."""
  size = len(src) if isinstance(src, WindowSource) else src.size  # or a data.DeviceWindows
  n = size // batch_size
  if n == 0:
    raise DataError(
      f"the val split has {size} windows, fewer than batch_size {batch_size}; the official validation protocol "
      "drops incomplete batches: lower the batch size or use --config.data.val_protocol=full"
    )
  order = np.random.default_rng([epoch_seed(seed, epoch), 1]).permutation(size)
  return order[: n * batch_size].astype(np.int32).reshape(n, batch_size)


def eval_order(src, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (int32 [batches, B] window indices, bool [batches, B] mask): every window once, in order, as
  `eval_batches`; the last batch is padded with window 0 and masked out."""
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  size = len(src) if isinstance(src, WindowSource) else src.size  # or a data.DeviceWindows
  n = -(-size // batch_size)
  flat = np.arange(n * batch_size)
  return np.where(flat < size, flat, 0).astype(np.int32).reshape(n, -1), (flat < size).reshape(n, -1)


def pad_with_mask(batch: dict, size: int) -> dict:
  """Pad every leaf to `size` rows with zeros and add "mask": bool[size], False on padding (one static shape)."""
  n = len(batch["x"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  return out | {"mask": np.arange(size) < n}


def eval_batches(src: WindowSource, batch_size: int):
  """Every window exactly once, in order; batches as train_batches plus "mask": bool[B]. Never drops a window."""
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  return (
    grain.MapDataset.source(src)
    .batch(batch_size, drop_remainder=False)
    .map(functools.partial(pad_with_mask, size=batch_size))
  )
