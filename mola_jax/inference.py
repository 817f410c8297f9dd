"""A finished run, ready to forecast: the Python API.

    run = mola_jax.load_run("runs/etth1")
    future = run.predict(df)                # the T steps after df's last row, original units, with intervals
    errors = run.backtest(df, stride=96)    # rolling-origin forecasts of df's own rows, with their errors

`df` is a pandas DataFrame like the training CSV: a `date` column and the same channel columns. It goes through
the training data's checks (mola_jax/data/sources.py) and the run's own training scaler (never refitted). A run
trained on a panel takes a long table of (some of) its series and forecasts each from its own history, scaled by
its own training scaler (mola_jax/data/panel_frames.py): the T steps after each series' own last date.
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

from mola_jax import checkpointing, config_lib, data, plan, runtime, steps
from mola_jax.data import frames, panel_frames
from mola_jax.data.scaler import Scaler
from mola_jax.errors import DataError
from mola_jax.models import adapters, build
from mola_jax.state import TrainState


@dataclasses.dataclass
class Run:
  """A finished run's selected forecaster, with what it needs to read new data as it read its training data."""

  cfg: ml_collections.ConfigDict
  state: TrainState  # the selected state (forecaster(): no optimizer state)
  record: dict  # scaler.json: columns, the training scaler, freq, marks, covariates, grid, ... (Series.record)
  stage: str  # the checkpoint loaded: "adapt" (stage 2) or "pretrain" (stage 1 / mtf)
  segments: int  # K
  horizon: int  # K * S
  conformal: dict | None = None  # {"levels", "multiplier" [V][T][D'], ...} (evaluation.py), if the run calibrated

  @property
  def scaler(self) -> Scaler:
    return Scaler.from_json(self.record)

  @property
  def model(self) -> nnx.Module:
    return self.state.model()

  @property
  def columns(self) -> list[str]:
    """The channels the model reads, the target last."""
    return list(self.record["columns"])

  @property
  def outputs(self) -> list[str]:
    """The channels a forecast returns: the target alone under MS, else every channel."""
    return self.columns[-1:] if self.cfg.data.features == "MS" else self.columns

  @property
  def covariates(self) -> list[str]:
    return list(self.record.get("covariates", []))

  @property
  def panel(self) -> bool:
    """Trained on a panel: many series, each forecast from its own history (data/panel.py)."""
    return bool(self.record.get("panel"))

  def forecast(self, batch: dict) -> np.ndarray:
    """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, T, F], "t0": [B]} -> [B, T, D] (standardised
    scale), at the matmul precision the run trained with."""
    step = steps.make_predict_step(segments=self.segments)
    with runtime.matmul_precision(self.cfg.matmul_precision):
      return np.asarray(step(self.state, batch))

  def history(self, df: pd.DataFrame, name: str = "the DataFrame") -> frames.History:
    """`df` through the training data's checks, with the training columns."""
    return frames.read_history(df, name, self.cfg.data, self.record)

  def predict(self, df: pd.DataFrame, future: pd.DataFrame | None = None, *, name: str = "the DataFrame"):
    """The T steps after `df`'s last row: columns date, the forecast channels (the target alone under MS) and per
    interval level lower/upper bounds ("OT_lower_80", ...), in original units; timestamps continue at the data's
    frequency. A long `df` (unique_id, ds, y) gives a long result: unique_id, ds, forecast, lower_80, ...
    `future`: the future covariates' values over those T steps (a table with `date` or `ds` and their columns),
    required when the run has any. `name` names `df` in error messages."""
    return self.forecast_table(df, future=future, name=name).drop(columns="origin")

  def backtest(self, df: pd.DataFrame, stride: int | None = None, *, name: str = "the DataFrame") -> pd.DataFrame:
    """Rolling-origin forecasts of `df`'s own rows: from every `stride`-th row (default T) with T known rows after
    it, with their errors and bounds (frames.backtest_table), in original units."""
    if self.panel:
      return panel_table(self, df, name, every=stride or self.horizon, backtest=True)
    hist = self.history(df, name)
    seq_len, stride = self.cfg.data.seq_len, stride or self.horizon
    ends = list(range(seq_len, len(hist.values) - self.horizon + 1, stride))
    if not ends:
      raise DataError(
        f"{name} has {len(hist.values)} rows; a backtest needs at least seq_len + T = {seq_len + self.horizon}"
      )
    futures = [hist.dates[e : e + self.horizon] for e in ends]
    pred, bands = self.forecasts(hist, ends, futures, None, name)
    return frames.backtest_table(hist, ends, futures, pred, bands, self.outputs)

  def forecast_table(self, df: pd.DataFrame, *, future: pd.DataFrame | None = None, roll: bool = False,
                     name: str = "the DataFrame") -> pd.DataFrame:  # fmt: skip
    """A wide table (the forecast CLI's): origin (the last known row), date, the forecast channels and their
    bounds, for the T steps after `df`'s last row, and with `roll` also from every T-th row (a backtest); a long
    `df` gives it long (origin, unique_id, ds, forecast, bounds); a panel's run forecasts each series from its own
    last date."""
    if self.panel:
      return panel_table(self, df, name, every=self.horizon if roll else None, backtest=False)
    hist = self.history(df, name)
    seq_len, t, grid = self.cfg.data.seq_len, self.horizon, self.record.get("grid")
    ends = (list(range(seq_len, len(hist.values), t)) if roll else []) + [len(hist.values)]
    futures = []
    for end in ends:  # past the table's end the calendar continues
      known = hist.dates[end : end + t]
      futures.append(
        np.concatenate([known, data.following(hist.dates, t - len(known), grid)]) if len(known) < t else known
      )
    pred, bands = self.forecasts(hist, ends, futures, future, name)
    wide = frames.wide_table(pred, bands, self.outputs, hist.dates, ends, futures)
    return frames.long_table(wide, self.outputs, bands) if hist.long else wide

  def forecasts(self, hist: frames.History, ends: list, futures: list, future, name: str) -> tuple:
    """-> (forecasts [n, T, D'] of the output channels in original units, their interval bounds) from the
    windows of the history ending at `ends`, for the T dates `futures[i]` each (covariates from the history, else
    from `future`)."""
    known = frames.covariates_at(hist, self.covariates, future, futures, name)
    d, out, scales = len(self.outputs), [], []
    batches = frames.lookback_batches(hist, ends, futures, known, self.record, seq_len=self.cfg.data.seq_len,
                                      batch_size=self.cfg.data.eval_batch_size)  # fmt: skip
    for batch in batches:
      out.append(self.forecast(batch)[..., -d:])
      scales.append(steps.lookback_scale(batch["x"][..., -d:]))
    pred = self.scaler.unscale(np.concatenate(out), d)
    return pred, bands(self.conformal, pred, np.concatenate(scales), self.scaler.std[-d:])


def panel_table(run: Run, df: pd.DataFrame, name: str, *, every: int | None, backtest: bool) -> pd.DataFrame:
  """A panel run's forecasts of the series of the long table `df` (panel_frames.origins): the long forecast
  table, or the backtest's."""
  lb, t = run.cfg.data.seq_len, run.horizon
  need, what = (lb + t, "look-back + horizon") if backtest else (lb, "the look-back")
  hist = panel_frames.read_history(df, name, run.cfg.data, run.record, need=need, what=what)
  pairs, futures = panel_frames.origins(hist, run.record, seq_len=lb, horizon=t, every=every, backtest=backtest)
  out, scales = [], []
  for batch in panel_frames.lookback_batches(hist, run.record, pairs, seq_len=lb, horizon=t,
                                             batch_size=run.cfg.data.eval_batch_size):  # fmt: skip
    out.append(run.forecast(batch))  # [b, T, 1]
    scales.append(steps.lookback_scale(batch["x"]))
  s = hist.index[[k for k, _ in pairs]]
  std = run.scaler.std[s][:, None, :]  # [n, 1, 1]: each window's own series
  pred = np.concatenate(out) * std + run.scaler.mean[s][:, None, :]
  table = panel_frames.backtest_table if backtest else panel_frames.forecast_table
  return table(hist, pairs, futures, pred, bands(run.conformal, pred, np.concatenate(scales), std))


def bands(conformal: dict | None, pred: np.ndarray, scale: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
  """Interval bounds for forecasts [n, T, D'] with look-back scales [n, D'] and the scaler's std (of the forecast
  channels [D'], or each window's [n, 1, D']): {"lower_80": [n, T, D'], "upper_80": ...} in original units
  (evaluation.py)."""
  if not conformal:
    return {}
  out = {}
  for level, q in zip(conformal["levels"], np.asarray(conformal["multiplier"]), strict=True):
    pct, half = f"{100 * level:g}", q[None] * scale[:, None, :] * std  # [n, T, D']
    out[f"lower_{pct}"], out[f"upper_{pct}"] = pred - half, pred + half
  return out


def load_run(workdir) -> Run:
  """The selected state of the last stage that ran in `workdir` (stage 2 if present), with its scaler and, if the
  run calibrated them, its prediction intervals."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file() or not (workdir / "scaler.json").is_file():
    raise checkpointing.CheckpointError(
      f"{workdir} holds no finished training run (no config.json/scaler.json); pass the --workdir of a training run"
    )
  cfg = config_lib.from_json(json.loads((workdir / "config.json").read_text()))
  record = json.loads((workdir / "scaler.json").read_text())
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
  model = build(run_plan.model, channels=len(record["columns"]), marks=record["marks"],
                covariates=len(record.get("covariates", [])), pred_len=stage.pred_len,
                segments=stage.segments if adapting else 0, rngs=nnx.Rngs(0))  # fmt: skip
  if adapting and cfg.adapt.selection == "per_segment":
    adapters.bake(model)  # saved as fixed per-segment deltas
  checkpointing.restore_into(model, checkpointing.stage_dir(workdir, stage.name))
  conformal = workdir / "conformal.json"
  calibration = json.loads(conformal.read_text()) if conformal.is_file() else None
  if calibration is not None and len(calibration.get("multiplier", [[]])[0]) != stage.window:
    calibration = None  # calibrated for another stage's horizon (a pretrain-only run later adapted)
  state = TrainState.create(model, stage.name)
  return Run(cfg, state, record, stage.name, stage.segments, stage.window, calibration)
