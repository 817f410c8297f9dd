"""Per-segment early stopping (docs/method.md §7)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SegmentStopper:
  """Per-segment early stopping exactly as the official code: ties count as improvement, and a segment stops for
  good after `patience` epochs without one. With K = 1 this is ordinary early stopping (stage 1, mtf). Which state
  the stage keeps is the selection rule's business (mola_jax/selection.py)."""

  best: np.ndarray  # [K] best validation MSE so far
  patience: int
  count: np.ndarray = None  # [K] epochs since the last improvement
  active: np.ndarray = None  # [K] bool
  improved: np.ndarray = None  # [K] bool: which segments improved in the last update

  def __post_init__(self):
    self.best = np.asarray(self.best, np.float64)
    self.count = np.zeros(self.best.shape, np.int64)
    self.active = np.ones(self.best.shape, bool)
    self.improved = np.zeros(self.best.shape, bool)

  def update(self, val: np.ndarray) -> bool:
    """One epoch's validation MSE per segment -> whether any active segment improved."""
    self.improved = self.active & (val <= self.best)
    self.best[self.improved] = val[self.improved]
    self.count[self.improved] = 0
    worse = self.active & ~self.improved
    self.count[worse] += 1
    self.active[worse & (self.count >= self.patience)] = False
    return bool(self.improved.any())

  def to_dict(self) -> dict:
    return {
      "best": self.best.tolist(),
      "patience": self.patience,
      "count": self.count.tolist(),
      "active": self.active.tolist(),
    }

  @classmethod
  def from_dict(cls, d: dict) -> SegmentStopper:
    out = cls(d["best"], d["patience"])
    out.count, out.active = np.asarray(d["count"], np.int64), np.asarray(d["active"], bool)
    return out
