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
import types

import numpy as np
import pandas as pd

from mola_jax.data import calendar, panel, tables
from mola_jax.data.scaler import Scaler
from mola_jax.data.synthetic import synthetic_data
from mola_jax.data.tables import read_frame
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
# Loading


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: array fields make == ambiguous and the class unhashable
class Series:
  name: str  # dataset name or the custom file's stem
  values: np.ndarray  # [rows, D] float32, standardised with TRAIN-split statistics
  marks: np.ndarray  # [rows, F] float32: the time features, then the standardised future covariates
  dates: np.ndarray  # [rows] datetime64[ns]
  columns: tuple[str, ...]  # channel names, the target last
  scaler: Scaler  # the training split's standardisation (data/scaler.py)
  borders: dict  # split_borders(...) result
  freq: str  # the time-feature freq used
  observed: np.ndarray | None = None  # [rows, D] bool: False where a value was filled in; None: all real
  covariates: tuple[str, ...] = ()  # the future covariates: the last len(covariates) columns of marks
  grid: str | None = None  # the pandas frequency of the dates' regular grid; None: rows by position
  long: bool = False  # read from a long table (unique_id, ds, y)

  def record(self) -> dict:
    """What a run needs to read new data as it read these (scaler.json, mola_jax/inference.py): the columns,
    the training scaler, the time features and the grid, where the rows end (a cycle's phase is counted from
    there)."""
    return {
      "dataset": self.name,
      "columns": list(self.columns),  # the target last
      **self.scaler.to_json(),
      "freq": self.freq,  # the time features'
      "marks": int(self.marks.shape[1]),  # time features, then the future covariates
      "covariates": list(self.covariates),
      "grid": self.grid,  # the pandas frequency of the dates (None: a benchmark file, rows by position)
      "last_date": str(self.dates[-1]),
      "rows": len(self.dates),
      "long": self.long,
    }


def build_series(
  table: tables.Table, *, name: str, split: str, seq_len: int, freq: str = "h", parity_quirk: bool = False,
  origin: str = "",
) -> Series:  # fmt: skip
  """A checked table -> a split, train-standardised Series. Every loader ends here."""
  path = origin or name
  n_rows = len(table.values)
  need = min_rows(split, seq_len, parity_quirk=parity_quirk) if split in SPLIT_KINDS else n_rows
  if need is None:
    raise DataError(f"seq_len {seq_len} is too long for the {split} split of any file; use a shorter seq_len")
  if n_rows < need:
    raise DataError(
      f"{path} has {n_rows} data rows, but seq_len {seq_len} with the {split} split needs at least "
      f"{need} rows for one window per split; use a longer file or a shorter seq_len"
    )
  borders = split_borders(split, n_rows, seq_len, parity_quirk=parity_quirk)
  train = slice(*borders["train"])  # the scalers see training rows only: no statistics leak from val/test
  observed = None if table.observed is None else table.observed[train]
  scaler = Scaler.fit(table.values[train], observed, table.covariates[train], names=table.columns,
                      covariate_names=table.covariate_names, origin=path)  # fmt: skip
  covariates = scaler.scale_covariates(table.covariates)  # [rows, C]
  return Series(
    name=name,
    values=scaler.scale(table.values),  # [rows, D]
    marks=np.concatenate([calendar.time_features(table.dates, freq), covariates], axis=1),  # [rows, F]
    dates=table.dates,
    columns=table.columns,
    scaler=scaler,
    borders=borders,
    freq=freq,
    observed=table.observed,
    covariates=table.covariate_names,
    grid=None if table.grid is None else table.grid.freq,
    long=table.long,
  )


# The data config of a benchmark file read as the field reads it: every channel in and out, the target (OT) last,
# no covariates, no gaps allowed.
FIELD = types.SimpleNamespace(target=None, features="M", future_covariates=(), missing="error")


def load_csv(path, *, name: str, split: str, seq_len: int, freq: str = "h", parity_quirk: bool = False) -> Series:
  """A benchmark-style CSV (a `date` column, every channel in and out, OT last), rows by position -> Series."""
  table = tables.read_table(read_frame(path), str(path), FIELD, regular=False)
  return build_series(table, name=name, split=split, seq_len=seq_len, freq=freq, parity_quirk=parity_quirk,
                      origin=str(path))  # fmt: skip


def read_csv(path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A checked wide CSV -> (values [rows, D] float64, dates [rows] datetime64[ns], channel names with OT last).

  Every fault is a DataError naming the file, what is wrong and where (tables.py); rows by position, a repeated
  timestamp a warning."""
  return checked_frame(read_frame(path), path)


def checked_frame(df: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """A wide table with a `date` column -> (values, dates, channels), with read_csv's checks; `path` names the
  table in messages (a file, or "the DataFrame")."""
  table = tables.read_table(df, path, FIELD, regular=False)
  return table.values, table.dates, table.columns


def _registry_file(path: pathlib.Path) -> DatasetInfo | None:
  """The registry entry of an explicit path whose name is a registry file's, else None."""
  return next((info for info in DATASETS.values() if info.filename == path.name), None)


def load_series(data_cfg, frame: pd.DataFrame | None = None, *, horizon: int | None = None) -> Series | panel.Panel:
  """Load the dataset a data config names: registry `name`, or a custom table at `path` (7:1:2 split, file stem
  name) or given as `frame` (a DataFrame; 7:1:2, named "dataframe"), wide or long, with the config's target,
  features, future covariates and handling of gaps. A long table of series with different spans (or any table
  under data.panel) is a panel (data/panel.py), split by the `horizon` T.

  A benchmark file (the registry's, or an explicit path holding its canonical bytes) is read as the field reads it:
  rows by position and the hourly time features, so published numbers compare. Any other table is checked
  against the regular grid of its dates (missing rows found, filled or refused by data.missing) and gets the
  time features of its own frequency unless data.freq names one. A custom path whose file name is a registry
  file's (e.g. .../ETTh1.csv) keeps that dataset's split, so moving a benchmark file never silently changes its
  borders.
  """
  seq_len, quirk = int(data_cfg.seq_len), bool(data_cfg.parity_quirk)
  if frame is not None:
    if panel.is_panel(frame, data_cfg, "the DataFrame"):
      return panel.read_panel(frame, "the DataFrame", data_cfg, horizon=horizon, name="dataframe")
    table = tables.read_table(frame, "the DataFrame", data_cfg, regular=True)
    freq = _freq(data_cfg, table, benchmark=False)
    return build_series(table, name="dataframe", split="ratio", seq_len=seq_len, freq=freq, parity_quirk=quirk)
  if data_cfg.name == "synthetic" and data_cfg.path is None:
    values, dates, columns = synthetic_data(data_cfg)  # no file at all
    frame = pd.DataFrame(values, columns=columns).assign(date=dates)
    table = tables.read_table(frame, "synthetic", data_cfg, regular=False)
    return build_series(table, name="synthetic", split="ratio", seq_len=seq_len, freq=_freq(data_cfg, table))
  if data_cfg.path is not None:
    p = resolve_path(data_cfg.name, data_cfg.path)
    info = _registry_file(p)
    name, split = (info.name, info.split) if info else (p.stem, "ratio")
    benchmark = info is not None and bool(info.sha256) and _sha256(p) in info.sha256
  else:
    name = data_cfg.name
    p = resolve_path(name, None)
    split, benchmark = DATASETS[name].split, True
  df = read_frame(p)
  if panel.is_panel(df, data_cfg, str(p)):
    return panel.read_panel(df, str(p), data_cfg, horizon=horizon, name=name)
  table = tables.read_table(df, str(p), data_cfg, regular=not benchmark)
  freq = _freq(data_cfg, table, benchmark=benchmark)
  return build_series(table, name=name, split=split, seq_len=seq_len, freq=freq, parity_quirk=quirk, origin=str(p))


def fingerprint(series: Series | panel.Panel) -> str:
  """sha256 of what a run trains on (standardised values and their scaler, marks, dates, which values are real): a
  workdir holds the run of one series, and a rerun on other data must not resume it."""
  if isinstance(series, panel.Panel):
    return series.fingerprint()
  h = hashlib.sha256()
  sc = series.scaler
  parts = (series.values, sc.mean, sc.std, series.marks, sc.covariate_mean, sc.covariate_std,
           series.dates.astype("int64"), series.observed)  # fmt: skip
  for part in parts:
    h.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
  return h.hexdigest()


def _freq(data_cfg, table: tables.Table, *, benchmark: bool = True) -> str:
  """The time features' frequency: data.freq if set ("auto": the dates' own); unset, the field's hourly four for a
  benchmark file and the dates' own frequency for any other table."""
  freq = data_cfg.freq
  if freq == "auto" or (freq is None and not benchmark):
    grid = table.grid or calendar.infer_grid(table.dates, "the series")
    return grid.freq
  return freq or "h"


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
  observed: np.ndarray | None = None  # [rows, D] bool, False at filled values (left out of losses and scores)

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
    return (
      {
        "x": self.values[a:j],
        "x_mark": self.marks[a:j],  # [L, D], [L, F]
        "y": self.values[j:k],
        "y_mark": self.marks[j:k],
        "t0": np.int32(a),  # the row of the window's first step: where a model reads the phase of a cycle
      }
      | ({} if self.observed is None else {"y_observed": self.observed[j:k]})
    )  # [H, D], [H, F], [], [H, D]


def host_batch(src: WindowSource, idx, mask=None) -> dict:
  """The windows `idx` of `src` stacked on the host (numpy), as data.DeviceWindows.take gathers them on the device:
  for tests and tools that need a batch in hand."""
  keys = ("x", "x_mark", "y", "y_mark", "t0") + (() if src.observed is None else ("y_observed",))
  batch = {k: np.stack([src[int(i)][k] for i in idx]) for k in keys}
  return batch | ({"mask": np.asarray(mask, bool)} if mask is not None else {})


def window_source(series: Series | panel.Panel, split: str, seq_len: int, pred_len: int):
  """The windows of one split: a WindowSource, or a panel's PanelSplit. seq_len must be the one the borders were
  built with, else targets would cross splits."""
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
  if isinstance(series, panel.Panel):
    return series.windows(split, seq_len, pred_len)
  # Val starts seq_len rows before train ends, for both split kinds; that recovers the borders' seq_len.
  border_len = series.borders["train"][1] - series.borders["val"][0]
  if seq_len != border_len:
    raise DataError(
      f"{series.name} was loaded with seq_len {border_len} but windows ask for {seq_len}; reload "
      f"the series with seq_len={seq_len}"
    )
  start, end = series.borders[split]
  src = WindowSource(series.values, series.marks, start, end, seq_len, pred_len, series.observed)
  if len(src) == 0:
    raise DataError(
      f"the {split} split of {series.name} has {end - start} rows, too few for seq_len {seq_len} + "
      f"pred_len {pred_len} (needs {seq_len + pred_len}); use a shorter horizon or a longer file"
    )
  return src
