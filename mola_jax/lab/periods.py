"""Data-driven segment lengths: the series' dominant periods, found on the training split only, and the segment
lengths S they suggest for a horizon T (reproduce.segment_options="auto").

A segment of whole periods starts every segment at the same phase of the cycle, so the one stage-1 model meets
the same shape in every segment; whole days helped MoLA on ETTh1 (docs/results.md). The candidates are the
divisors S of T that are whole multiples of a detected period with 2 <= K = T / S <= max_segments (at most
`max_auto` of them, K nearest the paper's 4), besides the config's own options; reproduce picks among them on
validation.

    periods = dominant_periods(train_values, max_period=360)   # [24] for ETTh1 (hours: a day)
    candidates(96, periods, paper=(24, 32))                     # -> (24, 32, 48)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter1d

MIN_STRENGTH = 0.2  # the mean autocorrelation a period needs at its lag
MIN_PROMINENCE = 0.05  # and how far it must rise above the lowest autocorrelation at a shorter lag
PAPER_SEGMENTS = 4  # the paper's K (T = 96, S = 24): auto candidates are ranked by how far their K is from it


def autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
  """values [N, D] -> [max_lag + 1]: the autocorrelation at lags 0 ... max_lag per channel (FFT, zero-padded so
  the correlation is linear; biased estimator), averaged over the channels that vary."""
  x = np.asarray(values, np.float64)
  x = x - x.mean(axis=0)
  var = (x**2).sum(axis=0)
  x = x[:, var > 0]
  if x.shape[1] == 0:
    return np.r_[1.0, np.zeros(max_lag)]
  spec = np.fft.rfft(x, n=2 * len(x), axis=0)
  acf = np.fft.irfft(spec * np.conj(spec), axis=0)[: max_lag + 1] / var[var > 0]
  return acf.mean(axis=1)


def dominant_periods(values: np.ndarray, max_period: int = 360, top: int = 3) -> list[int]:
  """The strongest periods p <= max_period of a series values [N, D] (e.g. the training split): lags p >= 2
  where the mean autocorrelation of the detrended series has a local maximum of at least MIN_STRENGTH that rises
  MIN_PROMINENCE above its minimum over lags 1 ... p. The trend (a centred moving average over 2 * max_period + 1
  steps) is removed first: a slow drift would otherwise hide every cycle under one decaying curve. A multiple of
  a period found already counts only where it stands MIN_PROMINENCE above its neighbouring multiples (a week of
  hours above 6 and 8 days), not as a mere echo. Strongest first, at most `top`; [] for a series without a cycle."""
  n = len(values)
  window = min(2 * max_period + 1, max(3, (n // 3) | 1))
  x = np.asarray(values, np.float64)
  x = x - uniform_filter1d(x, size=window, axis=0, mode="nearest")
  max_lag = min(2 * max_period, n // 3)  # past max_period too: a period's echo is compared with the next multiple
  if max_lag < 3:
    return []
  acf = autocorrelation(x, max_lag)
  peaks = [
    p
    for p in range(2, min(max_period, max_lag - 1) + 1)
    if acf[p] >= acf[p - 1] and acf[p] > acf[p + 1] and acf[p] >= MIN_STRENGTH
    and acf[p] - acf[1 : p + 1].min() >= MIN_PROMINENCE
  ]  # fmt: skip
  found: list[int] = []
  for p in sorted(peaks, key=lambda p: -acf[p]):
    if any(abs(p - q) <= max(1, q // 50) for q in found):
      continue  # a shoulder of a period found already
    base = next((q for q in found if p % q == 0), None)
    if base is not None and acf[p] - max(acf[p - base], acf[min(p + base, max_lag)]) < MIN_PROMINENCE:
      continue  # an echo of a period found already
    found.append(p)
    if len(found) == top:
      break
  return found


def candidates(horizon: int, periods: list[int], paper=(), max_segments: int = 8, max_auto: int = 2) -> tuple:
  """Segment lengths to try for horizon T: the config's options (`paper`, first), then the best `max_auto` of the
  divisors S of T that are whole multiples of a detected period with 2 <= T / S <= max_segments (best: K = T / S
  nearest PAPER_SEGMENTS; ties: the shorter S, the finer split) where the paper's options lack them."""
  auto = [
    s
    for s in range(1, horizon // 2 + 1)
    if horizon % s == 0 and horizon // s <= max_segments and any(s % p == 0 for p in periods)
  ]
  auto.sort(key=lambda s: (abs(math.log(horizon / s / PAPER_SEGMENTS)), s))
  out = list(dict.fromkeys(int(s) for s in paper))
  return tuple(out + [s for s in auto[:max_auto] if s not in out])
