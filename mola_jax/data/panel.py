"""A panel: many univariate series, each with its own dates, trained as one global channel-independent model.

Layout. The series' standardised values lie one after another in one array [rows, 1] (series s holds rows
offsets[s] .. offsets[s + 1] - 1); nothing is stored per row beyond the value (and, if any value was filled in,
whether it was observed): no time features (the panel backbones read none) and no dates (each series' first date
and its frequency give them back). A window is one series' stretch, never across a border, so the device gather
(data.gather, by row) and a host gather read the same array.

Split rule, per series, as M4 holds its series out: the last T steps are the test split, the T steps before them
the validation split, everything before those the training split; a validation or test window's look-back reaches
back L rows into the split before, as in the wide protocol. This is the forecast a panel is trained for (the T steps
after each series' end), it needs only L + 3T rows of a series (a 7:1:2 split needs a tenth of a series to hold
T steps: (L + T) / 0.1 rows), and every series weighs the same in the scores. Each series is standardised on its
own training part (observed values only); a series shorter than L + 3T is refused, or skipped with
data.short_series=skip.

A split's windows are a table per series (its first window's row and how many), so even millions of windows cost
O(series) memory: window i of a split is window i - cum[s] of series s = the last s with cum[s] <= i.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
from absl import logging

from mola_jax.data import calendar, tables
from mola_jax.data.scaler import Scaler, moments
from mola_jax.errors import DataError

PANEL_BACKBONES = ("patchtst", "dlinear", "cyclenet", "olinear")  # channel-independent: one series per window
SHORT_SERIES = ("error", "skip")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Panel:
  name: str
  ids: tuple[str, ...]  # [N] the series' unique_ids, sorted
  values: np.ndarray  # [rows, 1] float32, each series standardised on its own training part
  observed: np.ndarray | None  # [rows, 1] bool, False where a value was filled in; None: every value is real
  offsets: np.ndarray  # int64 [N + 1]: series s holds rows offsets[s] .. offsets[s + 1] - 1
  starts: np.ndarray  # datetime64[ns] [N]: each series' first date
  freqs: tuple[str, ...]  # [N] each series' pandas frequency (its dates' regular grid)
  t0: np.ndarray  # int64 [N]: each series' first row on its grid counted from `anchor` (CycleNet's phase)
  anchor: np.datetime64  # the panel's earliest date
  scaler: Scaler  # per series: mean, std [N, 1] (data/scaler.py)
  seq_len: int  # L and T, which the split rule reads
  horizon: int
  naive_scale: np.ndarray  # float64 [N]: MASE's denominator, the seasonal naive MAE of the training part
  skipped: tuple[str, ...] = ()  # short series left out (data.short_series=skip)
  columns: tuple[str, ...] = ("y",)  # one channel: a window is one series
  covariates: tuple[str, ...] = ()
  long: bool = True

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  @property
  def marks(self) -> np.ndarray:
    return np.zeros((len(self.values), 0), np.float32)  # [rows, 0]: no time features (none is read)

  def bounds(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(first row, end row) [N] of each series' `split`, rows of `values` (see the module docstring)."""
    first, end, t, lb = self.offsets[:-1], self.offsets[1:], self.horizon, self.seq_len
    return {"train": (first, end - 2 * t), "val": (end - 2 * t - lb, end - t), "test": (end - t - lb, end)}[split]

  def train_rows(self) -> np.ndarray:
    """[rows', 1]: every series' training part, one after another (OLinear's bases read them)."""
    lo, hi = self.bounds("train")
    return self.values[_ranges(lo, hi)]

  def record(self) -> dict:
    """scaler.json: what a run needs to read and forecast each series as it trained on it."""
    return {
      "dataset": self.name, "panel": True, "columns": list(self.columns), "covariates": [], "marks": 0,
      "ids": list(self.ids), **self.scaler.to_json(), "freqs": list(self.freqs),
      "starts": [str(d) for d in self.starts], "rows": self.lengths.tolist(), "t0": self.t0.tolist(),
      "anchor": str(self.anchor), "seq_len": self.seq_len, "horizon": self.horizon, "skipped": list(self.skipped),
      "freq": None, "grid": None, "long": True,
    }  # fmt: skip

  def fingerprint(self) -> str:
    h = hashlib.sha256()
    for part in (self.values, self.observed, self.offsets, self.starts.astype("int64"), self.scaler.mean,
                 self.scaler.std, np.asarray(self.ids), np.asarray(self.freqs)):  # fmt: skip
      h.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
    return h.hexdigest()

  def windows(self, split: str, seq_len: int, pred_len: int) -> PanelSplit:
    """The windows of `split` (W = pred_len target steps each): the training split reads the panel's own array;
    validation and test (L + T rows a series) get a compact copy of their rows."""
    if seq_len != self.seq_len:
      raise DataError(f"{self.name} was split for seq_len {self.seq_len} but windows ask for {seq_len}; reload it")
    lo, hi = self.bounds(split)
    count = hi - lo - seq_len - pred_len + 1
    if (count < 1).any():  # build_panel keeps only series long enough for every split
      raise DataError(f"a series of {self.name} has no {split} window of {seq_len} + {pred_len} steps")
    scale = np.stack([self.scaler.mean[:, 0], self.scaler.std[:, 0]], axis=1).astype(np.float32)  # [N, 2]
    cum = np.concatenate([[0], np.cumsum(count)])
    if split == "train":
      first = self.offsets[:-1]
      return PanelSplit(self.values, self.observed, first, self.t0, lo, cum, scale, seq_len, pred_len)
    take = _ranges(lo, hi)
    first = np.concatenate([[0], np.cumsum(hi - lo)[:-1]])
    observed = None if self.observed is None else self.observed[take]
    t0 = self.t0 + (lo - self.offsets[:-1])
    return PanelSplit(self.values[take], observed, first, t0, first, cum, scale, seq_len, pred_len)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """The rows lo[s] .. hi[s] - 1 of every s, one after another (int64)."""
  n = hi - lo
  return np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())


@dataclasses.dataclass(frozen=True, eq=False)
class PanelSplit:
  """The windows of one split of a panel: series s's windows start at rows start[s] .. start[s] + count - 1 of
  `values`, cum[s] of the split's windows before them; window i reads rows rows(i) .. rows(i) + L + W - 1."""

  values: np.ndarray  # [rows, 1] float32
  observed: np.ndarray | None  # [rows, 1] bool
  first: np.ndarray  # int64 [N]: each series' first row in `values`
  t0: np.ndarray  # int64 [N]: that row's position on the series' grid (counted from the panel's anchor)
  start: np.ndarray  # int64 [N]: each series' first window's row
  cum: np.ndarray  # int64 [N + 1]: the split's windows before each series
  scale: np.ndarray  # float32 [N, 2]: each series' (mean, std), for the scores in original units
  seq_len: int
  pred_len: int

  def __len__(self) -> int:
    return int(self.cum[-1])

  @property
  def size(self) -> int:
    return len(self)

  def series_of(self, i: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.cum, i, side="right") - 1

  def rows(self, i: np.ndarray) -> np.ndarray:
    """Window numbers [...] -> their first rows in `values` (int32, what data.gather takes)."""
    i = np.asarray(i, np.int64)
    s = self.series_of(i)
    return (self.start[s] + i - self.cum[s]).astype(np.int32)

  def arrays(self) -> dict:
    """The split as data.DeviceWindows places it on the device: values, marks [rows, 0], and per series its first
    row, grid position and (mean, std) (data.gather reads each window's series from them)."""
    out = {"values": self.values, "marks": np.zeros((len(self.values), 0), np.float32), "start": np.int32(0),
           "series_first": self.first.astype(np.int32), "series_t0": self.t0.astype(np.int32),
           "series_scale": self.scale}  # fmt: skip
    return out | ({} if self.observed is None else {"observed": self.observed})

  def batch(self, rows: np.ndarray) -> dict:
    """rows int [..., B] -> the training keys of those windows on the host (numpy), as data.gather gathers them
    on the device: x [..., B, L, 1], y [..., B, W, 1], empty marks, t0 [..., B] (and y_observed)."""
    lb, w = self.seq_len, self.pred_len
    cut = rows[..., None] + np.arange(lb + w)  # [..., B, L + W]
    window = self.values[cut]  # [..., B, L + W, 1]
    s = np.searchsorted(self.first, rows, side="right") - 1
    out = {
      "x": window[..., :lb, :], "x_mark": np.zeros((*rows.shape, lb, 0), np.float32),
      "y": window[..., lb:, :], "y_mark": np.zeros((*rows.shape, w, 0), np.float32),
      "t0": (self.t0[s] + rows - self.first[s]).astype(np.int32),
    }  # fmt: skip
    if self.observed is not None:
      out["y_observed"] = self.observed[cut[..., lb:]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building a panel


def season(freq: str) -> int:
  """MASE's seasonal period of a frequency, M4's: 24 hourly, 12 monthly, 4 quarterly, 1 yearly, weekly and daily;
  beyond M4, a finer step's is the steps of a day (96 at 15 minutes)."""
  offset = pd.tseries.frequencies.to_offset(freq)
  if isinstance(offset, (pd.offsets.MonthBegin, pd.offsets.MonthEnd)):
    return 12
  if isinstance(offset, (pd.offsets.QuarterBegin, pd.offsets.QuarterEnd)):
    return 4
  try:
    step = pd.Timedelta(offset)
  except ValueError:  # years, business days and other calendar rules
    return 1
  return max(1, int(pd.Timedelta(days=1) // step)) if step < pd.Timedelta(days=1) else 1


def naive_scale(y: np.ndarray, observed: np.ndarray | None, m: int) -> float:
  """The mean |y[t] - y[t - m]| over a training part (observed pairs only): MASE's scale (M4). A part no longer
  than m uses m = 1; NaN where it is zero or has no pair (that series' MASE is left out)."""
  m = m if len(y) > m else 1
  diff = np.abs(y[m:] - y[:-m])
  if observed is not None:
    diff = diff[observed[m:] & observed[:-m]]
  scale = float(diff.mean()) if diff.size else 0.0
  return scale if scale > 0 else float("nan")


TRAINING_NEED = "look-back + 3 x horizon (training, validation and test windows)"


def keep(ids, lengths: np.ndarray, need: int, short: str, origin, *, what: str = TRAINING_NEED,
         fix: str = "drop them, shorten data.seq_len or the horizon") -> np.ndarray:  # fmt: skip
  """Which series are at least `need` rows long (bool [N]); a shorter one refused in one line naming how many
  and the first few, or left out under short="skip" (a warning)."""
  too_short = np.flatnonzero(lengths < need)
  if too_short.size:
    named = ", ".join(f"{ids[i]!r} ({lengths[i]} rows)" for i in too_short[:5])
    more = f" and {too_short.size - 5} more" if too_short.size > 5 else ""
    text = f"{origin}: {too_short.size} of {len(ids)} series are shorter than {what} = {need} rows: {named}{more}"
    if short != "skip":
      raise DataError(f"{text}; {fix}, or set data.short_series=skip")
    logging.warning("%s; skipped (data.short_series=skip)", text)
  if too_short.size == len(ids):
    raise DataError(f"{origin}: every series is shorter than {what} = {need} rows; {fix}")
  return lengths >= need


def build_panel(name: str, ids, starts, freqs, lengths, read, *, seq_len: int, horizon: int, short: str = "error",
                origin: str = "") -> Panel:  # fmt: skip
  """A panel of N series: `ids`, first dates `starts`, frequencies `freqs` and row counts `lengths` [N] (on each
  series' regular grid), their values from `read(i)` -> (float64 [lengths[i]], observed bool [lengths[i]] or None),
  read once each and written straight into the panel's array: the panel's float32 array is the only copy."""
  lengths, starts = np.asarray(lengths, np.int64), np.asarray(starts, "datetime64[ns]")
  kept = np.flatnonzero(keep(ids, lengths, seq_len + 3 * horizon, short, origin or name))
  offsets = np.concatenate([[0], np.cumsum(lengths[kept])])
  values, observed = np.empty((offsets[-1], 1), np.float32), None
  mean, std, scale = np.empty(len(kept)), np.empty(len(kept)), np.empty(len(kept))
  for j, i in enumerate(kept):
    y, obs = read(i)
    train = len(y) - 2 * horizon
    mean[j], std[j] = moments(y[:train], None if obs is None else obs[:train])
    values[offsets[j] : offsets[j + 1], 0] = (y - mean[j]) / (std[j] if std[j] > 0 else 1.0)
    if obs is not None:
      observed = np.ones(values.shape, bool) if observed is None else observed
      observed[offsets[j] : offsets[j + 1], 0] = obs
    scale[j] = naive_scale(y[:train], None if obs is None else obs[:train], season(freqs[i]))
  anchor = starts[kept].min()
  t0 = np.array([calendar.positions(starts[i : i + 1], anchor, 0, freqs[i])[0] for i in kept], np.int64)
  skipped = tuple(ids[i] for i in sorted(set(range(len(ids))) - set(kept.tolist())))
  return Panel(name=name, ids=tuple(ids[i] for i in kept), values=values, observed=observed, offsets=offsets,
               starts=starts[kept], freqs=tuple(freqs[i] for i in kept), t0=t0, anchor=anchor,
               scaler=Scaler.per_series(mean, std, origin=origin or name), seq_len=seq_len, horizon=horizon,
               naive_scale=scale, skipped=skipped)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# A long table -> a panel


def is_panel(df: pd.DataFrame, data_cfg, origin) -> bool:
  """Whether a table is read as a panel: data.panel, or a long table whose series span different dates."""
  if getattr(data_cfg, "panel", False):
    return True
  if not tables.is_long(df):
    return False
  spans = pd.DataFrame({"id": df["unique_id"].astype(str), "ds": tables._parse_dates(origin, df["ds"], "ds values")})
  spans = spans.groupby("id")["ds"].agg(["min", "max"])
  return spans["min"].nunique() > 1 or spans["max"].nunique() > 1


def long_series(df: pd.DataFrame, origin, data_cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A long table (a wide one's columns melted into one) -> {id: (dates [n], y [n] float64 with NaN where empty)},
  sorted by id and date; repeated (id, ds) pairs and columns beyond unique_id, ds, y are errors."""
  if getattr(data_cfg, "features", "M") != "M":
    raise DataError(f"{origin}: a panel forecasts every series from its own history; data.features="
                    f"{data_cfg.features} picks one series of a multivariate table: leave it at M")  # fmt: skip
  if not tables.is_long(df):  # data.panel=True on a wide table: its columns are the series
    tables.check_shape(df, origin)
    df = df.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
  extra = [c for c in df.columns if c not in tables.LONG_KEYS]
  if extra:
    raise DataError(f"{origin}: a panel reads unique_id, ds and y only (its backbones read no covariates); drop "
                    f"column(s) {', '.join(map(repr, extra[:5]))}")  # fmt: skip
  df = pd.DataFrame({"unique_id": df["unique_id"].astype(str), "ds": tables._parse_dates(origin, df["ds"], "ds values"),
                     "y": tables._numeric(origin, df[["y"]], ["y"])[:, 0]})  # fmt: skip
  repeated = df.duplicated(["unique_id", "ds"]).to_numpy()
  if repeated.any():
    row = int(np.flatnonzero(repeated)[0])
    raise DataError(f"{origin}: series {df['unique_id'].iloc[row]!r} has two rows for ds {df['ds'].iloc[row]} "
                    f"(data row {row}); keep one row per (unique_id, ds)")  # fmt: skip
  df = df.sort_values(["unique_id", "ds"], kind="stable")
  ids, first = np.unique(df["unique_id"].to_numpy(), return_index=True)
  ends = np.append(first[1:], len(df))
  dates, y = df["ds"].to_numpy(), df["y"].to_numpy(np.float64)
  return {uid: (dates[a:b], y[a:b]) for uid, a, b in zip(ids, first, ends, strict=True)}


def on_grid(uid: str, dates: np.ndarray, y: np.ndarray, origin) -> tuple[np.ndarray, calendar.Grid]:
  """One series on its regular grid -> (y float64 [n] with NaN at the grid's rows it lacks and at empty values,
  the grid)."""
  grid = calendar.infer_grid(dates, f"{origin}: series {uid!r}")
  full = grid.dates()
  if len(full) == len(dates):
    return y, grid
  placed = np.full(len(full), np.nan)
  placed[np.searchsorted(full, dates)] = y
  return placed, grid


def filled(uid: str, y: np.ndarray, freq: str, origin, missing: str) -> tuple[np.ndarray, np.ndarray | None]:
  """A series' gaps (NaN) filled as data.missing says, or refused -> (y, observed bool or None: no gap)."""
  gaps = np.isnan(y)
  if not gaps.any():
    return y, None
  where = f"{origin}: series {uid!r}"
  if missing == "error":
    raise DataError(f"{where}: {int(gaps.sum())} value(s) of its {calendar.describe(freq)} grid are missing "
                    f"(absent rows or empty y), the first at its row {int(np.flatnonzero(gaps)[0])}; add them, or "
                    "set data.missing=interpolate or ffill")  # fmt: skip
  return tables.fill(y[:, None], [uid], where, missing=missing)[:, 0], ~gaps


def read_panel(df: pd.DataFrame, origin, data_cfg, *, horizon: int, name: str) -> Panel:
  """A long table (or, with data.panel, a wide one) -> Panel: each series on its own regular grid, its gaps filled
  or refused as data.missing says, split and scaled on its own (module docstring)."""
  if horizon is None:
    raise DataError(f"{origin} is a panel: its split needs the horizon (load_series(..., horizon=T))")
  series = long_series(df, origin, data_cfg)
  ids = list(series)
  # A series of fewer than 3 rows has no grid to tell; it is too short for any split anyway.
  placed = [on_grid(uid, *series[uid], origin) if len(series[uid][0]) >= 3 else (series[uid][1], None) for uid in ids]
  freqs = [grid.freq if grid else "D" for _, grid in placed]
  read = lambda i: filled(ids[i], placed[i][0], freqs[i], origin, data_cfg.missing)
  return build_panel(name, ids, [series[uid][0][0] for uid in ids], freqs,
                     [len(p[0]) for p in placed], read, seq_len=int(data_cfg.seq_len), horizon=horizon,
                     short=getattr(data_cfg, "short_series", "error"), origin=str(origin))  # fmt: skip
