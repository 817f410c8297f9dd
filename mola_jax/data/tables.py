"""A user's table -> the checked arrays a series is built from: which columns are channels, the target and the
known-future covariates, the dates on their regular grid, and the gaps (missing cells and missing rows), filled
or refused as `data.missing` says.

Two layouts are read. Wide: a `date` column and one column per series (the benchmark CSVs). Long: `unique_id`,
`ds`, `y` and covariate columns, one row per (series, time), as neuralforecast and gluonts take them; aligned
series become the channels of one model. Every fault is a DataError naming the table, what is wrong and the fix.
Row numbers in messages are 0-based data rows (the header is not counted).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pandas as pd
from absl import logging

from mola_jax.data import calendar
from mola_jax.errors import DataError

FEATURES = ("M", "S", "MS")  # M: every channel in and out; S: the target alone; MS: every channel in, target out
MISSING = ("error", "interpolate", "ffill")
LONG_KEYS = ("unique_id", "ds", "y")


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
  """The checked content of a table, before any scaling or splitting."""

  values: np.ndarray  # [rows, D] float64, the channels with the target last; filled where observed is False
  observed: np.ndarray | None  # [rows, D] bool: False where a value was filled; None: every value is real
  covariates: np.ndarray  # [rows, C] float64, the known-future covariates (filled if they had gaps)
  dates: np.ndarray  # [rows] datetime64[ns]
  columns: tuple[str, ...]  # channel names, the target last
  covariate_names: tuple[str, ...]
  grid: calendar.Grid | None  # the regular grid the dates lie on; None: rows by position (a benchmark file)
  long: bool  # read from a long table (unique_id, ds, y)


def _rows_text(rows: np.ndarray, limit: int = 5) -> str:
  shown = ", ".join(str(int(r)) for r in rows[:limit])
  return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def read_frame(path) -> pd.DataFrame:
  """The CSV as a DataFrame, unchecked; an unreadable or empty file is a DataError."""
  path = pathlib.Path(path)
  # pandas handles CRLF; the weather header's U+FFFD characters are valid UTF-8 and only ever name columns.
  try:
    return pd.read_csv(path)
  except pd.errors.EmptyDataError:
    raise DataError(f"{path} is empty; give a CSV with a header (date, channels..., OT) and data rows") from None
  except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path} as CSV: {' '.join(str(e).split())}") from e


# ----------------------------------------------------------------------------------------------------------------
# Long tables


def is_long(df: pd.DataFrame) -> bool:
  return set(LONG_KEYS) <= set(map(str, df.columns)) and "date" not in df.columns


def long_to_wide(df: pd.DataFrame, origin, covariates: tuple[str, ...] = ()) -> pd.DataFrame:
  """A long table (unique_id, ds, y, covariates) -> a wide one: `date`, one column per series (named by its id,
  sorted, so the order of the rows does not matter), then each covariate: one column if every series has the same
  values, else one per series, "name[id]". The series must share their first and last time stamp."""
  extra = [c for c in df.columns if c not in LONG_KEYS and c not in covariates]
  if extra:
    raise DataError(
      f"{origin}: column(s) {', '.join(map(repr, extra[:5]))} of the long table are neither unique_id, ds, y nor a "
      "future covariate; name them in data.future_covariates or drop them"
    )
  absent = [c for c in covariates if c not in df.columns]
  if absent:
    raise DataError(f"{origin}: future covariate(s) {', '.join(map(repr, absent))} are not columns of the long "
                    f"table ({', '.join(map(str, df.columns))}); fix data.future_covariates")  # fmt: skip
  df = df.assign(unique_id=df["unique_id"].astype(str), ds=_parse_dates(origin, df["ds"], "ds values"))
  repeated = df.duplicated(["unique_id", "ds"], keep="first").to_numpy()
  if repeated.any():
    row = int(np.flatnonzero(repeated)[0])
    raise DataError(
      f"{origin}: series {df['unique_id'].iloc[row]!r} has two rows for ds {df['ds'].iloc[row]} (data row {row}, "
      f"{int(repeated.sum())} repeated pair(s) in all); keep one row per (unique_id, ds)"
    )
  ids = sorted(set(df["unique_id"]))
  spans = df.groupby("unique_id", sort=False)["ds"].agg(["min", "max"])
  first, last = spans["min"].max(), spans["max"].min()
  if (spans["min"] != first).any() or (spans["max"] != last).any():
    odd = spans.index[(spans["min"] != spans["min"].iloc[0]) | (spans["max"] != spans["max"].iloc[0])][0]
    raise DataError(
      f"{origin}: the series do not cover the same dates (series {ids[0]!r}: {spans.loc[ids[0], 'min']} to "
      f"{spans.loc[ids[0], 'max']}, series {odd!r}: {spans.loc[odd, 'min']} to {spans.loc[odd, 'max']}); give "
      f"series of the same span, e.g. trim them all to {first} .. {last}"
    )
  wide = df.pivot(index="ds", columns="unique_id", values="y")[ids]
  for name in covariates:
    per_id = df.pivot(index="ds", columns="unique_id", values=name)[ids]
    if per_id.nunique(axis=1, dropna=False).le(1).all():  # the same for every series: one column
      wide[name] = per_id.bfill(axis=1).iloc[:, 0]
    else:
      for i in ids:
        wide[f"{name}[{i}]"] = per_id[i]
  return wide.rename_axis(None, axis=1).reset_index(names="date")


def covariate_columns(df_columns, covariates: tuple[str, ...]) -> list[str]:
  """The table columns of the covariates named in the config: `name`, or its per-series columns `name[id]`."""
  out = []
  for name in covariates:
    out += [name] if name in df_columns else [c for c in df_columns if str(c).startswith(f"{name}[")]
  return out


# ----------------------------------------------------------------------------------------------------------------
# Columns


def choose_columns(columns, origin, *, target: str | None, features: str, covariates) -> tuple[list, list, str]:
  """-> (channel columns with the target last, covariate columns, target) of a table's data columns."""
  if features not in FEATURES:
    raise DataError(f"unknown data.features {features!r}; use M, S or MS")
  columns = [str(c) for c in columns]
  cov = covariate_columns(columns, covariates)
  missing = [name for name in covariates if not covariate_columns(columns, (name,))]
  if missing:
    raise DataError(
      f"{origin}: future covariate(s) {', '.join(map(repr, missing))} are not columns of the table "
      f"({', '.join(columns[:10])}); fix data.future_covariates"
    )
  candidates = [c for c in columns if c not in cov]
  if target is None:
    target = "OT" if "OT" in candidates else (candidates[-1] if candidates else None)
  if target in cov:
    raise DataError(f"{origin}: data.target {target!r} is also a future covariate; a column is one or the other")
  if target not in candidates:
    raise DataError(
      f"{origin}: unknown data.target {target!r}; the table's series are {', '.join(candidates[:10])}: set "
      "data.target to one of them"
    )
  channels = [target] if features == "S" else [c for c in candidates if c != target] + [target]
  return channels, cov, target


# ----------------------------------------------------------------------------------------------------------------
# Values and dates


def _numeric(origin, raw: pd.DataFrame, names: list) -> np.ndarray:
  """[rows, n] float64 with NaN where a cell is missing; non-numeric and non-finite (inf) values are errors."""
  numeric = raw.apply(pd.to_numeric, errors="coerce")
  missing = raw.isna().to_numpy()
  values = numeric.to_numpy(np.float64)
  for mask, what in ((numeric.isna().to_numpy() & ~missing, "non-numeric"), (np.isinf(values), "non-finite")):
    if mask.any():
      cols = [c for c, hit in zip(names, mask.any(axis=0), strict=True) if hit]
      rows = np.flatnonzero(mask.any(axis=1))
      raise DataError(
        f"{origin}: {what} value in column(s) {', '.join(map(repr, cols[:5]))} at data row(s) {_rows_text(rows)} "
        "(0-based, header excluded); fix them in the file"
      )
  return values


def _parse_dates(origin, column: pd.Series, what: str = "dates") -> pd.Series:
  try:
    # No fixed format: ETT writes '2016-07-01 00:00:00', exchange_rate '1990/1/1 0:00'.
    stamps = pd.to_datetime(column)
  except (ValueError, TypeError):
    # Per-element parsing is slow but only runs on odd files; NaT marks the rows to report.
    stamps = pd.to_datetime(column, format="mixed", errors="coerce")
  if stamps.isna().any():
    rows = np.flatnonzero(stamps.isna().to_numpy())
    raise DataError(
      f"{origin}: missing or unparseable {what} at data row(s) {_rows_text(rows)} (0-based, header excluded), "
      f"e.g. {column.iloc[rows[0]]!r}; fix them in the file"
    )
  return stamps.astype("datetime64[ns]")  # pandas 3 infers microseconds; the contract is ns


def checked_dates(origin, column: pd.Series, *, repeats: str = "warn") -> np.ndarray:
  """[rows] datetime64[ns], in time order; unparseable and backwards stamps are errors, a repeated one a warning
  (`repeats="warn"`: the field's weather.csv has one) or an error (`"error"`: a regular series cannot hold it)."""
  dates = _parse_dates(origin, column).to_numpy()
  step = np.diff(dates)
  backwards, repeated = np.flatnonzero(step < np.timedelta64(0)) + 1, np.flatnonzero(step == np.timedelta64(0)) + 1
  if len(backwards):
    row = int(backwards[0])
    raise DataError(
      f"{origin}: time goes backwards at data row {row} ({column.iloc[row]!r} after {column.iloc[row - 1]!r}; "
      "0-based, header excluded); sort the file by date"
    )
  if len(repeated):
    text = f"{origin}: duplicate time at data row(s) {_rows_text(repeated)} (0-based, header excluded)"
    if repeats == "error":
      raise DataError(f"{text}, e.g. {column.iloc[int(repeated[0])]!r}; keep one row per time stamp")
    logging.warning("%s, e.g. %r; the rows are kept in file order", text, column.iloc[int(repeated[0])])
  return dates


def check_shape(df: pd.DataFrame, origin) -> None:
  if "date" not in df.columns:
    raise DataError(
      f"{origin} has no 'date' column (columns: {', '.join(map(str, df.columns[:10]))}); the first header field "
      "must be 'date' (or give a long table: unique_id, ds, y)"
    )
  if df.empty:
    raise DataError(f"{origin} has a header but no data rows; give a CSV with data")


# ----------------------------------------------------------------------------------------------------------------
# Gaps


def regularise(frame: pd.DataFrame, dates: np.ndarray, origin, *, missing: str) -> tuple[pd.DataFrame, object]:
  """Rows of `frame` (indexed like `dates`) placed on the regular grid of the dates -> (frame with a NaN row for
  each missing row, grid). Missing rows are reported, and refused under missing="error"."""
  grid = calendar.infer_grid(dates, origin)
  full = grid.dates()
  if len(full) == len(dates):
    return frame, grid
  absent = np.flatnonzero(~np.isin(full, dates))
  first = int(absent[0])
  run = int(np.argmax(np.diff(np.append(absent, -1)) != 1)) + 1  # the first gap's length
  text = (f"{origin}: {len(absent)} row(s) of the {calendar.describe(grid.freq)} series are missing, the first "
          f"{run} after {pd.Timestamp(full[first - 1])}")  # fmt: skip
  if missing == "error":
    raise DataError(f"{text}; add them, or set data.missing=interpolate or ffill to fill them")
  logging.warning("%s; filled (data.missing=%s), filled targets are left out of the loss and the scores", text, missing)
  out = frame.set_axis(pd.DatetimeIndex(dates)).reindex(pd.DatetimeIndex(full))
  return out.reset_index(drop=True), grid


def fill(values: np.ndarray, names: list, origin, *, missing: str) -> np.ndarray:
  """NaN cells of `values` [rows, n] filled: linear interpolation or the last value (both take the first value
  before a column's first observation); missing="error" refuses any."""
  gaps = np.isnan(values)
  if not gaps.any():
    return values
  if missing == "error":
    cols = [c for c, hit in zip(names, gaps.any(axis=0), strict=True) if hit]
    raise DataError(
      f"{origin}: missing value in column(s) {', '.join(map(repr, cols[:5]))} at data row(s) "
      f"{_rows_text(np.flatnonzero(gaps.any(axis=1)))} (0-based, header excluded); fix or fill them in the file, "
      "or set data.missing=interpolate or ffill"
    )
  empty = [c for c, none in zip(names, gaps.all(axis=0), strict=True) if none]
  if empty:
    raise DataError(f"{origin}: column(s) {', '.join(map(repr, empty))} hold no value at all; drop them")
  frame = pd.DataFrame(values)
  frame = frame.interpolate(method="linear", limit_direction="forward") if missing == "interpolate" else frame.ffill()
  return frame.bfill().to_numpy(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# The whole table


def read_table(df: pd.DataFrame, origin, data_cfg, *, regular: bool) -> Table:
  """A wide or long table -> Table, by the data config's target, features, future_covariates and missing.
  `regular`: check the dates against their grid (a user's table); False keeps rows by position (a benchmark file,
  as the field reads it)."""
  long = is_long(df)
  covariates = tuple(data_cfg.future_covariates)
  if long:
    df = long_to_wide(df, origin, covariates)
  check_shape(df, origin)
  names = [c for c in df.columns if c != "date"]
  if not names:
    raise DataError(f"{origin} has a 'date' column but no data columns")
  if long and data_cfg.features != "M" and data_cfg.target is None:
    raise DataError(f"{origin}: data.features={data_cfg.features} needs the series to forecast: set data.target to "
                    f"one of the long table's ids ({', '.join(names[:10])})")  # fmt: skip
  channels, cov, _ = choose_columns(names, origin, target=data_cfg.target, features=data_cfg.features,
                                    covariates=covariates)  # fmt: skip
  dates = checked_dates(origin, df["date"], repeats="error" if regular else "warn")
  frame, grid = df[channels + cov].reset_index(drop=True), None
  if regular:
    frame, grid = regularise(frame, dates, origin, missing=data_cfg.missing)
    dates = grid.dates()
  raw = _numeric(origin, frame, channels + cov)
  values = fill(raw[:, : len(channels)], channels, origin, missing=data_cfg.missing)
  observed = ~np.isnan(raw[:, : len(channels)])
  return Table(
    values=values,
    observed=None if observed.all() else observed,
    covariates=fill(raw[:, len(channels) :], cov, origin, missing=data_cfg.missing),
    dates=dates,
    columns=tuple(channels),
    covariate_names=tuple(cov),
    grid=grid,
    long=long,
  )
