"""Data-driven segment lengths (mola_jax/lab/periods.py): periods found on synthetic series with known cycles and on
none at all, and the segment lengths they propose."""

from __future__ import annotations

import numpy as np
import pytest

from mola_jax.lab.periods import candidates, dominant_periods

T = np.arange(6000)
RNG = np.random.default_rng(0)


def noisy(signal, channels=3, noise=0.3):
  return signal[:, None] + noise * RNG.standard_normal((len(signal), channels))


def test_a_daily_cycle_is_found_and_its_echoes_are_not():
  assert dominant_periods(noisy(np.sin(2 * np.pi * T / 24))) == [24]


def test_a_weekly_cycle_of_hours_is_found_beside_the_daily_one():
  daily = np.sin(2 * np.pi * T / 24)
  weekly_load = (1 + 0.8 * (((T // 24) % 7) >= 5)) * daily  # weekends differ: a 168-step cycle
  assert dominant_periods(noisy(weekly_load))[:2] == [168, 24]


def test_a_trend_does_not_hide_the_cycle():
  assert dominant_periods(noisy(np.sin(2 * np.pi * T / 24) + T / 500.0)) == [24]


@pytest.mark.parametrize("series", ["noise", "random_walk", "constant"])
def test_no_cycle_no_period(series):
  values = {
    "noise": RNG.standard_normal((6000, 3)),
    "random_walk": np.cumsum(RNG.standard_normal((6000, 3)), axis=0),
    "constant": np.ones((6000, 3)),
  }[series]
  assert dominant_periods(values) == []


def test_candidates_are_whole_periods_dividing_the_horizon_beside_the_papers():
  assert candidates(96, [24], paper=(24, 32)) == (24, 32, 48)  # 24 (K = 4) is the paper's already
  assert candidates(192, [24], paper=(48, 64)) == (48, 64, 24)  # K nearest 4: 48 (K 4), then 24 (K 8) before 96 (K 2)
  assert candidates(336, [24], paper=(84, 42)) == (84, 42, 48, 168)  # S = 24 would be K = 14 > 8
  assert candidates(720, [24], paper=(180, 90)) == (180, 90, 144, 240)
  assert candidates(96, [], paper=(24, 32)) == (24, 32)  # no cycle: the paper's options only
  assert candidates(96, [96], paper=(24, 32)) == (24, 32)  # K = 1 is not a MoLA split
