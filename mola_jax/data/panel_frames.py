"""Forecasting a panel's new data: each series of a long table read and checked as training read it (its own
regular grid, its gaps filled or refused as data.missing says), the look-back windows of its forecasts scaled by
the series' own training scaler, and the long tables the forecasts answer in: the T steps after each series' own
last date (predict, the forecast CLI) or rolling origins over its rows (backtest). mola_jax/inference.py runs the
model between the two.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mola_jax.data import calendar, panel
from mola_jax.data.scaler import Scaler
from mola_jax.errors import DataError


@dataclasses.dataclass
class PanelHistory:
  """The series of a table to forecast from, each on its own grid, in original units."""

  ids: list[str]  # sorted
  index: np.ndarray  # int [n]: each one's series number in the run (scaler.json's "ids")
  values: list[np.ndarray]  # [rows_i] float64, filled where observed is False
  observed: list[np.ndarray]  # [rows_i] bool
  dates: list[np.ndarray]  # [rows_i] datetime64[ns]


def read_history(df: pd.DataFrame, name: str, data_cfg, record: dict, *, need: int, what: str) -> PanelHistory:
  """A long table -> the history of each of its series that is at least `need` rows long (`what` says why); a
  shorter one is refused, or left out under data.short_series=skip; a series the run did not train on is refused:
  its scaler is the run's."""
  series = panel.long_series(df, name, data_cfg)
  known = {uid: i for i, uid in enumerate(record["ids"])}
  unknown = [uid for uid in series if uid not in known]
  if unknown:
    raise DataError(f"{name}: {len(unknown)} series the run was not trained on ({', '.join(map(repr, unknown[:5]))}); "
                    "a panel forecasts the series it scaled in training: drop them")  # fmt: skip
  ids = [uid for uid in series if len(series[uid][0]) >= min(need, 3)]  # a grid needs 3 dates
  placed = {uid: panel.on_grid(uid, *series[uid], name) for uid in ids}
  lengths = np.array([len(placed[uid][0]) if uid in placed else len(series[uid][0]) for uid in series])
  short = getattr(data_cfg, "short_series", "error")
  keep = panel.keep(list(series), lengths, need, short, name, what=what, fix="drop them")
  ids = [uid for uid, k in zip(series, keep, strict=True) if k]
  out = PanelHistory(ids, np.array([known[uid] for uid in ids], np.int64), [], [], [])
  for uid in ids:
    y, grid = placed[uid]
    y, observed = panel.filled(uid, y, grid.freq, name, data_cfg.missing)
    out.values.append(y)
    out.observed.append(np.ones(len(y), bool) if observed is None else observed)
    out.dates.append(grid.dates())
  return out


def origins(hist: PanelHistory, record: dict, *, seq_len: int, horizon: int, every: int | None, backtest: bool):
  """-> (windows [(k, end)]: series k's look-back ending before row `end`, futures [the T dates each forecasts]):
  the T steps after each series' last row and, with `every`, from every `every`-th row too; a backtest's from
  every `every`-th row with T known rows after it."""
  pairs, futures = [], []
  for k, dates in enumerate(hist.dates):
    n, freq = len(dates), record["freqs"][hist.index[k]]
    if backtest:
      ends = list(range(seq_len, n - horizon + 1, every))
    else:
      ends = (list(range(seq_len, n, every)) if every else []) + [n]
    for end in ends:
      known = dates[end : end + horizon]
      later = calendar.following(dates, horizon - len(known), freq) if len(known) < horizon else known[:0]
      pairs.append((k, end))
      futures.append(np.concatenate([known, later]))
  return pairs, futures


def lookback_batches(hist: PanelHistory, record: dict, pairs: list, *, seq_len: int, horizon: int, batch_size: int):
  """Yield the forecasts' inputs `batch_size` at a time, as training's batches hold them: {"x": [b, L, 1]
  standardised by each series' own training scaler, "x_mark": [b, L, 0], "y_mark": [b, T, 0], "t0": [b] (the
  look-back's first row on its series' grid, counted as in training: CycleNet's phase)}."""
  scaler = Scaler.from_json(record)
  for i in range(0, len(pairs), batch_size):
    part = pairs[i : i + batch_size]
    x, t0 = [], []
    for k, end in part:
      s = int(hist.index[k])
      x.append(scaler.series(s).scale(hist.values[k][end - seq_len : end, None]))
      first = hist.dates[k][end - seq_len : end - seq_len + 1]
      t0.append(calendar.positions(first, np.datetime64(record["starts"][s]), record["t0"][s], record["freqs"][s])[0])
    b = len(part)
    yield {"x": np.stack(x), "x_mark": np.zeros((b, seq_len, 0), np.float32),
           "y_mark": np.zeros((b, horizon, 0), np.float32), "t0": np.asarray(t0, np.int32)}  # fmt: skip


def forecast_table(hist: PanelHistory, pairs: list, futures: list, pred: np.ndarray, bands: dict) -> pd.DataFrame:
  """origin (each series' last known row), unique_id, ds, forecast and the bounds (lower_80, ...); pred [n, T, 1]."""
  t = pred.shape[1]
  out = pd.DataFrame({
    "origin": np.repeat([hist.dates[k][end - 1] for k, end in pairs], t),
    "unique_id": np.repeat([hist.ids[k] for k, _ in pairs], t),
    "ds": np.concatenate(futures), "forecast": pred.reshape(-1),
  })  # fmt: skip
  for key, band in bands.items():
    out[key] = band.reshape(-1)
  return out


def backtest_table(hist: PanelHistory, pairs: list, futures: list, pred: np.ndarray, bands: dict) -> pd.DataFrame:
  """origin, ds, step, unique_id, forecast, actual, error (forecast - actual; empty where the actual value was
  filled in) and the bounds."""
  t = pred.shape[1]
  actual = np.stack([np.where(hist.observed[k][e : e + t], hist.values[k][e : e + t], np.nan) for k, e in pairs])
  out = forecast_table(hist, pairs, futures, pred, {})
  out.insert(2, "step", np.tile(np.arange(1, t + 1), len(pairs)))
  out["actual"], out["error"] = actual.reshape(-1), pred.reshape(-1) - actual.reshape(-1)
  for key, band in bands.items():
    out[key] = band.reshape(-1)
  return out[["origin", "ds", "step", "unique_id", "forecast", "actual", "error", *bands]]
