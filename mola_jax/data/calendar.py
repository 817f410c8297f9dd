"""Time: the calendar features of each row (timeF, docs/protocol.md §5), the regular grid a series' dates lie on,
and the position of a date on that grid.

A user's table is checked against the grid its own dates imply: the frequency is inferred (the most common step,
or a calendar rule such as month starts or business days, whichever holds every date with the fewest rows
missing), rows the grid has and the table lacks are its missing rows, and dates off every grid are an error. The
benchmark files keep the field's positional protocol (rows by position, hourly features), see sources.py.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from mola_jax.errors import DataError

# ----------------------------------------------------------------------------------------------------------------
# Time features (docs/protocol.md §5, timeF)


def _second_of_minute(idx):
  return idx.second / 59.0 - 0.5


def _minute_of_hour(idx):
  return idx.minute / 59.0 - 0.5


def _hour_of_day(idx):
  return idx.hour / 23.0 - 0.5


def _day_of_week(idx):
  return idx.day_of_week / 6.0 - 0.5


def _day_of_month(idx):
  return (idx.day - 1) / 30.0 - 0.5


def _day_of_year(idx):
  return (idx.day_of_year - 1) / 365.0 - 0.5


def _month_of_year(idx):
  return (idx.month - 1) / 11.0 - 0.5


def _week_of_year(idx):
  return (idx.isocalendar().week.to_numpy(np.float64) - 1) / 52.0 - 0.5


_HOURLY = (_hour_of_day, _day_of_week, _day_of_month, _day_of_year)
TIME_FEATURES = {  # freq code -> features in TSLib's column order
  "s": (_second_of_minute, _minute_of_hour) + _HOURLY,
  "t": (_minute_of_hour,) + _HOURLY,
  "min": (_minute_of_hour,) + _HOURLY,
  "h": _HOURLY,
  "d": (_day_of_week, _day_of_month, _day_of_year),
  "b": (_day_of_week, _day_of_month, _day_of_year),
  "w": (_day_of_month, _week_of_year),
  "m": (_month_of_year,),
}

# pandas offsets -> the code of their features, finest first. Quarterly and yearly series get month of year (TSLib
# gives yearly data none; a model needs at least one column, and a constant one is harmless).
_OFFSET_CODES = (
  (pd.offsets.Second, "s"),
  (pd.offsets.Minute, "t"),
  (pd.offsets.Hour, "h"),
  (pd.offsets.BusinessDay, "b"),
  (pd.offsets.Day, "d"),
  (pd.offsets.Week, "w"),
  (pd.offsets.MonthBegin, "m"),
  (pd.offsets.MonthEnd, "m"),
  (pd.offsets.QuarterBegin, "m"),
  (pd.offsets.QuarterEnd, "m"),
  (pd.offsets.YearBegin, "m"),
  (pd.offsets.YearEnd, "m"),
)


def feature_code(freq: str) -> str:
  """The time-feature code of a frequency: a code of TIME_FEATURES ("h", "15min", "t") or any pandas frequency
  ("W-TUE", "MS", "10min", "B")."""
  code = freq.lower().lstrip("0123456789")  # pandas-style multiples ("15min", "10T"): the unit picks the features
  if code in TIME_FEATURES:
    return code
  try:
    offset = pd.tseries.frequencies.to_offset(freq)
  except ValueError:
    offset = None
  for kind, mapped in _OFFSET_CODES:
    if isinstance(offset, kind):
      return mapped
  raise DataError(f"unknown time-feature freq {freq!r}; use one of {', '.join(TIME_FEATURES)} or a pandas frequency")


def time_features(dates: pd.DatetimeIndex | np.ndarray, freq: str = "h") -> np.ndarray:
  """[rows, F] float32 timeF features, each in [-0.5, 0.5], columns in the order of docs/protocol.md §5."""
  idx = pd.DatetimeIndex(dates)
  cols = [np.asarray(fn(idx), dtype=np.float64) for fn in TIME_FEATURES[feature_code(freq)]]
  return np.stack(cols, axis=1).astype(np.float32)  # [rows, F]


def num_features(freq: str) -> int:
  return len(TIME_FEATURES[feature_code(freq)])


# ----------------------------------------------------------------------------------------------------------------
# The regular grid of a series


@dataclasses.dataclass(frozen=True)
class Grid:
  """The regular time grid a series' dates lie on: every date from `start` to `end` at `freq`."""

  freq: str  # a pandas frequency string ("h", "15min", "W-TUE", "MS", "B")
  start: np.datetime64
  end: np.datetime64

  def dates(self) -> np.ndarray:
    return pd.date_range(self.start, self.end, freq=self.freq).to_numpy().astype("datetime64[ns]")


# Calendar rules tried besides the most common step, for series whose steps vary in length (months, business days).
_CALENDAR = ("B", "MS", "ME", "QS", "QE", "YS", "YE")


def _on_grid(dates: pd.DatetimeIndex, freq: str) -> int | None:
  """Rows the grid of `freq` from the first to the last date has beyond `dates`, or None if a date lies off it."""
  try:
    grid = pd.date_range(dates[0], dates[-1], freq=freq)
  except ValueError:
    return None
  if len(grid) > 50 * len(dates) or not dates.isin(grid).all():  # 50x: no series is mostly holes
    return None
  return len(grid) - len(dates)


def infer_grid(dates: np.ndarray, origin: str) -> Grid:
  """The regular grid of strictly increasing `dates` [rows]: the frequency pandas infers when no row is missing,
  else the candidate (the most common step, a calendar rule) that holds every date with the fewest missing rows.
  Dates off every candidate are a DataError naming the first odd step."""
  index = pd.DatetimeIndex(dates)
  if len(index) < 3:
    raise DataError(f"{origin} has {len(index)} rows; a series needs at least 3 to tell its frequency")
  with warnings.catch_warnings():  # pandas warns about deprecated aliases it may return; either works below
    warnings.simplefilter("ignore")
    freq = pd.infer_freq(index)
  if freq is None:
    steps = np.diff(index.to_numpy())
    values, counts = np.unique(steps, return_counts=True)
    common = pd.Timedelta(values[np.argmax(counts)])
    candidates = [_step_freq(common, index[0]), *_CALENDAR]
    fits = [(missing, i, c) for i, c in enumerate(candidates) if (missing := _on_grid(index, c)) is not None]
    if not fits:
      odd = int(np.flatnonzero(steps != values[np.argmax(counts)])[0]) + 1
      raise DataError(
        f"{origin}: the dates are not on a regular grid: most steps are {common}, but data row {odd} comes "
        f"{pd.Timedelta(steps[odd - 1])} after the row before (0-based, header excluded); resample the series to "
        "one regular frequency"
      )
    freq = min(fits)[2]  # the fewest missing rows; on a tie the most common step
  return Grid(freq, index[0].to_datetime64(), index[-1].to_datetime64())


def _step_freq(step: pd.Timedelta, first: pd.Timestamp) -> str:
  """A fixed step as the frequency a calendar reads: "W-TUE" for a week starting on a Tuesday, "3D", "2h"."""
  for unit, name in ((pd.Timedelta(days=1), "D"), (pd.Timedelta(hours=1), "h"), (pd.Timedelta(minutes=1), "min")):
    if step % unit == pd.Timedelta(0):
      n = step // unit
      if name == "D" and n == 7:
        return f"W-{first.day_name()[:3].upper()}"
      return f"{n}{name}" if n > 1 else name
  return pd.tseries.frequencies.to_offset(step).freqstr


def describe(freq: str) -> str:
  """A frequency for messages: 'hourly (h)'."""
  names = {"s": "secondly", "t": "minutely", "h": "hourly", "d": "daily", "b": "business-daily", "w": "weekly",
           "m": "monthly"}  # fmt: skip
  try:
    return f"{names[feature_code(freq)]} ({freq})"
  except DataError:
    return freq


# ----------------------------------------------------------------------------------------------------------------
# Positions on the grid


def positions(dates: np.ndarray, anchor: np.datetime64, anchor_row: int, freq: str | None) -> np.ndarray:
  """int64 [n]: each date's row on the grid of `freq` on which `anchor` is row `anchor_row` (a model that reads
  the phase of a cycle, CycleNet, counts rows from there). Without a grid (a positional benchmark file), the
  median step of `dates` stands in."""
  index = pd.DatetimeIndex(dates)
  anchor = pd.Timestamp(anchor)
  if freq is not None:
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
      step = pd.Timedelta(offset)  # a fixed step: exact arithmetic
    except ValueError:  # a calendar rule: count its periods
      lo, hi = min(index.min(), anchor), max(index.max(), anchor)
      grid = pd.date_range(offset.rollback(lo), offset.rollforward(hi), freq=offset)
      return grid.get_indexer(index) - grid.get_indexer([anchor])[0] + anchor_row
  else:
    step = pd.Timedelta(np.median(np.diff(index.to_numpy()))) if len(index) > 1 else pd.Timedelta(1, "h")
  return np.rint((index - anchor) / step).astype(np.int64) + anchor_row


def following(dates: np.ndarray, n: int, freq: str | None = None) -> np.ndarray:
  """`n` timestamps after the last of `dates`, at `freq` (else the frequency pandas infers from the last dates,
  else their median step)."""
  index = pd.DatetimeIndex(dates)
  if freq is None and len(index) >= 3:
    with warnings.catch_warnings():  # pandas 3 warns that the return type will change; either type works below
      warnings.simplefilter("ignore")
      freq = pd.infer_freq(index[-min(len(index), 50) :])
  if freq is not None:
    return pd.date_range(index[-1], periods=n + 1, freq=freq)[1:].to_numpy().astype("datetime64[ns]")
  step = np.median(np.diff(index.to_numpy()))  # irregular stamps: continue at the typical spacing
  return index[-1].to_datetime64() + step * np.arange(1, n + 1)
