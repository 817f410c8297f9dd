"""Every score of a model, in one place: the validation score that early stopping and selection read, the test
pass, and the split-conformal prediction intervals calibrated on the validation windows. The eval step's device
sums become numbers here, with one host read per evaluated split.

    idx, mask = val_batches(windows, evaluation, batch_size=B, epoch=e)           # fit, every epoch
    val = scores(batch_sums(program, state, windows.arrays, idx, mask), evaluation, segments=K, channels=D)
    calibration = calibrate(state, stage, series=series, evaluation=evaluation)  # -> <workdir>/conformal.json
    test = score_split(state, stage, series=series, evaluation=evaluation, calibration=calibration)  # once

Intervals. The score of a window is its residual in units of its own look-back's spread: |y - y_hat| / sigma,
with sigma the standard deviation of the window's input over the look-back, per channel (standardised units, at
least steps.SCALE_FLOOR). For a level 1 - a, the multiplier q of step t and channel d is the ceil((n + 1)(1 - a))-th
smallest of the n validation scores at (t, d), and a forecast's band is y_hat +- q * sigma of its own input. If
validation and test windows are exchangeable, the truth lies within it with probability at least 1 - a, step by
step (Vovk et al. 2005; locally weighted as Lei et al. 2018). The test pass scores the forecasts and their bands'
coverage in the same pass over the test split.

A panel's test pass (data/panel.py) also sums every series' errors on its own (steps.series_sums): results.json
then holds each series' MSE and MAE (standardised) and M4's scale-free MASE and sMAPE, and their pooled values
(`series_scores`).

Why the look-back's spread: a split's errors follow its volatility, and the splits of a series differ in it.
On ETTh1 the validation months are rougher than the test months (val MSE about twice the test MSE): plain
residual quantiles (sigma = 1) covered 88.7% / 97.1% of the test split at 80% / 95%, the weighted bands 83.4% /
96.1%, and narrower (tests/test_api.py's run). The validation split also chose the model, which makes the bands
slightly optimistic; results.json reports the coverage they reach on the test split.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mola_jax import data, distributed, plan, sharding, steps
from mola_jax.plan import Evaluation
from mola_jax.state import TrainState

MAX_CALIBRATION_WINDOWS = 2000  # evenly spaced over the split: bounds host memory at long horizons


def summarise(acc: dict, segments: int, channels: int) -> dict:
  """One run's sums (host numpy: "sq", "abs" [T], "count", and "scored" [T] where values were filled in) ->
  metrics. Global element means over the scored values (docs/protocol.md §7): every window x the scored
  `channels`, or the observed values alone ("scored")."""
  n = int(acc["count"])
  if "scored" in acc:  # filled values are left out: each mean over the values actually observed
    counts = np.asarray(acc["scored"], np.float64)  # [T]
    per_step, by_segment = acc["sq"] / np.maximum(counts, 1), lambda a: a.reshape(segments, -1).sum(axis=1)
    per_segment = by_segment(acc["sq"]) / np.maximum(by_segment(counts), 1)
    total = max(counts.sum(), 1)
  else:
    per_step = acc["sq"] / (n * channels)  # [T]
    per_segment, total = per_step.reshape(segments, -1).mean(axis=1), n * per_step.size * channels
  return {
    "mse": float(acc["sq"].sum() / total),
    "mae": float(acc["abs"].sum() / total),
    "per_step_mse": per_step.tolist(),
    "per_segment_mse": per_segment.tolist(),
    "windows": n,
  }


def scored_channels(windows: data.DeviceWindows, target_only: bool) -> int:
  """The channels a score reads: the target alone under MS, else every one."""
  return 1 if target_only else windows.values.shape[-1]


def batch_sums(program, state, series: dict, idx: np.ndarray, mask: np.ndarray, *extra, place=None) -> dict:
  """The eval chunk `program` (steps.make_eval_chunk) over batches idx, mask [..., n, B], EVAL_CHUNK at a time ->
  per-batch sums on the device {"sq": [..., n, T], ...} (a leading run axis, if any, as the program's). `extra`:
  the program's further arguments (the test pass's interval bands); `place`: how the host arrays of a call go to
  the devices (default: replicated on the active mesh)."""
  place = place or sharding.replicate
  n, e = idx.shape[-2], steps.EVAL_CHUNK
  calls = -(-n // e)
  pad = lambda a: np.concatenate([a, np.zeros((*a.shape[:-2], calls * e - n, a.shape[-1]), a.dtype)], axis=-2)
  idx, mask = pad(idx), pad(mask)
  parts = []
  for c in range(calls):
    cut = (Ellipsis, slice(c * e, (c + 1) * e), slice(None))
    valid = np.arange(c * e, (c + 1) * e) < n
    parts.append(program(state, series, *place((idx[cut], mask[cut], valid, *extra))))
  axis = idx.ndim - 2  # the batches' axis of every sum
  return jax.tree.map(lambda *xs: jax.lax.slice_in_dim(jnp.concatenate(xs, axis=axis), 0, n, axis=axis), *parts)


def val_batches(windows: data.DeviceWindows, evaluation: Evaluation, batch_size: int, epoch: int):
  """The validation batches (idx, mask) [n, B] under the protocol: "full", every window in order (the last batch
  padded and masked, eval batch size); "official", the official code's shuffled batches of the stage's training
  `batch_size`, drawn by (seed, epoch), the incomplete last one dropped."""
  if evaluation.protocol == "official":
    idx = data.val_order(windows, batch_size, seed=evaluation.seed, epoch=epoch)
    return windows.rows(idx), np.ones(idx.shape, bool)
  idx, mask = data.eval_order(windows, evaluation.batch_size)
  return windows.rows(idx), mask


def scores(sums: dict, evaluation: Evaluation, *, segments: int, channels: int) -> dict:
  """One run's per-batch sums (batch_sums) -> its metrics, under the protocol: "full" (one global mean) or
  "official" (each number the mean over batches of the batch's own mean). One host read."""
  if evaluation.protocol != "official":
    return summarise(distributed.fetch(jax.tree.map(lambda x: x.sum(axis=0), sums)), segments, channels)
  n = sums["count"].shape[0]
  if "scored" in sums:  # a batch's mean over its observed values: as if each batch held one window of one channel
    per_batch, channels = jnp.maximum(sums["scored"], 1), 1
  else:
    per_batch = sums["count"][..., None]
  means = distributed.fetch({k: (sums[k] / per_batch).sum(axis=0) for k in ("sq", "abs")})  # sum of the means
  # As sums of `n` "windows", each holding one batch's means: summarise divides by that count.
  windows = int(distributed.fetch(sums["count"]).sum())
  return summarise({"sq": means["sq"], "abs": means["abs"], "count": n}, segments, channels) | {"windows": windows}


def split_windows(series, split: str, stage: plan.Stage, evaluation: Evaluation) -> data.DeviceWindows:
  return data.DeviceWindows(data.window_source(series, split, evaluation.seq_len, stage.window))


def score_split(state: TrainState, stage: plan.Stage, *, series, evaluation: Evaluation, split: str = "test",
                calibration=None) -> dict:  # fmt: skip
  """One pass over every window of `split`, in order: the test split once, after training (never used for
  selection); the scores, and with a `calibration` the coverage of its bands (calibrate). A panel's also holds
  its per-series scores ("per_series", series_scores)."""
  windows = split_windows(series, split, stage, evaluation)
  opts = dataclasses.replace(plan.eval_options(stage, evaluation), series=windows.series)
  program = steps.make_eval_chunk(opts, seq_len=windows.seq_len, pred_len=windows.pred_len, layout=sharding.current())
  idx, mask = data.eval_order(windows, evaluation.batch_size)
  bands = () if calibration is None else (np.asarray(calibration["multiplier"], np.float32),)
  sums = batch_sums(program, state.forecaster(), windows.arrays, windows.rows(idx), mask, *bands)
  channels = scored_channels(windows, evaluation.target_only)
  kept = {k: v for k, v in sums.items() if k not in ("inside", "width") and not k.startswith("series_")}
  out = scores(kept, evaluation, segments=stage.segments, channels=channels)
  if windows.series:
    out["per_series"] = series_scores(sums, series)
  if calibration is not None:
    inside = distributed.fetch(sums["inside"]).sum(axis=0, dtype=np.int64)  # [V]
    width = distributed.fetch(sums["width"]).sum(axis=0, dtype=np.float64)
    scored = (
      distributed.fetch(sums["scored"]).sum() if "scored" in sums else out["windows"] * windows.pred_len * channels
    )
    total = float(scored)  # the scored (window, step, channel) values
    out["interval_coverage"] = {
      f"{level:g}": {"coverage": float(inside[i] / total), "mean_width": float(width[i] / total)}
      for i, level in enumerate(calibration["levels"])
    }
  return out


def series_scores(sums: dict, panel: data.Panel) -> dict:
  """A panel's per-series sums (steps.series_sums, per batch) -> {"ids", "mse", "mae", "mase", "smape": [N] each,
  "pooled": {...}}. MSE and MAE on the standardised scale; sMAPE = the mean of 200 |y - y_hat| / (|y| + |y_hat|)
  and MASE = the mean |y - y_hat| over the seasonal naive MAE of the series' own training part (data/panel.py
  `naive_scale`), both in original units (M4's definitions, over every scored step of the series' windows).
  Pooled: MSE and MAE over every scored value; MASE and sMAPE the mean over series (M4's), a series without a
  MASE scale (a constant training part) left out of MASE's (null in its list)."""
  acc = distributed.fetch({k: v.sum(axis=0) for k, v in sums.items() if k.startswith("series_")})  # [N] each
  acc = {k: np.asarray(v, np.float64) for k, v in acc.items()}
  count = np.maximum(acc["series_count"], 1)
  mae = acc["series_abs"] / count
  per = {"mse": acc["series_sq"] / count, "mae": mae, "mase": mae * panel.scaler.std[:, 0] / panel.naive_scale,
         "smape": acc["series_smape"] / count}  # fmt: skip
  total = max(acc["series_count"].sum(), 1)
  pooled = {"mse": acc["series_sq"].sum() / total, "mae": acc["series_abs"].sum() / total,
            "mase": np.nanmean(per["mase"]) if np.isfinite(per["mase"]).any() else math.nan,
            "smape": per["smape"].mean()}  # fmt: skip
  number = lambda v: float(v) if math.isfinite(v) else None
  return {"ids": list(panel.ids), **{k: [number(v) for v in a] for k, a in per.items()},
          "pooled": {k: number(v) for k, v in pooled.items()}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Prediction intervals.


def val_forecasts(state: TrainState, stage: plan.Stage, *, series, evaluation: Evaluation, max_windows=None):
  """Yield (forecast [b, T, D'], truth [b, T, D'], look-back scale [b, D'], observed [b, T, D'] or None) on the
  host (standardised units), for the validation windows in order (at most `max_windows`, evenly spaced); D' = the
  scored channels (the target alone under MS), observed = which truths are real (None: all of them)."""
  step = steps.make_predict_step(segments=stage.segments, compute_dtype=evaluation.compute_dtype)
  opts, windows = plan.eval_options(stage, evaluation), split_windows(series, "val", stage, evaluation)
  picked = np.arange(windows.size)
  if max_windows is not None and windows.size > max_windows:
    picked = np.unique(np.linspace(0, windows.size - 1, max_windows).astype(np.int64))
  size, state = evaluation.batch_size, state.forecaster()
  for start in range(0, len(picked), size):
    idx = picked[start : start + size]
    padded = np.resize(idx, size)  # one static batch shape: one compiled program
    batch = windows.take(padded.astype(np.int32))
    pred, y, observed = steps.scored(batch, step(state, batch), opts)
    x = batch["x"][..., -pred.shape[-1] :]  # the scored channels are the last ones
    pred, y, observed, x = distributed.fetch((pred, y, observed, x))  # on every process
    n = len(idx)
    yield pred[:n], y[:n], steps.lookback_scale(x[:n]), None if observed is None else observed[:n]


def calibrate(state: TrainState, stage: plan.Stage, *, series, evaluation: Evaluation) -> dict:
  """-> {"levels": [...], "multiplier": [V][T][D'] (of the look-back scale), "scale_floor", "windows": n} from the
  validation split."""
  levels = evaluation.intervals
  windows = val_forecasts(state, stage, series=series, evaluation=evaluation, max_windows=MAX_CALIBRATION_WINDOWS)
  parts = [(np.abs(p - y) / scale[:, None, :], obs) for p, y, scale, obs in windows]
  scores_ = np.concatenate([s for s, _ in parts])  # [n, T, D']
  n = len(scores_)
  if all(obs is None for _, obs in parts):
    ranked = np.sort(scores_, axis=0)
    q = np.stack([ranked[min(math.ceil((n + 1) * level), n) - 1] for level in levels])  # [V, T, D']
  else:
    q = _ranked_observed(scores_, np.concatenate([o for _, o in parts]), levels)
  return {"levels": list(levels), "multiplier": q.tolist(), "scale_floor": steps.SCALE_FLOOR, "windows": n}


def _ranked_observed(scores_: np.ndarray, observed: np.ndarray, levels) -> np.ndarray:
  """The conformal multipliers [V, T, D'] from the scores of observed truths only: at each (t, d) the
  ceil((m + 1) level)-th smallest of its m real scores (a filled truth has no score). A (t, d) with none takes
  the level's largest multiplier."""
  ranked = np.sort(np.where(observed, scores_, np.nan), axis=0)  # NaN last
  m = observed.sum(axis=0)  # [T, D']
  out = []
  for level in levels:
    k = np.clip(np.minimum(np.ceil((m + 1) * level), m) - 1, 0, None).astype(np.int64)
    q = np.take_along_axis(ranked, k[None], axis=0)[0]
    out.append(np.where(m > 0, q, np.nanmax(q) if np.isfinite(q).any() else 1.0))
  return np.stack(out)
