"""Every score of a model, in one place: the validation score that early stopping and selection read, the test
pass, and the split-conformal prediction intervals calibrated on the validation windows. The eval step's device
sums become numbers here, with one host read per evaluated split.

    scores = validate(eval_step, states, windows, evaluation, segments, batch_size=B, epoch=e)   # fit
    test = evaluate_split(model, stage, series=series, evaluation=evaluation)                    # train, once
    calibration = calibrate(model, stage, series=series, evaluation=evaluation)  # -> <workdir>/conformal.json
    coverage(model, stage, calibration, series=series, evaluation=evaluation)    # -> results.json

Intervals. The score of a window is its residual in units of its own look-back's spread: |y - y_hat| / sigma,
with sigma the standard deviation of the window's input over the look-back, per channel (standardised units, at
least SCALE_FLOOR). For a level 1 - a, the multiplier q of step t and channel d is the ceil((n + 1)(1 - a))-th
smallest of the n validation scores at (t, d), and a forecast's band is y_hat +- q * sigma of its own input. If
validation and test windows are exchangeable, the truth lies within it with probability at least 1 - a, step by
step (Vovk et al. 2005; locally weighted as Lei et al. 2018).

Why the look-back's spread: a split's errors follow its volatility, and the splits of a series differ in it.
On ETTh1 the validation months are rougher than the test months (val MSE about twice the test MSE): plain
residual quantiles (sigma = 1) covered 88.7% / 97.1% of the test split at 80% / 95%, the weighted bands 83.4% /
96.1%, and narrower (tests/test_api.py's run). The validation split also chose the model, which makes the bands
slightly optimistic; results.json reports the coverage they reach on the test split.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax import data, plan, sharding, steps
from mola_jax.plan import Evaluation

MAX_CALIBRATION_WINDOWS = 2000  # evenly spaced over the split: bounds host memory at long horizons
SCALE_FLOOR = 0.05  # standardised units: a flat look-back (a constant channel) still gets a band

# ---------------------------------------------------------------------------------------------------------------
# Scores: every window of a split (or the official protocol's batches), summed on the device, read once.


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


def batch_sums(program, states, windows: data.DeviceWindows, idx: np.ndarray, mask: np.ndarray) -> dict:
  """The eval chunk `program` (steps.make_eval_chunk) over batches idx, mask [R, n, B], EVAL_CHUNK at a time ->
  per-batch sums on the device {"sq": [n, R, T], "abs": [n, R, T], "count": [n, R]}."""
  r, n, b = idx.shape
  e = steps.EVAL_CHUNK
  calls = -(-n // e)
  pad = lambda a: np.concatenate([a, np.zeros((r, calls * e - n, b), a.dtype)], axis=1)
  idx, mask = pad(idx), pad(mask)
  series = windows.arrays
  parts = []
  for c in range(calls):
    cut = slice(c * e, (c + 1) * e)
    valid = np.arange(c * e, (c + 1) * e) < n
    parts.append(program(states, series, *sharding.replicate((idx[:, cut], mask[:, cut], valid))))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:n], *parts)


def evaluate(program, states, windows: data.DeviceWindows, batch_size: int, segments: int, runs: int = 1, *,
             target_only: bool = False) -> list:  # fmt: skip
  """Every window of a split once, in order (the last batch padded and masked), for each of `runs` runs stacked in
  `states` -> their metrics. One host read."""
  idx, mask = data.eval_order(windows, batch_size)  # [n, B]
  sums = batch_sums(program, states, windows, np.stack([idx] * runs), np.stack([mask] * runs))
  total = sharding.fetch(jax.tree.map(lambda x: x.sum(axis=0), sums))  # [R, T], [R]
  channels = scored_channels(windows, target_only)
  return [summarise(steps.unstack(total, i), segments, channels) for i in range(runs)]


def evaluate_official(program, states, windows, batch_size: int, segments: int, *, seeds, epoch: int,
                      target_only: bool = False) -> list:  # fmt: skip
  """The official code's validation score (data.val_protocol="official") of each run (its own seed): shuffled
  batches of `batch_size` drawn by (seed, epoch), the incomplete last batch dropped, and each number the mean over
  batches of the batch's own mean (per step, so per segment too). One host read, as `evaluate`."""
  idx = np.stack([data.val_order(windows, batch_size, seed=seed, epoch=epoch) for seed in seeds])  # [R, n, B]
  sums = batch_sums(program, states, windows, idx, np.ones(idx.shape, bool))
  n, channels = idx.shape[1], scored_channels(windows, target_only)
  if "scored" in sums:  # a batch's mean over its observed values: as if each batch held one window of one channel
    per_batch, channels = jnp.maximum(sums["scored"], 1), 1
  else:
    per_batch = sums["count"][..., None]
  means = sharding.fetch({k: (sums[k] / per_batch).sum(axis=0) for k in ("sq", "abs")})  # [R, T]: sum of means
  # As sums of `n` "windows", each holding one batch's means: summarise divides by that count.
  return [
    summarise({"sq": means["sq"][i], "abs": means["abs"][i], "count": n}, segments, channels)
    | {"windows": n * batch_size}
    for i in range(len(seeds))
  ]


def validate(program, states, windows, evaluations, segments: int, *, batch_size: int, epoch: int) -> list:
  """The validation score of each run (evaluations: their settings) that early stopping and selection read,
  under the protocol: "full" (every window in order, one global mean: `evaluate`) or "official"
  (`evaluate_official` with the stage's training batch size). The test pass always uses `evaluate`."""
  ev = evaluations[0]
  if ev.protocol == "official":
    seeds = [e.seed for e in evaluations]
    return evaluate_official(program, states, windows, batch_size, segments, seeds=seeds, epoch=epoch,
                             target_only=ev.target_only)  # fmt: skip
  return evaluate(program, states, windows, ev.batch_size, segments, runs=len(evaluations), target_only=ev.target_only)


def evaluate_split(model: nnx.Module, stage: plan.Stage, *, series, evaluation: Evaluation, split="test") -> dict:
  """One pass over every window of `split`, in order: the test split once, after training (never used for
  selection). The eval program is validation's (make_eval_chunk is cached); the split's rows are a new shape."""
  graphdef, states = steps.eval_states(model, stage.name)
  windows = data.DeviceWindows(data.window_source(series, split, evaluation.seq_len, stage.window))
  program = steps.make_eval_chunk(graphdef, segments=stage.segments, seq_len=windows.seq_len,
                                  pred_len=windows.pred_len, compute_dtype=evaluation.compute_dtype,
                                  target_only=evaluation.target_only)  # fmt: skip
  return evaluate(program, steps.stack([states]), windows, evaluation.batch_size, stage.segments,
                  target_only=evaluation.target_only)[0]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Prediction intervals.


def lookback_scale(x: np.ndarray) -> np.ndarray:
  """x [n, L, D] (standardised) -> sigma [n, D]: each window's per-channel spread over its look-back."""
  return np.maximum(x.std(axis=1), SCALE_FLOOR)


def forecasts(model: nnx.Module, stage: plan.Stage, *, series, evaluation: Evaluation, split: str, max_windows=None):
  """Yield (forecast [b, T, D'], truth [b, T, D'], look-back scale [b, D'], observed [b, T, D'] or None) on the
  host (standardised units), for the windows of `split` in order (at most `max_windows`, evenly spaced); D' = the
  scored channels (the target alone under MS), observed = which truths are real (None: all of them)."""
  graphdef, states = steps.eval_states(model, stage.name)
  step = steps.make_predict_step(graphdef, segments=stage.segments, compute_dtype=evaluation.compute_dtype)
  windows = data.DeviceWindows(data.window_source(series, split, evaluation.seq_len, stage.window))
  picked = np.arange(windows.size)
  if max_windows is not None and windows.size > max_windows:
    picked = np.unique(np.linspace(0, windows.size - 1, max_windows).astype(np.int64))
  size = evaluation.batch_size
  for start in range(0, len(picked), size):
    idx = picked[start : start + size]
    padded = np.resize(idx, size)  # one static batch shape: one compiled program
    batch = windows.take(padded.astype(np.int32))
    pred, y, observed = steps.scored(batch, step(states, batch), evaluation.target_only)
    x = batch["x"][..., -pred.shape[-1] :]  # the scored channels are the last ones
    pred, y, observed, x = sharding.fetch((pred, y, observed, x))  # on every process
    n = len(idx)
    yield pred[:n], y[:n], lookback_scale(x[:n]), None if observed is None else observed[:n]


def calibrate(model: nnx.Module, stage: plan.Stage, *, series, evaluation: Evaluation) -> dict:
  """-> {"levels": [...], "multiplier": [L][T][D] (of the look-back scale), "scale_floor", "windows": n} from the
  validation split."""
  levels = evaluation.intervals
  windows = forecasts(
    model, stage, series=series, evaluation=evaluation, split="val", max_windows=MAX_CALIBRATION_WINDOWS
  )
  parts = [(np.abs(p - y) / scale[:, None, :], obs) for p, y, scale, obs in windows]
  scores = np.concatenate([s for s, _ in parts])  # [n, T, D']
  n = len(scores)
  if all(obs is None for _, obs in parts):
    ranked = np.sort(scores, axis=0)
    q = np.stack([ranked[min(math.ceil((n + 1) * level), n) - 1] for level in levels])  # [levels, T, D']
  else:
    q = _ranked_observed(scores, np.concatenate([o for _, o in parts]), levels)
  return {"levels": list(levels), "multiplier": q.tolist(), "scale_floor": SCALE_FLOOR, "windows": n}


def _ranked_observed(scores: np.ndarray, observed: np.ndarray, levels) -> np.ndarray:
  """The conformal multipliers [levels, T, D'] from the scores of observed truths only: at each (t, d) the
  ceil((m + 1) level)-th smallest of its m real scores (a filled truth has no score). A (t, d) with none takes
  the level's largest multiplier."""
  ranked = np.sort(np.where(observed, scores, np.nan), axis=0)  # NaN last
  m = observed.sum(axis=0)  # [T, D']
  out = []
  for level in levels:
    k = np.clip(np.minimum(np.ceil((m + 1) * level), m) - 1, 0, None).astype(np.int64)
    q = np.take_along_axis(ranked, k[None], axis=0)[0]
    out.append(np.where(m > 0, q, np.nanmax(q) if np.isfinite(q).any() else 1.0))
  return np.stack(out)


def coverage(model: nnx.Module, stage: plan.Stage, calibration: dict, *, series, evaluation: Evaluation) -> dict:
  """Empirical coverage on the test split, per level: the fraction of (window, step, channel) whose truth lies
  inside the band, and the band's mean width (standardised units)."""
  q = np.asarray(calibration["multiplier"])  # [L, T, D]
  inside, width, total = np.zeros(len(q)), np.zeros(len(q)), 0
  for pred, y, scale, observed in forecasts(model, stage, series=series, evaluation=evaluation, split="test"):
    half = q[:, None] * scale[None, :, None, :]  # [L, b, T, D']
    real = np.ones(pred.shape, bool) if observed is None else observed  # a filled truth is not scored
    inside += ((np.abs(pred - y)[None] <= half) & real).sum(axis=(1, 2, 3))
    width += 2 * (half * real).sum(axis=(1, 2, 3))
    total += int(real.sum())
  return {
    f"{level:g}": {"coverage": float(inside[i] / total), "mean_width": float(width[i] / total)}
    for i, level in enumerate(calibration["levels"])
  }
