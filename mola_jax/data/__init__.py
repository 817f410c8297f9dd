"""Data layer: benchmark CSVs -> standardised series and the windows of each split (sources.py) -> which windows
each batch holds (orders.py) -> batches gathered on the device from those indices (device.py)."""

from mola_jax.data.device import DeviceWindows, gather
from mola_jax.data.orders import epoch_seed, eval_order, num_eval_batches, num_train_batches, train_order, val_order
from mola_jax.data.sources import (
  DATASETS,
  DataError,
  DatasetInfo,
  Series,
  WindowSource,
  build_series,
  checked_frame,
  host_batch,
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
  "DataError",
  "DatasetInfo",
  "DeviceWindows",
  "Series",
  "WindowSource",
  "build_series",
  "checked_frame",
  "epoch_seed",
  "eval_order",
  "gather",
  "host_batch",
  "load_csv",
  "load_series",
  "min_rows",
  "num_eval_batches",
  "num_train_batches",
  "read_csv",
  "read_frame",
  "resolve_path",
  "split_borders",
  "time_features",
  "train_order",
  "val_order",
  "window_source",
]
