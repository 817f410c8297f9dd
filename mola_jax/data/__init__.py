"""Data layer: benchmark CSVs -> standardised window sources (sources.py) -> grain batches and window orders
(pipeline.py) -> batches gathered on the device (device.py)."""

from mola_jax.data.device import DeviceWindows
from mola_jax.data.pipeline import (
  epoch_seed,
  eval_batches,
  eval_order,
  num_eval_batches,
  num_train_batches,
  pad_with_mask,
  train_batches,
  train_order,
)
from mola_jax.data.sources import (
  DATASETS,
  DataError,
  DatasetInfo,
  Series,
  WindowSource,
  checked_frame,
  load_csv,
  load_series,
  min_rows,
  read_csv,
  read_frame,
  resolve_path,
  split_borders,
  time_features,
  window_source,
)

__all__ = [
  "DATASETS",
  "DeviceWindows",
  "DataError",
  "DatasetInfo",
  "Series",
  "WindowSource",
  "epoch_seed",
  "eval_batches",
  "eval_order",
  "load_csv",
  "load_series",
  "checked_frame",
  "read_csv",
  "read_frame",
  "min_rows",
  "num_eval_batches",
  "num_train_batches",
  "pad_with_mask",
  "resolve_path",
  "split_borders",
  "time_features",
  "train_batches",
  "train_order",
  "window_source",
]
