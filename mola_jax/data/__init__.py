"""Data layer: benchmark CSVs -> standardised window sources (sources.py) -> grain batches (pipeline.py)."""

from mola_jax.data.pipeline import (
    epoch_seed,
    eval_batches,
    num_eval_batches,
    num_train_batches,
    pad_with_mask,
    train_batches,
)
from mola_jax.data.sources import (
    DATASETS,
    DataError,
    DatasetInfo,
    Series,
    WindowSource,
    load_csv,
    load_series,
    read_csv,
    min_rows,
    resolve_path,
    split_borders,
    time_features,
    window_source,
)

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "Series",
    "WindowSource",
    "epoch_seed",
    "eval_batches",
    "load_csv",
    "load_series",
    "read_csv",
    "min_rows",
    "num_eval_batches",
    "num_train_batches",
    "pad_with_mask",
    "resolve_path",
    "split_borders",
    "time_features",
    "train_batches",
    "window_source",
]
