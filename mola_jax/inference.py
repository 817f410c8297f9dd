"""A finished run, ready to forecast: the Python API.

    run = mola_jax.load_run("runs/etth1")
    future = run.predict(df)                # the T steps after df's last row, original units, with intervals
    errors = run.backtest(df, stride=96)    # rolling-origin forecasts of df's own rows, with their errors

`df` is a pandas DataFrame like the training CSV: a `date` column and the same channel columns. It goes through
the training data's checks (mola_jax/data/sources.py) and the run's own training scaler (never refitted).
Intervals: the split-conformal bands the run calibrated on its validation windows (mola_jax/evaluation.py).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
import pandas as pd
from flax import nnx

from mola_jax import checkpointing, config_lib, data, evaluation, plan, runtime, steps
from mola_jax.data import tables
from mola_jax.errors import DataError
from mola_jax.models import adapters, build


def future_dates(dates: np.ndarray, n: int, freq: str | None = None) -> np.ndarray:
  """`n` timestamps after the last one, at `freq` (the run's grid), else at the series' own frequency (inferred,
  else its median step)."""
  return data.following(dates, n, freq)


@dataclasses.dataclass
class History:
  """A table to forecast from, checked and scaled as the run's training data were."""

  values: np.ndarray  # [rows, D] float64, original units (filled where observed is False)
  observed: np.ndarray  # [rows, D] bool
  covariates: np.ndarray  # [rows, C] float64, original units
  dates: np.ndarray  # [rows] datetime64[ns]
  long: bool  # given as a long table: results come back long too


@dataclasses.dataclass
class Run:
  cfg: ml_collections.ConfigDict
  model: nnx.Module
  scaler: dict  # {"columns", "mean", "std", "freq", "covariates", ...} of the training split (workdir.write_scaler)
  stage: str  # the checkpoint loaded: "adapt" (stage 2) or "pretrain" (stage 1 / mtf)
  segments: int  # K
  horizon: int  # K * S
  conformal: dict | None = None  # {"levels", "multiplier" [L][T][D'], ...} (evaluation.py), if the run calibrated

  def __post_init__(self):
    self._graphdef, self._states = steps.eval_states(self.model, self.stage)
    self._step = steps.make_predict_step(self._graphdef, segments=self.segments)

  @property
  def columns(self) -> list[str]:
    """The channels the model reads, the target last."""
    return list(self.scaler["columns"])

  @property
  def outputs(self) -> list[str]:
    """The channels a forecast returns: the target alone under MS, else every channel."""
    return self.columns[-1:] if self.cfg.data.features == "MS" else self.columns

  @property
  def covariates(self) -> list[str]:
    return list(self.scaler.get("covariates", []))

  def forecast(self, batch: dict) -> np.ndarray:
    """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, T, F], "t0": [B]} -> [B, T, D] (standardised
    scale), at the matmul precision the run trained with."""
    with runtime.matmul_precision(self.cfg.matmul_precision):
      return np.asarray(self._step(self._states, batch))

  def predict(self, df: pd.DataFrame, future: pd.DataFrame | None = None, *, name: str = "the DataFrame"):
    """The T steps after `df`'s last row: columns date, the forecast channels (the target alone under MS) and per
    interval level lower/upper bounds ("OT_lower_80", ...), in original units; timestamps continue at the data's
    frequency. A long `df` (unique_id, ds, y) gives a long result: unique_id, ds, forecast, lower_80, ...
    `future`: the future covariates' values over those T steps (a table with `date` or `ds` and their columns),
    required when the run has any. `name` names `df` in error messages."""
    return self.forecast_table(df, future=future, name=name).drop(columns="origin")

  def backtest(self, df: pd.DataFrame, stride: int | None = None, *, name: str = "the DataFrame") -> pd.DataFrame:
    """Rolling-origin forecasts of `df`'s own rows: from every `stride`-th row (default T) with T known rows after
    it. A long table: origin, date, step, channel, forecast, actual, error (forecast - actual; empty where the
    actual value was filled in), and the interval bounds, in original units (a long `df`: ds and unique_id in
    place of date and channel)."""
    hist = self.history(df, name)
    seq_len, stride = self.cfg.data.seq_len, stride or self.horizon
    ends = list(range(seq_len, len(hist.values) - self.horizon + 1, stride))
    if not ends:
      raise DataError(
        f"{name} has {len(hist.values)} rows; a backtest needs at least seq_len + T = {seq_len + self.horizon}"
      )
    futures = [hist.dates[e : e + self.horizon] for e in ends]
    pred, scale = self._forecasts(hist, ends, futures, self._covariates_at(hist, None, futures, name))
    d = len(self.outputs)
    cut = lambda a: np.stack([a[e : e + self.horizon, -d:] for e in ends])  # [n, T, D']
    actual = np.where(cut(hist.observed), cut(hist.values), np.nan)
    n, t = pred.shape[:2]
    out = pd.DataFrame({
      "origin": np.repeat(pd.DatetimeIndex(hist.dates[np.asarray(ends) - 1]).to_numpy(), t * d),
      "date": np.repeat(np.stack(futures).reshape(-1), d),
      "step": np.tile(np.repeat(np.arange(1, t + 1), d), n),
      "channel": np.tile(self.outputs, n * t),
      "forecast": pred.reshape(-1), "actual": actual.reshape(-1), "error": (pred - actual).reshape(-1),
    })  # fmt: skip
    for key, band in self._bands(pred, scale).items():
      out[key] = band.reshape(-1)
    return out.rename(columns={"date": "ds", "channel": "unique_id"}) if hist.long else out

  def forecast_table(self, df: pd.DataFrame, *, future: pd.DataFrame | None = None, roll: bool = False,
                     name: str = "the DataFrame") -> pd.DataFrame:  # fmt: skip
    """A wide table (the forecast CLI's): origin (the last known row), date, the forecast channels and their
    bounds, for the T steps after `df`'s last row, and with `roll` also from every T-th row (a backtest); a long
    `df` gives it long (origin, unique_id, ds, forecast, bounds)."""
    hist = self.history(df, name)
    seq_len, t, grid = self.cfg.data.seq_len, self.horizon, self.scaler.get("grid")
    ends = (list(range(seq_len, len(hist.values), t)) if roll else []) + [len(hist.values)]
    futures = []
    for end in ends:  # past the table's end the calendar continues
      known = hist.dates[end : end + t]
      futures.append(
        np.concatenate([known, data.following(hist.dates, t - len(known), grid)]) if len(known) < t else known
      )
    pred, scale = self._forecasts(hist, ends, futures, self._covariates_at(hist, future, futures, name))
    wide = self._wide(pred, scale, hist.dates, ends, futures)
    return _long(wide, self.outputs, self._bands(pred, scale)) if hist.long else wide

  # -------------------------------------------------------------------------------------------------------------

  def history(self, df: pd.DataFrame, name: str = "the DataFrame") -> History:
    """`df` through the training data's checks (a long table pivoted; its gaps found and filled or refused as
    data.missing says, for a run trained on a regular grid), with the training columns."""
    table = data.read_table(df, name, self.cfg.data, regular=self.scaler.get("grid") is not None)
    if list(table.columns) != self.columns or list(table.covariate_names) != self.covariates:
      raise DataError(
        f"{name} has columns {list(table.columns) + list(table.covariate_names)}, but the run was trained on "
        f"{self.columns + self.covariates}; give the same columns"
      )
    if len(table.values) < self.cfg.data.seq_len:
      raise DataError(
        f"{name} has {len(table.values)} rows, fewer than the look-back of {self.cfg.data.seq_len}; give "
        f"at least {self.cfg.data.seq_len} rows"
      )
    observed = np.ones(table.values.shape, bool) if table.observed is None else table.observed
    return History(table.values, observed, table.covariates, table.dates, table.long)

  def _covariates_at(self, hist: History, future: pd.DataFrame | None, futures: list, name: str) -> list:
    """Each forecast's covariates [T, C] at its dates `futures[i]`: from the history where it has those dates,
    else from the `future` table (predict's: the steps after the history's end)."""
    if not self.covariates:
      return [np.zeros((len(dates), 0)) for dates in futures]
    lookup = pd.DataFrame(hist.covariates, index=pd.DatetimeIndex(hist.dates), columns=self.covariates)
    if future is not None:
      lookup = lookup.combine_first(self._future_table(future))
    out = []
    for dates in futures:
      values = lookup.reindex(pd.DatetimeIndex(dates))
      if values.isna().to_numpy().any():
        first = values.index[values.isna().any(axis=1)][0]
        span = f"the {len(dates)} steps after {name}'s last row ({pd.Timestamp(dates[0])} .. {pd.Timestamp(dates[-1])})"
        how = "pass them as future= (the forecast CLI: --future FILE), a table with date and those columns"
        raise DataError(f"no value of the future covariate(s) {', '.join(self.covariates)} at {first}: the forecast "
                        f"needs them for every one of {span}; {how}")  # fmt: skip
      out.append(values.to_numpy(np.float64))
    return out

  def _future_table(self, future: pd.DataFrame) -> pd.DataFrame:
    """The future covariates' table (wide: date or ds and the columns; or long: unique_id, ds and the columns),
    indexed by date."""
    if data.is_long(future.assign(y=0.0)):
      future = data.long_to_wide(future.assign(y=0.0), "the future covariates", tuple(self.cfg.data.future_covariates))
    key = "date" if "date" in future.columns else "ds"
    absent = [c for c in self.covariates if c not in future.columns]
    if key not in future.columns or absent:
      raise DataError(f"the future covariates lack column(s) {', '.join(absent or [key])}; give a table with date "
                      f"(or ds) and {', '.join(self.covariates)}")  # fmt: skip
    dates = tables.checked_dates("the future covariates", future[key])
    values = future[self.covariates].apply(pd.to_numeric, errors="coerce")
    return values.set_axis(pd.DatetimeIndex(dates)).astype(np.float64)

  def _forecasts(self, hist: History, ends: list[int], futures: list, known: list):
    """-> (forecasts [n, T, D'] of the output channels in original units, the look-back scales [n, D'] of the
    intervals, standardised), from the windows ending at `ends`, with the T `futures` dates and their `known`
    covariates [T, C] each."""
    mean, std = np.asarray(self.scaler["mean"]), np.asarray(self.scaler["std"])
    scaled = ((hist.values - mean) / std).astype(np.float32)  # the training split's scaler, never refitted
    marks = self._marks(hist.dates, hist.covariates)
    # Rows counted on the training grid (a benchmark file without one: at the history's own median step).
    first = data.positions(hist.dates, np.datetime64(self.scaler.get("last_date", hist.dates[-1])),
                           self.scaler.get("rows", len(hist.dates)) - 1, self.scaler.get("grid"))[0]  # fmt: skip
    seq_len, d = self.cfg.data.seq_len, len(self.outputs)
    out, scales = [], []
    size = self.cfg.data.eval_batch_size
    for i in range(0, len(ends), size):
      chunk = ends[i : i + size]
      batch = {
        "x": np.stack([scaled[e - seq_len : e] for e in chunk]),
        "x_mark": np.stack([marks[e - seq_len : e] for e in chunk]),
        "y_mark": np.stack(
          [self._marks(f, k) for f, k in zip(futures[i : i + size], known[i : i + size], strict=True)]
        ),
        "t0": np.asarray([first + e - seq_len for e in chunk], np.int32),  # rows counted on the training grid
      }
      out.append(self.forecast(batch)[..., -d:])
      scales.append(evaluation.lookback_scale(batch["x"][..., -d:]))
    return np.concatenate(out) * std[-d:] + mean[-d:], np.concatenate(scales)

  def _marks(self, dates: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """[n, F]: the time features of `dates`, then the covariates [n, C] standardised by the training scaler."""
    cov_mean = np.asarray(self.scaler.get("covariate_mean", []))
    cov_std = np.asarray(self.scaler.get("covariate_std", []))
    scaled = ((covariates - cov_mean) / cov_std).astype(np.float32)
    return np.concatenate([data.time_features(dates, self.scaler["freq"]), scaled], axis=1)

  def _bands(self, pred: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Interval bounds for forecasts [n, T, D'] with look-back scales [n, D']: {"lower_80": [n, T, D'], "upper_80":
    ...} in original units (evaluation.py)."""
    if not self.conformal:
      return {}
    std, out = np.asarray(self.scaler["std"])[-pred.shape[-1] :], {}
    for level, q in zip(self.conformal["levels"], np.asarray(self.conformal["multiplier"]), strict=True):
      pct, half = f"{100 * level:g}", q[None] * scale[:, None, :] * std  # [n, T, D']
      out[f"lower_{pct}"], out[f"upper_{pct}"] = pred - half, pred + half
    return out

  def _wide(self, pred: np.ndarray, scale: np.ndarray, dates: np.ndarray, ends: list[int], futures: list):
    bands = self._bands(pred, scale)
    frames = []
    for i, end in enumerate(ends):
      frame = pd.DataFrame(pred[i], columns=self.outputs)
      for key, band in bands.items():
        bound, pct = key.split("_")
        for j, column in enumerate(self.outputs):
          frame[f"{column}_{bound}_{pct}"] = band[i, :, j]
      frame.insert(0, "date", pd.DatetimeIndex(futures[i]))
      frame.insert(0, "origin", pd.Timestamp(dates[end - 1]))
      frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _long(wide: pd.DataFrame, outputs: list[str], bands: dict) -> pd.DataFrame:
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


def load_run(workdir) -> Run:
  """The selected state of the last stage that ran in `workdir` (stage 2 if present), with its scaler and, if the
  run calibrated them, its prediction intervals."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file() or not (workdir / "scaler.json").is_file():
    raise checkpointing.CheckpointError(
      f"{workdir} holds no finished training run (no config.json/scaler.json); pass the --workdir of a training run"
    )
  cfg = config_lib.from_json(json.loads((workdir / "config.json").read_text()))
  scaler = json.loads((workdir / "scaler.json").read_text())
  # The last of the method's stages that left a checkpoint: stage 2 if it ran, else stage 1 (or mtf's one stage).
  run_plan = plan.make(cfg)
  done = [st for st in run_plan.method_stages if checkpointing.stage_dir(workdir, st.name).is_dir()]
  if not done:
    raise checkpointing.CheckpointError(
      f"{workdir} holds no finished stage (no checkpoints/pretrain or checkpoints/adapt); let its training run "
      "finish first"
    )
  stage = done[-1]
  adapting = stage.name == plan.ADAPT
  model = build(
    run_plan.model,
    channels=len(scaler["columns"]),
    marks=scaler["marks"],
    covariates=len(scaler.get("covariates", [])),
    pred_len=stage.pred_len,
    segments=stage.segments if adapting else 0,
    rngs=nnx.Rngs(0),
  )
  if adapting and cfg.adapt.selection == "per_segment":
    adapters.bake(model)  # saved as fixed per-segment deltas
  checkpointing.restore_into(model, checkpointing.stage_dir(workdir, stage.name))
  conformal = workdir / "conformal.json"
  calibration = json.loads(conformal.read_text()) if conformal.is_file() else None
  if calibration is not None and len(calibration.get("multiplier", [[]])[0]) != stage.window:
    calibration = None  # calibrated for another stage's horizon (a pretrain-only run later adapted)
  return Run(cfg, model, scaler, stage.name, stage.segments, stage.window, calibration)
