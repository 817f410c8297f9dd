"""Forecasting new data: a user's table read and checked as a run's training data were (the run's scaler.json
record says how), the look-back windows of its forecasts, and the tables the forecasts answer in (wide, long,
backtest). mola_jax/inference.py runs the model between the two.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mola_jax.data import calendar, tables
from mola_jax.data.scaler import Scaler
from mola_jax.errors import DataError


@dataclasses.dataclass
class History:
  """A table to forecast from, checked as the run's training data were."""

  values: np.ndarray  # [rows, D] float64, original units (filled where observed is False)
  observed: np.ndarray  # [rows, D] bool
  covariates: np.ndarray  # [rows, C] float64, original units
  dates: np.ndarray  # [rows] datetime64[ns]
  long: bool  # given as a long table: results come back long too


def read_history(df: pd.DataFrame, name: str, data_cfg, record: dict) -> History:
  """`df` through the training data's checks (a long table pivoted; its gaps found and filled or refused as
  data.missing says, for a run trained on a regular grid), with the training columns (`record`: scaler.json)."""
  table = tables.read_table(df, name, data_cfg, regular=record.get("grid") is not None)
  columns, covariates = list(record["columns"]), list(record.get("covariates", []))
  if list(table.columns) != columns or list(table.covariate_names) != covariates:
    raise DataError(
      f"{name} has columns {list(table.columns) + list(table.covariate_names)}, but the run was trained on "
      f"{columns + covariates}; give the same columns"
    )
  if len(table.values) < data_cfg.seq_len:
    raise DataError(
      f"{name} has {len(table.values)} rows, fewer than the look-back of {data_cfg.seq_len}; give at least "
      f"{data_cfg.seq_len} rows"
    )
  observed = np.ones(table.values.shape, bool) if table.observed is None else table.observed
  return History(table.values, observed, table.covariates, table.dates, table.long)


def covariates_at(hist: History, names: list, future: pd.DataFrame | None, futures: list, name: str) -> list:
  """Each forecast's covariates `names` [T, C] at its dates `futures[i]`: from the history where it has those
  dates, else from the `future` table (predict's: the steps after the history's end)."""
  if not names:
    return [np.zeros((len(dates), 0)) for dates in futures]
  lookup = pd.DataFrame(hist.covariates, index=pd.DatetimeIndex(hist.dates), columns=names)
  if future is not None:
    lookup = lookup.combine_first(future_table(future, names))
  out = []
  for dates in futures:
    values = lookup.reindex(pd.DatetimeIndex(dates))
    if values.isna().to_numpy().any():
      first = values.index[values.isna().any(axis=1)][0]
      span = f"the {len(dates)} steps after {name}'s last row ({pd.Timestamp(dates[0])} .. {pd.Timestamp(dates[-1])})"
      how = "pass them as future= (the forecast CLI: --future FILE), a table with date and those columns"
      raise DataError(f"no value of the future covariate(s) {', '.join(names)} at {first}: the forecast needs them "
                      f"for every one of {span}; {how}")  # fmt: skip
    out.append(values.to_numpy(np.float64))
  return out


def future_table(future: pd.DataFrame, names: list) -> pd.DataFrame:
  """The future covariates' table (wide: date or ds and the columns `names`; or long: unique_id, ds and the
  columns), indexed by date."""
  if tables.is_long(future.assign(y=0.0)):
    future = tables.long_to_wide(future.assign(y=0.0), "the future covariates", tuple(names))
  key = "date" if "date" in future.columns else "ds"
  absent = [c for c in names if c not in future.columns]
  if key not in future.columns or absent:
    raise DataError(f"the future covariates lack column(s) {', '.join(absent or [key])}; give a table with date "
                    f"(or ds) and {', '.join(names)}")  # fmt: skip
  dates = tables.checked_dates("the future covariates", future[key])
  values = future[names].apply(pd.to_numeric, errors="coerce")
  return values.set_axis(pd.DatetimeIndex(dates)).astype(np.float64)


def lookback_batches(hist: History, ends: list, futures: list, known: list, record: dict, *, seq_len: int,
                     batch_size: int):  # fmt: skip
  """Yield the forecasts' inputs, `batch_size` at a time, as training's batches hold them: {"x": [b, L, D]
  standardised by the training scaler, "x_mark": [b, L, F], "y_mark": [b, T, F] (the time features of the future
  dates `futures[i]`, then their `known` covariates), "t0": [b] (the look-back's first row, counted on the training
  grid: a cycle's phase)} for the windows of the history ending at `ends`."""
  scaler = Scaler.from_json(record)
  scaled, marks = scaler.scale(hist.values), mark_rows(hist.dates, hist.covariates, record)
  # Rows counted on the training grid (a benchmark file without one: at the history's own median step).
  first = calendar.positions(hist.dates, np.datetime64(record.get("last_date", hist.dates[-1])),
                             record.get("rows", len(hist.dates)) - 1, record.get("grid"))[0]  # fmt: skip
  for i in range(0, len(ends), batch_size):
    chunk, part = ends[i : i + batch_size], slice(i, i + batch_size)
    yield {
      "x": np.stack([scaled[e - seq_len : e] for e in chunk]),
      "x_mark": np.stack([marks[e - seq_len : e] for e in chunk]),
      "y_mark": np.stack([mark_rows(f, k, record) for f, k in zip(futures[part], known[part], strict=True)]),
      "t0": np.asarray([first + e - seq_len for e in chunk], np.int32),
    }


def mark_rows(dates: np.ndarray, covariates: np.ndarray, record: dict) -> np.ndarray:
  """[n, F]: the time features of `dates`, then the covariates [n, C] standardised by the training scaler."""
  scaled = Scaler.from_json(record).scale_covariates(covariates)
  return np.concatenate([calendar.time_features(dates, record["freq"]), scaled], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# The tables a forecast answers in. pred [n, T, D'] original units; bands {"lower_80": [n, T, D'], ...}.


def wide_table(pred: np.ndarray, bands: dict, outputs: list, dates: np.ndarray, ends: list, futures: list):
  """origin (the last known row), date, the forecast channels and their bounds (OT_lower_80, ...)."""
  frames = []
  for i, end in enumerate(ends):
    frame = pd.DataFrame(pred[i], columns=outputs)
    for key, band in bands.items():
      bound, pct = key.split("_")
      for j, column in enumerate(outputs):
        frame[f"{column}_{bound}_{pct}"] = band[i, :, j]
    frame.insert(0, "date", pd.DatetimeIndex(futures[i]))
    frame.insert(0, "origin", pd.Timestamp(dates[end - 1]))
    frames.append(frame)
  return pd.concat(frames, ignore_index=True)


def long_table(wide: pd.DataFrame, outputs: list, bands: dict) -> pd.DataFrame:
  """The wide forecast table as a long one: origin, unique_id, ds, forecast and the bounds (lower_80, ...)."""
  parts = []
  for column in outputs:
    part = wide[["origin", "date", column]].rename(columns={"date": "ds", column: "forecast"})
    for key in bands:
      bound, pct = key.split("_")
      part[key] = wide[f"{column}_{bound}_{pct}"].to_numpy()
    parts.append(part.assign(unique_id=column))
  out = pd.concat(parts, ignore_index=True)
  return out[["origin", "unique_id", "ds", "forecast", *bands]]


def backtest_table(hist: History, ends: list, futures: list, pred: np.ndarray, bands: dict, outputs: list):
  """origin, date, step, channel, forecast, actual, error (forecast - actual; empty where the actual value was
  filled in) and the bounds; a long history: ds and unique_id in place of date and channel."""
  d, t = len(outputs), pred.shape[1]
  cut = lambda a: np.stack([a[e : e + t, -d:] for e in ends])  # [n, T, D']
  actual = np.where(cut(hist.observed), cut(hist.values), np.nan)
  n = pred.shape[0]
  out = pd.DataFrame({
    "origin": np.repeat(pd.DatetimeIndex(hist.dates[np.asarray(ends) - 1]).to_numpy(), t * d),
    "date": np.repeat(np.stack(futures).reshape(-1), d),
    "step": np.tile(np.repeat(np.arange(1, t + 1), d), n),
    "channel": np.tile(outputs, n * t),
    "forecast": pred.reshape(-1), "actual": actual.reshape(-1), "error": (pred - actual).reshape(-1),
  })  # fmt: skip
  for key, band in bands.items():
    out[key] = band.reshape(-1)
  return out.rename(columns={"date": "ds", "channel": "unique_id"}) if hist.long else out
