"""Data layer: a user's table or a benchmark CSV -> checked channels, target, covariates and gaps (tables.py), on
the regular grid of its dates with their calendar features (calendar.py) -> standardised series and the windows of
each split (sources.py) -> which windows each batch holds (orders.py; a panel's from grain, feeds.py) -> batches
gathered on the device from those indices (device.py), or on the host by a grain pipeline (feeds.py). A panel (many
series, each with its own dates) is a layout of its own (panel.py)."""

from mola_jax.data.calendar import Grid, feature_code, following, infer_grid, num_features, positions, time_features
from mola_jax.data.device import DeviceWindows, gather
from mola_jax.data.feeds import PLACEMENTS, HandOrder, PanelOrder, place_chunk, placement
from mola_jax.data.orders import epoch_seed, eval_order, num_eval_batches, num_train_batches, train_order, val_order
from mola_jax.data.panel import PANEL_BACKBONES, SHORT_SERIES, Panel, PanelSplit, build_panel
from mola_jax.data.sources import (
  DATASETS,
  DataError,
  DatasetInfo,
  Series,
  WindowSource,
  build_series,
  checked_frame,
  fingerprint,
  host_batch,
  load_csv,
  load_series,
  min_rows,
  read_csv,
  resolve_path,
  split_borders,
  window_source,
)
from mola_jax.data.tables import FEATURES, MISSING, Table, is_long, long_to_wide, read_frame, read_table

__all__ = [
  "DATASETS",
  "FEATURES",
  "MISSING",
  "PANEL_BACKBONES",
  "PLACEMENTS",
  "SHORT_SERIES",
  "HandOrder",
  "Panel",
  "PanelOrder",
  "PanelSplit",
  "build_panel",
  "place_chunk",
  "placement",
  "DataError",
  "DatasetInfo",
  "DeviceWindows",
  "Grid",
  "Series",
  "Table",
  "WindowSource",
  "build_series",
  "checked_frame",
  "epoch_seed",
  "eval_order",
  "feature_code",
  "fingerprint",
  "following",
  "gather",
  "host_batch",
  "infer_grid",
  "is_long",
  "load_csv",
  "load_series",
  "long_to_wide",
  "min_rows",
  "num_eval_batches",
  "num_features",
  "num_train_batches",
  "positions",
  "read_csv",
  "read_frame",
  "read_table",
  "resolve_path",
  "split_borders",
  "time_features",
  "train_order",
  "val_order",
  "window_source",
]
