"""The training split's standardisation, as one type: fitted once on the training rows (observed values only),
written with the run (scaler.json), and applied unchanged by training, forecasting and the exported forecaster,
never refitted.

A panel's scaler (data/panel.py) is the same type with a leading series axis: mean and std [N, 1], each series'
own, fitted on its own training part (`per_series`); `series(i)` is series i's scaler, a one-channel Scaler."""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging


@dataclasses.dataclass(frozen=True)
class Scaler:
  mean: np.ndarray  # [D] float64: the channels', the target last
  std: np.ndarray  # [D] population std (a constant column: 1)
  covariate_mean: np.ndarray  # [C] the future covariates'
  covariate_std: np.ndarray  # [C]

  @classmethod
  def fit(cls, values, observed, covariates, *, names=(), covariate_names=(), origin="") -> Scaler:
    """From the training rows: values [rows, D] (observed [rows, D] bool or None: all real) and covariates
    [rows, C]."""
    mean, std = _moments(values, observed, names, origin)
    cov_mean, cov_std = _moments(covariates, None, covariate_names, origin)
    return cls(mean, std, cov_mean, cov_std)

  @classmethod
  def per_series(cls, mean: np.ndarray, std: np.ndarray, *, origin="") -> Scaler:
    """A panel's scaler from each series' moments over its training part (`moments`), mean and std [N]: a constant
    series is centred, not scaled (std 1), as a constant column is, with one warning for them all."""
    constant = np.flatnonzero(std == 0.0)
    if constant.size:
      logging.warning("%s: %d series are constant on their training part; they are centred but not scaled",
                      origin, constant.size)  # fmt: skip
    std = np.where(std == 0.0, 1.0, std)
    return cls(np.asarray(mean, np.float64)[:, None], std[:, None], np.zeros(0), np.ones(0))

  def series(self, i: int) -> Scaler:
    """Series i's one-channel scaler (a panel's scaler has a leading series axis)."""
    return Scaler(self.mean[i], self.std[i], self.covariate_mean, self.covariate_std)

  def scale(self, values: np.ndarray) -> np.ndarray:
    """[..., D] original units -> float32 standardised."""
    return ((values - self.mean) / self.std).astype(np.float32)

  def unscale(self, scaled, channels: int | None = None):
    """[..., D'] standardised -> original units, for the last `channels` channels (the forecast's outputs: the
    target alone under MS); numpy or jax arrays alike."""
    d = channels or len(self.mean)
    return scaled * self.std[-d:] + self.mean[-d:]

  def scale_covariates(self, covariates: np.ndarray) -> np.ndarray:
    """[..., C] original units -> float32 standardised (the marks after the time features)."""
    return ((covariates - self.covariate_mean) / self.covariate_std).astype(np.float32)

  def to_json(self) -> dict:
    return {k: np.asarray(getattr(self, k)).tolist() for k in ("mean", "std", "covariate_mean", "covariate_std")}

  @classmethod
  def from_json(cls, record: dict) -> Scaler:
    """A scaler.json record (a run made before covariates existed has none: empty)."""
    get = lambda k: np.asarray(record.get(k, []), np.float64)
    return cls(get("mean"), get("std"), get("covariate_mean"), get("covariate_std"))


def moments(part: np.ndarray, observed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) [n] of the training rows `part` [rows, n] over the observed values only; population std (ddof
  0), like sklearn's StandardScaler; 0 for a constant column."""
  if observed is None:
    return part.mean(axis=0), part.std(axis=0)
  real = np.where(observed, part, np.nan)
  return np.nanmean(real, axis=0), np.nanstd(real, axis=0)


def _moments(part: np.ndarray, observed: np.ndarray | None, names, origin) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) [n] of the training rows `part` [rows, n], over observed values only; a constant column is
  centred, not scaled (std 1)."""
  mean, std = moments(part, observed)
  if (std == 0.0).any():  # dividing by 0 would make the column inf
    constant = [str(c) for c, zero in zip(names, std == 0.0, strict=True) if zero]
    logging.warning(
      "%s: column(s) %s are constant on the training split; they are centred but not scaled",
      origin,
      ", ".join(constant),
    )
  return mean, np.where(std == 0.0, 1.0, std)
