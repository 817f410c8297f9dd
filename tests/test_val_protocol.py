"""The two validation protocols (data.val_protocol): "full" (every window in order, one global mean) and
"official" (shuffled by the epoch's seed, the last partial batch dropped, the mean of per-batch means), pinned on
a small hand-made series with a forecaster that always says 0, so that every error is the truth itself."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

from mola_jax import config_lib, data, plan, steps
from mola_jax import evaluation as evaluation_lib
from mola_jax.data.sources import WindowSource
from mola_jax.errors import ConfigError
from mola_jax.train import train_and_evaluate


def windows(rows=20, seq_len=3, pred_len=4, channels=2):
  values = np.arange(rows * channels, dtype=np.float32).reshape(rows, channels) / 10  # window i's truth is known
  src = WindowSource(values, np.zeros((rows, 1), np.float32), 0, rows, seq_len, pred_len)
  return src, data.DeviceWindows(src)


def zero_one(states, batch):
  """The eval step's contract (steps.eval_step_fn) for a forecast of 0: error = truth."""
  real = batch["mask"][:, None, None]
  y = batch["y"]
  return {"sq": jnp.sum(jnp.where(real, y**2, 0.0), axis=(0, 2)),
          "abs": jnp.sum(jnp.where(real, jnp.abs(y), 0.0), axis=(0, 2)),
          "count": jnp.sum(batch["mask"])}  # fmt: skip


zero_forecaster = jax.jit(steps.eval_chunk_fn(zero_one, seq_len=3, pred_len=4))  # an eval chunk, as fit runs
STATES = {"w": jnp.zeros(1)}  # the (unused) state
FULL = plan.Evaluation(seq_len=3, batch_size=5, protocol="full", seed=0, compute_dtype="float32", intervals=())


def score(dev, evaluation: plan.Evaluation, batch_size: int, epoch: int = 1) -> dict:
  """A split's validation score as fit computes it (its batches, the eval chunk's sums, the protocol's mean)."""
  idx, mask = evaluation_lib.val_batches(dev, evaluation, batch_size, epoch)
  sums = evaluation_lib.batch_sums(zero_forecaster, STATES, dev.arrays, idx, mask)
  return evaluation_lib.scores(sums, evaluation, segments=2, channels=2)


def truth(src, i):
  return np.asarray(src[int(i)]["y"])  # [pred_len, channels]


def test_the_official_order_shuffles_per_epoch_and_drops_the_last_partial_batch():
  src, _ = windows()  # 20 - 3 - 4 + 1 = 14 windows
  order = data.val_order(src, 4, seed=0, epoch=1)
  assert order.shape == (3, 4) and len(set(order.ravel())) == 12 and set(order.ravel()) <= set(range(14))
  assert (order == data.val_order(src, 4, seed=0, epoch=1)).all()  # reproducible
  assert not (order == data.val_order(src, 4, seed=0, epoch=2)).all()  # each epoch its own
  assert not (order.ravel() == data.train_order(src, 4, seed=0, epoch=1).ravel()).all()  # not the train order
  with pytest.raises(data.DataError, match="val_protocol=full"):
    data.val_order(src, 15, seed=0, epoch=1)


def test_full_is_the_global_mean_and_official_the_mean_of_batch_means():
  src, dev = windows()
  full = score(dev, FULL, 5)
  every = np.stack([truth(src, i) for i in range(14)])  # [14, T, D]
  assert full["windows"] == 14
  np.testing.assert_allclose(full["mse"], (every**2).mean(), rtol=1e-6)
  np.testing.assert_allclose(
    full["per_segment_mse"], [(every[:, :2] ** 2).mean(), (every[:, 2:] ** 2).mean()], rtol=1e-6
  )

  official = score(dev, dataclasses.replace(FULL, protocol="official", seed=3), 4, epoch=2)
  batches = [np.stack([truth(src, i) for i in idx]) for idx in data.val_order(src, 4, seed=3, epoch=2)]
  assert official["windows"] == 12
  np.testing.assert_allclose(official["mse"], np.mean([(b**2).mean() for b in batches]), rtol=1e-6)
  np.testing.assert_allclose(official["mae"], np.mean([np.abs(b).mean() for b in batches]), rtol=1e-6)
  np.testing.assert_allclose(
    official["per_segment_mse"],
    [np.mean([(b[:, s] ** 2).mean() for b in batches]) for s in (slice(0, 2), slice(2, 4))],
    rtol=1e-6,
  )
  assert abs(official["mse"] - full["mse"]) > 1e-3  # two windows left out: a different number


def test_the_protocol_is_checked_and_changes_selection_only(tmp_path, data_dir):
  cfg = config_lib.default()
  cfg.data.val_protocol = "shuffled"
  with pytest.raises(ConfigError, match="val_protocol"):
    config_lib.validate(cfg)
  results = {}
  for protocol in ("full", "official"):
    cfg = tiny()
    cfg.horizon, cfg.segment_len, cfg.data.val_protocol = 48, 24, protocol
    cfg.pretrain.epochs = cfg.adapt.epochs = 2
    results[protocol] = train_and_evaluate(cfg, tmp_path / protocol)
  # The same training; only the validation numbers (and so possibly the kept epoch) differ. The test pass counts
  # every test window under both.
  assert results["full"]["num_test_windows"] == results["official"]["num_test_windows"]
  assert results["full"]["val_mse"] != results["official"]["val_mse"]
