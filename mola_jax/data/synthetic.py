"""A generated series with known structure, for smoke tests and scaling work without any data file.

Each channel is a sum of a daily (24-step) and a weekly (168-step) cycle with its own amplitudes and phases,
a slow trend and a little noise, on an hourly calendar. The 7:1:2 split and train-only scaling apply as for
any custom CSV, so everything downstream is exercised exactly as on real data.
"""

from __future__ import annotations

import numpy as np


def synthetic_values(rows: int, channels: int, seed: int = 0, noise: float = 0.1) -> np.ndarray:
  """[rows, channels] float64."""
  rng = np.random.default_rng(seed)
  t = np.arange(rows)[:, None]  # [rows, 1]
  amp_d, amp_w = rng.uniform(0.5, 2.0, (2, channels))
  ph_d, ph_w = rng.uniform(0, 2 * np.pi, (2, channels))
  slope = rng.uniform(-1.0, 1.0, channels) / rows
  series = amp_d * np.sin(2 * np.pi * t / 24 + ph_d) + amp_w * np.sin(2 * np.pi * t / 168 + ph_w) + slope * t
  return series + noise * rng.standard_normal((rows, channels))


def synthetic_data(data_cfg) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """-> (values [rows, channels], hourly dates [rows], column names with OT last) of `data_cfg`'s size."""
  rows, channels = int(data_cfg.synthetic_rows), int(data_cfg.synthetic_channels)
  dates = np.datetime64("2020-01-01T00:00", "ns") + np.arange(rows) * np.timedelta64(1, "h")
  return synthetic_values(rows, channels), dates, tuple(f"c{i}" for i in range(channels - 1)) + ("OT",)
