"""Benchmark CSVs -> standardised float32 arrays and window sources, following `docs/protocol.md`.

Pure numpy/pandas: no jax here, and no network except pooch inside `resolve_path`. Every number that defines the
protocol (split borders, scaler rows, time features, window counts) is a named constant or a pure function, so the
tests can assert them directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import os
import pathlib

import numpy as np
import pandas as pd
from absl import logging

from mola_jax.data.synthetic import synthetic_data
from mola_jax.errors import DataError

# ----------------------------------------------------------------------------------------------------------------
# Registry

ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{}"
AUTOFORMER_HINT = (
  "download the Autoformer 'all_six_datasets' bundle (linked from the thuml/Autoformer README on GitHub) and put "
  "{filename} in the folder named by $MOLA_DATA_DIR"
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str  # registry key, e.g. "ETTh1"
  filename: str  # "ETTh1.csv"
  split: str  # "ett_hour" | "ett_minute" | "ratio"
  channels: int  # D, excluding date
  rows: int  # data rows of the canonical file (what an AOT compile sizes the series by, without the file)
  sha256: tuple[str, ...]  # accepted digests; CRLF files also accept their LF-normalised digest; () = unknown
  url: str | None  # public direct download URL, or None when there is no stable one


DATASETS: dict[str, DatasetInfo] = {
  info.name: info
  for info in (
    DatasetInfo(
      "ETTh1",
      "ETTh1.csv",
      "ett_hour",
      7,
      17420,
      ("f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",),
      ETT_URL.format("ETTh1.csv"),
    ),
    DatasetInfo(
      "ETTh2",
      "ETTh2.csv",
      "ett_hour",
      7,
      17420,
      ("a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",),
      ETT_URL.format("ETTh2.csv"),
    ),
    DatasetInfo(
      "ETTm1",
      "ETTm1.csv",
      "ett_minute",
      7,
      69680,
      ("6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",),
      ETT_URL.format("ETTm1.csv"),
    ),
    DatasetInfo(
      "ETTm2",
      "ETTm2.csv",
      "ett_minute",
      7,
      69680,
      ("db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd",),
      ETT_URL.format("ETTm2.csv"),
    ),
    # Autoformer files ship with CRLF; many git copies are LF-normalised but hold the same numbers.
    DatasetInfo(
      "weather",
      "weather.csv",
      "ratio",
      21,
      52696,
      (
        "34ee981d07313e51da2a50bb600072c8ae4a69cb4b0651f4cb93a069d7a2ba63",
        "9b2b19b13e342d9c9b9c51620d42b4be232df7fba30e7f5c4968b7c79ab138ad",
      ),
      None,
    ),
    DatasetInfo(
      "exchange_rate",
      "exchange_rate.csv",
      "ratio",
      8,
      7588,
      (
        "48b4d9d3d508f5104162e85b9a6042e3557fde11aa9f2944eba8c0d0efc89842",
        "d55e7aa2641009814a18ba3279431b13f6d413b0eab195b9ff21988d8cf94e97",
      ),
      None,
    ),
    DatasetInfo(
      "national_illness",
      "national_illness.csv",
      "ratio",
      7,
      966,
      (
        "93601f64d2566dc796ca4305adad8b8560c2db1a1ff04543c3bd813a7263570a",
        "8594cecb98c6f2f9dc014eca11c4d5d1e38ad5ce6ed0592d4abe65b146fce395",
      ),
      None,
    ),
    DatasetInfo("electricity", "electricity.csv", "ratio", 321, 26304, (), None),
    DatasetInfo("traffic", "traffic.csv", "ratio", 862, 17544, (), None),
  )
}


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _verify(info: DatasetInfo, path: pathlib.Path) -> pathlib.Path:
  if not info.sha256:  # electricity, traffic: no trusted digest to compare against
    return path
  actual = _sha256(path)
  if actual not in info.sha256:
    raise DataError(
      f"{path} has sha256 {actual}, expected {' or '.join(info.sha256)}: it is not the canonical {info.filename} "
      f"(old ETDataset copies have ETTm1/ETTm2 swapped); replace it with the canonical file, or pass it as an "
      f"explicit custom data path if you really mean to use it"
    )
  return path


def resolve_path(name: str, path: str | None = None) -> pathlib.Path:
  """Order: explicit `path` (must exist, else DataError); $MOLA_DATA_DIR/<filename>; the user cache dir
  (pooch.os_cache('mola_jax')); else download with pooch into that cache (known_hash = sha256).

  A registry file found in MOLA_DATA_DIR or the cache is checked against its sha256 digests. No network or no URL
  -> DataError, never a silent fallback. Unknown name -> DataError listing the known names.
  """
  if path is not None:
    # An explicit file is the user's own choice, so it is not hash-checked.
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
      raise DataError(f"data file {p} does not exist; fix data.path or leave it unset to use a registry dataset")
    return p
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}; or set data.path to a custom CSV")
  info = DATASETS[name]
  data_dir = os.environ.get("MOLA_DATA_DIR")
  if data_dir:
    p = pathlib.Path(data_dir).expanduser() / info.filename
    if p.is_file():
      return _verify(info, p)

  import pooch  # only this branch needs it

  cache = pathlib.Path(pooch.os_cache("mola_jax"))
  p = cache / info.filename
  if p.is_file():
    return _verify(info, p)
  where = f"$MOLA_DATA_DIR ({data_dir})" if data_dir else "$MOLA_DATA_DIR (unset)"
  if info.url is None:
    raise DataError(
      f"{info.filename} is not in {where} nor in {cache}; " + AUTOFORMER_HINT.format(filename=info.filename)
    )
  try:
    got = pooch.retrieve(
      info.url, known_hash=f"sha256:{info.sha256[0]}", fname=info.filename, path=cache, progressbar=False
    )
  except Exception as e:  # network down, HTTP error or hash mismatch: all need the same manual fix
    msg = " ".join(str(e).split())
    raise DataError(
      f"could not download {info.filename} from {info.url} ({type(e).__name__}: {msg}); download it "
      f"by hand and put it in $MOLA_DATA_DIR"
    ) from e
  return pathlib.Path(got)


# ----------------------------------------------------------------------------------------------------------------
# Split borders (docs/protocol.md §2)

ETT_MONTH_HOURS = 30 * 24  # one ETT "month" of hourly rows
ETT_TRAIN_END = 12 * ETT_MONTH_HOURS  # 8,640
ETT_VAL_END = ETT_TRAIN_END + 4 * ETT_MONTH_HOURS  # 11,520
ETT_TEST_END = ETT_TRAIN_END + 8 * ETT_MONTH_HOURS  # 14,400
ETT_MINUTE_FACTOR = 4  # ETTm has four 15-minute rows per hour
TRAIN_FRACTION = 0.7
TEST_FRACTION = 0.2
SPLIT_KINDS = ("ett_hour", "ett_minute", "ratio")
SPLITS = ("train", "val", "test")


def split_borders(kind: str, n_rows: int, seq_len: int, *, parity_quirk: bool = False) -> dict[str, tuple[int, int]]:
  """{'train': (start, end), 'val': ..., 'test': ...} row ranges, end exclusive, as docs/protocol.md §2.

  Val and test start `seq_len` rows early so their first input is the tail of the split before; targets never
  overlap. `parity_quirk` (ratio only; ETT ignores it, as the fork's ETT loader has no quirk) starts train at row 1
  when n_train + n_val is odd.
  """
  if kind in ("ett_hour", "ett_minute"):
    f = ETT_MINUTE_FACTOR if kind == "ett_minute" else 1
    train_end, val_end, test_end = ETT_TRAIN_END * f, ETT_VAL_END * f, ETT_TEST_END * f
    if n_rows < test_end:
      raise DataError(f"an {kind} split needs at least {test_end} rows, the file has {n_rows}")
    borders = {"train": (0, train_end), "val": (train_end - seq_len, val_end), "test": (val_end - seq_len, test_end)}
  elif kind == "ratio":
    # int(n * 0.7), not exact floor(7n/10): the reference code's float expression, which differs for some n
    # (e.g. n = 90 -> 62); identical for every benchmark file.
    n_train = int(n_rows * TRAIN_FRACTION)
    n_test = int(n_rows * TEST_FRACTION)
    n_val = n_rows - n_train - n_test
    train_start = 1 if parity_quirk and (n_train + n_val) % 2 == 1 else 0
    borders = {
      "train": (train_start, n_train),
      "val": (n_train - seq_len, n_train + n_val),
      "test": (n_rows - n_test - seq_len, n_rows),
    }
  else:
    raise DataError(f"unknown split kind {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
  if min(start for start, _ in borders.values()) < 0:
    raise DataError(
      f"seq_len {seq_len} is longer than a split allows for {n_rows} rows ({kind} split); "
      f"use a shorter seq_len or a longer file"
    )
  return borders


def min_rows(kind: str, seq_len: int, *, parity_quirk: bool = False) -> int | None:
  """Fewest rows for which every split gives at least one window with pred_len = 1; None if no row count can."""
  if kind in ("ett_hour", "ett_minute"):
    f = ETT_MINUTE_FACTOR if kind == "ett_minute" else 1
    return ETT_TEST_END * f if seq_len + 1 <= ETT_TRAIN_END * f else None
  # The ratio borders are not monotone in n because of int(), so search: cheap, about 1.5 * seq_len steps.
  for n in range(seq_len + 1, 20 * (seq_len + 10)):
    try:
      borders = split_borders(kind, n, seq_len, parity_quirk=parity_quirk)
    except DataError:
      continue
    if all(end - start - seq_len >= 1 for start, end in borders.values()):
      return n
  return None


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


def time_features(dates: pd.DatetimeIndex | np.ndarray, freq: str = "h") -> np.ndarray:
  """[rows, F] float32 timeF features, each in [-0.5, 0.5], columns in the order of docs/protocol.md §5."""
  # Accept pandas-style multiples ("15min", "10T", "H"): only the unit picks the features, as in TSLib.
  code = freq.lower().lstrip("0123456789")
  if code not in TIME_FEATURES:
    raise DataError(f"unknown time-feature freq {freq!r}; use one of {', '.join(TIME_FEATURES)}")
  idx = pd.DatetimeIndex(dates)
  cols = [np.asarray(fn(idx), dtype=np.float64) for fn in TIME_FEATURES[code]]
  return np.stack(cols, axis=1).astype(np.float32)  # [rows, F]


# ----------------------------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields make == ambiguous and the class unhashable
class Series:
  name: str  # dataset name or the custom file's stem
  values: np.ndarray  # [rows, D] float32, standardised with TRAIN-split statistics
  marks: np.ndarray  # [rows, F] float32 time features
  dates: np.ndarray  # [rows] datetime64[ns]
  columns: tuple[str, ...]  # channel names, OT last
  mean: np.ndarray  # [D] float64 train mean
  std: np.ndarray  # [D] float64 train population std (0 -> 1)
  borders: dict  # split_borders(...) result
  freq: str  # the time-feature freq used


def _rows_text(rows: np.ndarray, limit: int = 5) -> str:
  shown = ", ".join(str(int(r)) for r in rows[:limit])
  return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def load_csv(path, *, name: str, split: str, seq_len: int, freq: str = "h", parity_quirk: bool = False) -> Series:
  """Read a CSV with a `date` column, order channels ..., OT, split, fit the scaler on TRAIN rows, transform all."""
  data, dates, channels = read_csv(path)
  return build_series(
    data,
    dates,
    name=name,
    columns=channels,
    split=split,
    seq_len=seq_len,
    freq=freq,
    parity_quirk=parity_quirk,
    origin=str(path),
  )


def read_csv(path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A checked CSV -> (values [rows, D] float64, dates [rows] datetime64[ns], channel names with OT last).

  Every fault is a DataError naming the file, what is wrong and where: unreadable or empty files, no `date`
  column, no data rows, missing, non-numeric or non-finite values, unparseable dates, and time that goes
  backwards. A repeated timestamp is a warning. Row numbers in messages are 0-based data rows (the header is not
  counted).
  """
  return checked_frame(read_frame(path), path)


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


def checked_frame(df: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A table with a `date` column and data columns -> (values, dates, channels), with read_csv's checks; `path`
  names the table in messages (a file, or "the DataFrame")."""
  _check_shape(df, path)
  channels = [c for c in df.columns if c != "date"]
  if "OT" in channels:  # the target last, as TSLib's custom loader does; a no-op for the benchmark files
    channels = [c for c in channels if c != "OT"] + ["OT"]
  if not channels:
    raise DataError(f"{path} has a 'date' column but no data columns")
  values = _checked_values(path, df[channels], channels)
  dates = _checked_dates(path, df["date"])
  return values, dates, tuple(str(c) for c in channels)


def _check_shape(df: pd.DataFrame, path) -> None:
  if "date" not in df.columns:
    raise DataError(
      f"{path} has no 'date' column (columns: {', '.join(map(str, df.columns[:10]))}); the first header field "
      "must be 'date'"
    )
  if df.empty:
    raise DataError(f"{path} has a header but no data rows; give a CSV with data")


def _checked_values(path, raw: pd.DataFrame, channels: list) -> np.ndarray:
  """[rows, D] float64; missing, non-numeric and non-finite (inf, -inf) values are errors."""
  numeric = raw.apply(pd.to_numeric, errors="coerce")
  missing = raw.isna().to_numpy()  # [rows, D]
  bad = numeric.isna().to_numpy() & ~missing  # present but not a number
  values = numeric.to_numpy(np.float64)
  infinite = np.isinf(values)
  for mask, what in ((bad, "non-numeric"), (missing, "missing"), (infinite, "non-finite")):
    if mask.any():
      cols = [c for c, hit in zip(channels, mask.any(axis=0), strict=True) if hit]
      rows = np.flatnonzero(mask.any(axis=1))
      raise DataError(
        f"{path}: {what} value in column(s) {', '.join(map(repr, cols[:5]))} at data row(s) {_rows_text(rows)} "
        "(0-based, header excluded); fix or fill them in the file"
      )
  return values


def _checked_dates(path, column: pd.Series) -> np.ndarray:
  """[rows] datetime64[ns], strictly increasing; unparseable, backwards and repeated stamps are errors."""
  try:
    # No fixed format: ETT writes '2016-07-01 00:00:00', exchange_rate '1990/1/1 0:00'.
    stamps = pd.to_datetime(column)
  except (ValueError, TypeError):
    # Per-element parsing is slow but only runs on odd files; NaT marks the rows to report.
    stamps = pd.to_datetime(column, format="mixed", errors="coerce")
  if stamps.isna().any():
    rows = np.flatnonzero(stamps.isna().to_numpy())
    raise DataError(
      f"{path}: missing or unparseable dates at data row(s) {_rows_text(rows)} (0-based, header excluded), "
      f"e.g. {column.iloc[rows[0]]!r}; fix them in the file"
    )
  dates = stamps.to_numpy().astype("datetime64[ns]")  # pandas 3 infers microseconds; the contract is ns
  # Windows are cut by position: rows out of time order would silently scramble the series. A repeated stamp is
  # only reported: the field's weather.csv has one (data row 19044), and refusing it would refuse the benchmark.
  step = np.diff(dates)
  backwards, repeated = np.flatnonzero(step < np.timedelta64(0)) + 1, np.flatnonzero(step == np.timedelta64(0)) + 1
  if len(backwards):
    row = int(backwards[0])
    raise DataError(
      f"{path}: time goes backwards at data row {row} ({column.iloc[row]!r} after {column.iloc[row - 1]!r}; "
      "0-based, header excluded); sort the file by date"
    )
  if len(repeated):
    logging.warning(
      "%s: duplicate time at data row(s) %s (0-based, header excluded), e.g. %r; the rows are kept in file order",
      path,
      _rows_text(repeated),
      column.iloc[int(repeated[0])],
    )
  return dates


def build_series(
  data: np.ndarray,
  dates: np.ndarray,
  *,
  name: str,
  columns: tuple[str, ...],
  split: str,
  seq_len: int,
  freq: str = "h",
  parity_quirk: bool = False,
  origin: str = "",
) -> Series:
  """Raw values [rows, D] + dates -> a split, train-standardised Series. Every loader ends here."""
  path = origin or name
  n_rows = len(data)
  need = min_rows(split, seq_len, parity_quirk=parity_quirk) if split in SPLIT_KINDS else n_rows
  if need is None:
    raise DataError(f"seq_len {seq_len} is too long for the {split} split of any file; use a shorter seq_len")
  if n_rows < need:
    raise DataError(
      f"{path} has {n_rows} data rows, but seq_len {seq_len} with the {split} split needs at least "
      f"{need} rows for one window per split; use a longer file or a shorter seq_len"
    )
  borders = split_borders(split, n_rows, seq_len, parity_quirk=parity_quirk)

  t0, t1 = borders["train"]
  mean = data[t0:t1].mean(axis=0)  # [D], train rows only: no statistics leak from val/test
  std = data[t0:t1].std(axis=0)  # [D], population std (ddof 0) like sklearn's StandardScaler
  if (std == 0.0).any():  # centred, not scaled: dividing by 0 would make the column inf
    constant = [str(c) for c, zero in zip(columns, std == 0.0, strict=True) if zero]
    logging.warning(
      "%s: column(s) %s are constant on the training split; they are centred but not scaled", path, ", ".join(constant)
    )
  std = np.where(std == 0.0, 1.0, std)
  values = ((data - mean) / std).astype(np.float32)  # [rows, D]
  return Series(
    name=name,
    values=values,
    marks=time_features(dates, freq),
    dates=dates,
    columns=columns,
    mean=mean,
    std=std,
    borders=borders,
    freq=freq,
  )


def load_series(data_cfg) -> Series:
  """Load the dataset a data config names: registry `name`, or a custom CSV at `path` (7:1:2 split, file stem name).

  A custom path whose file name is a registry file name (e.g. .../ETTh1.csv) keeps that dataset's split, so moving
  a benchmark file never silently changes its borders.
  """
  if data_cfg.name == "synthetic" and data_cfg.path is None:
    values, dates, columns = synthetic_data(data_cfg)  # no file at all
    return build_series(
      values,
      dates,
      name="synthetic",
      columns=columns,
      split="ratio",
      seq_len=int(data_cfg.seq_len),
      freq=data_cfg.freq,
    )
  path, seq_len, freq, parity_quirk = data_cfg.path, int(data_cfg.seq_len), data_cfg.freq, bool(data_cfg.parity_quirk)
  if path is not None:
    p = resolve_path(data_cfg.name, path)
    known = {info.filename: info for info in DATASETS.values()}
    if p.name in known:
      name, split = known[p.name].name, known[p.name].split
    else:
      name, split = p.stem, "ratio"
  else:
    name = data_cfg.name
    p = resolve_path(name, None)
    split = DATASETS[name].split
  return load_csv(p, name=name, split=split, seq_len=seq_len, freq=freq, parity_quirk=parity_quirk)


# ----------------------------------------------------------------------------------------------------------------
# Windows (docs/protocol.md §6)


@dataclasses.dataclass(frozen=True, eq=False)
class WindowSource:
  """The windows of one split: window i reads rows start+i ... start+i+seq_len+pred_len-1."""

  values: np.ndarray  # the whole standardised series [rows, D]
  marks: np.ndarray  # [rows, F]
  start: int  # first row of the split (its border start)
  end: int  # exclusive end row of the split
  seq_len: int
  pred_len: int

  def __len__(self) -> int:
    return max(0, (self.end - self.start) - self.seq_len - self.pred_len + 1)

  def __getitem__(self, i) -> dict:
    i = operator.index(i)
    n = len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"window {i} out of range for {n} windows")
    a = self.start + i
    j, k = a + self.seq_len, a + self.seq_len + self.pred_len
    return {
      "x": self.values[a:j],
      "x_mark": self.marks[a:j],  # [L, D], [L, F]
      "y": self.values[j:k],
      "y_mark": self.marks[j:k],
    }  # [H, D], [H, F]


def host_batch(src: WindowSource, idx, mask=None) -> dict:
  """The windows `idx` of `src` stacked on the host (numpy), as data.DeviceWindows.take gathers them on the device:
  for tests and tools that need a batch in hand."""
  batch = {k: np.stack([src[int(i)][k] for i in idx]) for k in ("x", "x_mark", "y", "y_mark")}
  return batch | ({"mask": np.asarray(mask, bool)} if mask is not None else {})


def window_source(series: Series, split: str, seq_len: int, pred_len: int) -> WindowSource:
  """The windows of one split. seq_len must be the one the borders were built with, else targets would cross splits."""
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  # Val starts seq_len rows before train ends, for both split kinds; that recovers the borders' seq_len.
  border_len = series.borders["train"][1] - series.borders["val"][0]
  if seq_len != border_len:
    raise DataError(
      f"{series.name} was loaded with seq_len {border_len} but windows ask for {seq_len}; reload "
      f"the series with seq_len={seq_len}"
    )
  start, end = series.borders[split]
  src = WindowSource(series.values, series.marks, start, end, seq_len, pred_len)
  if len(src) == 0:
    raise DataError(
      f"the {split} split of {series.name} has {end - start} rows, too few for seq_len {seq_len} + "
      f"pred_len {pred_len} (needs {seq_len + pred_len}); use a shorter horizon or a longer file"
    )
  return src
