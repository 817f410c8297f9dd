"""Split-conformal prediction intervals: calibrated on the validation windows' residuals of the selected model, per
forecast step and channel, with no retraining (Vovk et al. 2005; locally weighted as Lei et al. 2018).

The score of a window is its residual in units of its own look-back's spread: |y - y_hat| / sigma, with sigma the
standard deviation of the window's input over the look-back, per channel (standardised units, at least
SCALE_FLOOR). For a level 1 - a, the multiplier q of step t and channel d is the ceil((n + 1)(1 - a))-th smallest
of the n validation scores at (t, d), and a forecast's band is y_hat +- q * sigma of its own input. If validation
and test windows are exchangeable, the truth lies within it with probability at least 1 - a, step by step.

Why the look-back's spread: a split's errors follow its volatility, and the splits of a series differ in it.
On ETTh1 the validation months are rougher than the test months (val MSE about twice the test MSE): plain
residual quantiles (sigma = 1) covered 88.7% / 97.1% of the test split at 80% / 95%, the weighted bands 83.4% /
96.1%, and narrower (tests/test_api.py's run). The validation split also chose the model, which makes the bands
slightly optimistic; results.json reports the coverage they reach on the test split.

    calibration = calibrate(model, stage, series=series, cfg=cfg)   # -> <workdir>/conformal.json
    coverage(model, stage, calibration, series=series, cfg=cfg)      # -> results.json "interval_coverage"
"""

from __future__ import annotations

import math

import numpy as np
from flax import nnx

from mola_jax import data, plan, sharding, steps

MAX_CALIBRATION_WINDOWS = 2000  # evenly spaced over the split: bounds host memory at long horizons
SCALE_FLOOR = 0.05  # standardised units: a flat look-back (a constant channel) still gets a band


def lookback_scale(x: np.ndarray) -> np.ndarray:
  """x [n, L, D] (standardised) -> sigma [n, D]: each window's per-channel spread over its look-back."""
  return np.maximum(x.std(axis=1), SCALE_FLOOR)


def forecasts(model: nnx.Module, stage: plan.Stage, *, series, cfg, split: str, max_windows: int | None = None):
  """Yield (forecast [b, T, D], truth [b, T, D], look-back scale [b, D]) on the host (standardised units), for the
  windows of `split` in order (at most `max_windows`, evenly spaced)."""
  graphdef, states = steps.eval_states(model, stage.name)
  step = steps.make_predict_step(graphdef, segments=stage.segments, compute_dtype=cfg.get("compute_dtype"))
  windows = data.DeviceWindows(data.window_source(series, split, cfg.data.seq_len, stage.window))
  picked = np.arange(windows.size)
  if max_windows is not None and windows.size > max_windows:
    picked = np.unique(np.linspace(0, windows.size - 1, max_windows).astype(np.int64))
  for start in range(0, len(picked), cfg.data.eval_batch_size):
    idx = picked[start : start + cfg.data.eval_batch_size]
    padded = np.resize(idx, cfg.data.eval_batch_size)  # one static batch shape: one compiled program
    batch = windows.take(padded.astype(np.int32))
    pred, y, x = sharding.fetch((step(states, batch), batch["y"], batch["x"]))  # on every process
    n = len(idx)
    yield pred[:n], y[:n], lookback_scale(x[:n])


def calibrate(model: nnx.Module, stage: plan.Stage, *, series, cfg, levels=None) -> dict:
  """-> {"levels": [...], "multiplier": [L][T][D] (of the look-back scale), "scale_floor", "windows": n} from the
  validation split."""
  levels = tuple(cfg.intervals if levels is None else levels)
  windows = forecasts(model, stage, series=series, cfg=cfg, split="val", max_windows=MAX_CALIBRATION_WINDOWS)
  scores = np.concatenate([np.abs(p - y) / scale[:, None, :] for p, y, scale in windows])  # [n, T, D]
  n = len(scores)
  ranked = np.sort(scores, axis=0)
  q = [ranked[min(math.ceil((n + 1) * level), n) - 1] for level in levels]  # each [T, D]
  return {"levels": list(levels), "multiplier": np.stack(q).tolist(), "scale_floor": SCALE_FLOOR, "windows": n}


def coverage(model: nnx.Module, stage: plan.Stage, calibration: dict, *, series, cfg) -> dict:
  """Empirical coverage on the test split, per level: the fraction of (window, step, channel) whose truth lies
  inside the band, and the band's mean width (standardised units)."""
  q = np.asarray(calibration["multiplier"])  # [L, T, D]
  inside, width, total = np.zeros(len(q)), np.zeros(len(q)), 0
  for pred, y, scale in forecasts(model, stage, series=series, cfg=cfg, split="test"):
    half = q[:, None] * scale[None, :, None, :]  # [L, b, T, D]
    inside += (np.abs(pred - y)[None] <= half).sum(axis=(1, 2, 3))
    width += 2 * half.sum(axis=(1, 2, 3))
    total += pred.size
  return {
    f"{level:g}": {"coverage": float(inside[i] / total), "mean_width": float(width[i] / total)}
    for i, level in enumerate(calibration["levels"])
  }
