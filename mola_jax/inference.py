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
import warnings

import ml_collections
import numpy as np
import pandas as pd
from flax import nnx

from mola_jax import checkpointing, config_lib, data, evaluation, plan, runtime, steps
from mola_jax.errors import DataError
from mola_jax.models import adapters, build


def future_dates(dates: np.ndarray, n: int) -> np.ndarray:
  """`n` timestamps after the last one, at the series' own frequency (inferred, else its median step)."""
  index = pd.DatetimeIndex(dates)
  with warnings.catch_warnings():  # pandas 3 warns that the return type will change; either type works below
    warnings.simplefilter("ignore")
    freq = pd.infer_freq(index[-min(len(index), 50) :]) if len(index) >= 3 else None
  if freq is not None:
    return pd.date_range(index[-1], periods=n + 1, freq=freq)[1:].to_numpy()
  step = np.median(np.diff(index.to_numpy()))  # irregular stamps: continue at the typical spacing
  return index[-1].to_datetime64() + step * np.arange(1, n + 1)


@dataclasses.dataclass
class Run:
  cfg: ml_collections.ConfigDict
  model: nnx.Module
  scaler: dict  # {"columns", "mean", "std", "freq", ...} of the training split
  stage: str  # the checkpoint loaded: "adapt" (stage 2) or "pretrain" (stage 1 / mtf)
  segments: int  # K
  horizon: int  # K * S
  conformal: dict | None = None  # {"levels", "multiplier" [L][T][D], ...} (evaluation.py), if the run calibrated

  def __post_init__(self):
    self._graphdef, self._states = steps.eval_states(self.model, self.stage)
    self._step = steps.make_predict_step(self._graphdef, segments=self.segments)

  @property
  def columns(self) -> list[str]:
    return list(self.scaler["columns"])

  def forecast(self, batch: dict) -> np.ndarray:
    """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, T, F]} -> [B, T, D] (standardised scale), at
    the matmul precision the run trained with."""
    with runtime.matmul_precision(self.cfg.matmul_precision):
      return np.asarray(self._step(self._states, batch))

  def predict(self, df: pd.DataFrame, *, name: str = "the DataFrame") -> pd.DataFrame:
    """The T steps after `df`'s last row: columns date, the channels, and per interval level lower/upper bounds
    ("OT_lower_80", "OT_upper_80", ...), in original units; timestamps continue at the data's frequency. `name`
    names `df` in error messages."""
    return self.forecast_table(df, name=name).drop(columns="origin")

  def backtest(self, df: pd.DataFrame, stride: int | None = None, *, name: str = "the DataFrame") -> pd.DataFrame:
    """Rolling-origin forecasts of `df`'s own rows: from every `stride`-th row (default T) with T known rows after
    it. A long table: origin, date, step, channel, forecast, actual, error (forecast - actual), and the interval
    bounds, in original units."""
    values, dates = self._checked(df, name)
    seq_len, stride = self.cfg.data.seq_len, stride or self.horizon
    ends = list(range(seq_len, len(values) - self.horizon + 1, stride))
    if not ends:
      raise DataError(
        f"the DataFrame has {len(values)} rows; a backtest needs at least seq_len + T = {seq_len + self.horizon}"
      )
    pred, _, scale = self._forecasts(values, dates, ends)  # [n, T, D]
    actual = np.stack([values[e : e + self.horizon] for e in ends])
    n, t, d = pred.shape
    out = pd.DataFrame({
      "origin": np.repeat(pd.DatetimeIndex(dates[np.asarray(ends) - 1]).to_numpy(), t * d),
      "date": np.repeat(np.stack([dates[e : e + t] for e in ends]).reshape(-1), d),
      "step": np.tile(np.repeat(np.arange(1, t + 1), d), n),
      "channel": np.tile(self.columns, n * t),
      "forecast": pred.reshape(-1), "actual": actual.reshape(-1), "error": (pred - actual).reshape(-1),
    })  # fmt: skip
    for name, band in self._bands(pred, scale).items():
      out[name] = band.reshape(-1)
    return out

  def forecast_table(self, df: pd.DataFrame, *, roll: bool = False, name: str = "the DataFrame") -> pd.DataFrame:
    """A wide table (the forecast CLI's): origin (the last known row), date, the channels and their bounds, for the
    T steps after `df`'s last row, and with `roll` also from every T-th row (a backtest)."""
    values, dates = self._checked(df, name)
    ends = (list(range(self.cfg.data.seq_len, len(values), self.horizon)) if roll else []) + [len(values)]
    return self._wide(values, dates, ends)

  # -------------------------------------------------------------------------------------------------------------

  def _checked(self, df: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    values, dates, columns = data.checked_frame(df, name)
    if list(columns) != self.columns:
      raise DataError(
        f"{name} has columns {list(columns)}, but the run was trained on {self.columns}; give the same columns"
      )
    if len(values) < self.cfg.data.seq_len:
      raise DataError(
        f"{name} has {len(values)} rows, fewer than the look-back of {self.cfg.data.seq_len}; give "
        f"at least {self.cfg.data.seq_len} rows"
      )
    return values, dates

  def _forecasts(self, values: np.ndarray, dates: np.ndarray, ends: list[int]):
    """-> (forecasts [n, T, D] in original units, the T dates after each end [n, T], the look-back scales [n, D]
    of the intervals, standardised)."""
    mean, std = np.asarray(self.scaler["mean"]), np.asarray(self.scaler["std"])
    scaled = ((values - mean) / std).astype(np.float32)  # the training split's scaler, never refitted
    freq, seq_len, t = self.scaler["freq"], self.cfg.data.seq_len, self.horizon
    marks = data.time_features(dates, freq)
    futures = []
    for end in ends:
      known = dates[end : end + t]  # past the data's end: continue the calendar
      futures.append(
        np.concatenate([known, future_dates(dates[: end + len(known)], t - len(known))]) if len(known) < t else known
      )
    out, scales = [], []
    size = self.cfg.data.eval_batch_size
    for i in range(0, len(ends), size):
      chunk = ends[i : i + size]
      batch = {
        "x": np.stack([scaled[e - seq_len : e] for e in chunk]),
        "x_mark": np.stack([marks[e - seq_len : e] for e in chunk]),
        "y_mark": np.stack([data.time_features(f, freq) for f in futures[i : i + size]]),
      }
      out.append(self.forecast(batch))
      scales.append(evaluation.lookback_scale(batch["x"]))
    return np.concatenate(out) * std + mean, np.stack(futures), np.concatenate(scales)

  def _bands(self, pred: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Interval bounds for forecasts [n, T, D] with look-back scales [n, D]: {"lower_80": [n, T, D], "upper_80":
    ...} in original units (evaluation.py)."""
    if not self.conformal:
      return {}
    std, out = np.asarray(self.scaler["std"]), {}
    for level, q in zip(self.conformal["levels"], np.asarray(self.conformal["multiplier"]), strict=True):
      pct, half = f"{100 * level:g}", q[None] * scale[:, None, :] * std  # [n, T, D]
      out[f"lower_{pct}"], out[f"upper_{pct}"] = pred - half, pred + half
    return out

  def _wide(self, values: np.ndarray, dates: np.ndarray, ends: list[int]) -> pd.DataFrame:
    pred, futures, scale = self._forecasts(values, dates, ends)
    bands = self._bands(pred, scale)
    frames = []
    for i, end in enumerate(ends):
      frame = pd.DataFrame(pred[i], columns=self.columns)
      for name, band in bands.items():
        bound, pct = name.split("_")
        for j, column in enumerate(self.columns):
          frame[f"{column}_{bound}_{pct}"] = band[i, :, j]
      frame.insert(0, "date", pd.DatetimeIndex(futures[i]))
      frame.insert(0, "origin", pd.Timestamp(dates[end - 1]))
      frames.append(frame)
    return pd.concat(frames, ignore_index=True)


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
