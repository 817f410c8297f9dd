"""Which windows each batch holds: the shuffled training order of an epoch, the official validation order, and the
ordered, padded evaluation order. Index arrays only; the windows are gathered on the device (data/device.py).

A training epoch drops its incomplete last batch, so every train step has one static shape (as TSLib does); an
evaluation pads its last batch with window 0 and masks it, so no window is ever dropped from a score.
"""

from __future__ import annotations

import numpy as np

from mola_jax.errors import DataError


def _size(src) -> int:
  return len(src) if hasattr(src, "__len__") else src.size  # a WindowSource, or a data.DeviceWindows


def num_train_batches(src, batch_size: int) -> int:
  """Full batches per epoch: the incomplete one is dropped so every train step has one static shape."""
  return _size(src) // batch_size


def num_eval_batches(src, batch_size: int) -> int:
  """Batches that cover every window once: the last one is padded."""
  return -(-_size(src) // batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit shuffle seed per (seed, epoch): each epoch its own order, reproducible from the two integers."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint32)[0])


def train_order(src, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """int32 [batches, B]: the window indices of one epoch's batches, a permutation drawn from (seed, epoch); the
  incomplete last batch is dropped."""
  n = num_train_batches(src, batch_size)
  if n == 0:
    raise DataError(
      f"the train split has {_size(src)} windows, fewer than batch_size {batch_size}; lower the batch size"
    )
  order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(_size(src))
  return order[: n * batch_size].astype(np.int32).reshape(n, batch_size)


def val_order(src, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """int32 [batches, B]: the validation batches of the official protocol (data.val_protocol="official"): the
  windows shuffled by (seed, epoch) on a stream of their own (not the training order's), the incomplete last
  batch dropped, as the official code's shuffled, drop_last validation loader."""
  size = _size(src)
  n = size // batch_size
  if n == 0:
    raise DataError(
      f"the val split has {size} windows, fewer than batch_size {batch_size}; the official validation protocol "
      "drops incomplete batches: lower the batch size or use --config.data.val_protocol=full"
    )
  order = np.random.default_rng([epoch_seed(seed, epoch), 1]).permutation(size)
  return order[: n * batch_size].astype(np.int32).reshape(n, batch_size)


def eval_order(src, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """-> (int32 [batches, B] window indices, bool [batches, B] mask): every window once, in order; the last batch
  is padded with window 0 and masked out."""
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  size = _size(src)
  n = -(-size // batch_size)
  flat = np.arange(n * batch_size)
  return np.where(flat < size, flat, 0).astype(np.int32).reshape(n, -1), (flat < size).reshape(n, -1)
