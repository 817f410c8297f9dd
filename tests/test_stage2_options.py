"""Stage-2 options (mola_jax/models/stage2_options.py): each is wired from its config key, changes what it should,
starts stage 2 at the copied stage-1 forecast, and leaves the default model as it was."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny
from flax import nnx

from mola_jax import config_lib, plan
from mola_jax.inference import load_run
from mola_jax.lab.report import diagnosis
from mola_jax.models import Ctx, adapters, build, predict
from mola_jax.models.stage2_options import SegmentHeadBank, per_segment_size
from mola_jax.train import train_and_evaluate


def model(cfg, segments: int, seed: int = 1):
  return build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=segments, rngs=nnx.Rngs(seed))


def window(k: int):
  rng = np.random.default_rng(0)
  return {"x": rng.standard_normal((2, 96, 7), np.float32), "x_mark": np.zeros((2, 96, 4), np.float32),
          "y_mark": np.zeros((2, 8 * k, 4), np.float32), "t0": np.array([5, 40], np.int32)}  # fmt: skip


@pytest.mark.parametrize("backbone", ["itransformer", "cyclenet"])
def test_segment_heads_start_at_the_copy_and_add_to_the_methods_head_bank(backbone):
  cfg = tiny()
  cfg.backbone, cfg.adapt.segment_heads = backbone, True
  cfg.model.cyclenet.update(cycle=24, d_model=16)
  plan.make(cfg)
  base, adapted = model(cfg, 0, seed=0), model(cfg, 3)
  nnx.update(adapted, nnx.state(base))
  head = adapted.head.adapter
  assert isinstance(head, SegmentHeadBank) and head.own[...].shape == (3,) + base.head.kernel.shape
  # CycleNet's head is adapted by default: MoLA's bank sits inside; iTransformer's is not
  assert (head.inner is not None) == (backbone == "cyclenet")
  x = window(3)
  got = np.asarray(predict(adapted, x, Ctx(segments=3)))  # [B, K, S, D]
  for k in range(3):  # zero changes: every segment forecasts what the stage-1 model does at its steps
    one = dict(x, y_mark=x["y_mark"][:, 8 * k : 8 * k + 8], t0=x["t0"] + 8 * k)
    np.testing.assert_allclose(got[:, k], np.asarray(predict(base, one, Ctx(segments=1)))[:, 0], atol=1e-5)
  change = np.random.default_rng(1).standard_normal(head.own[...].shape[1:]).astype(np.float32)
  head.own[...] = head.own[...].at[1].set(0.1 * change)  # segment 1's own change moves segment 1 alone
  moved = np.asarray(predict(adapted, x, Ctx(segments=3)))
  np.testing.assert_allclose(moved[:, [0, 2]], got[:, [0, 2]], atol=1e-6)
  assert not np.allclose(moved[:, 1], got[:, 1])


def test_by_default_no_option_changes_the_model():
  cfg = tiny()
  assert cfg.adapt.segment_heads is False and cfg.technique.mola.experts_per_segment == 0
  cfg.backbone = "cyclenet"
  head = model(cfg, 3).head.adapter
  assert isinstance(head, adapters.MoLABank)  # no wrapper
  assert head.a[...].shape == (2, 96, 2)  # P and r as tiny() sets them


def test_experts_and_rank_grow_with_the_number_of_segments():
  assert per_segment_size(6, 0.0, 8) == 6 and per_segment_size(6, 1.0, 8) == 8 and per_segment_size(6, 0.5, 4) == 6
  cfg = tiny()
  cfg.backbone = "cyclenet"
  cfg.technique.mola.update(experts_per_segment=1.0, rank_per_segment=0.5)
  for k, (p, r) in {2: (2, 2), 8: (8, 4)}.items():
    bank = model(cfg, k).head.adapter
    assert bank.a[...].shape == (p, 96, r) and bank.logits[...].shape == (k, p)


@pytest.mark.parametrize(("backbone", "method"), [("dlinear", "mola"), ("itransformer", "lora_heads")])
def test_segment_heads_where_they_cannot_go_is_one_clear_error(backbone, method):
  cfg = tiny()
  cfg.backbone, cfg.method, cfg.adapt.segment_heads = backbone, method, True
  with pytest.raises(config_lib.ConfigError, match="segment_heads"):
    plan.make(cfg)


def test_segment_heads_train_and_load_under_per_segment_selection(tmp_path, monkeypatch):
  """A real run with the option and per-segment selection: the heads' own changes train, the selected deltas are
  baked, and the loaded run's copy (adapters at zero) still scores as the epoch-0 record."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.adapt.update(epochs=2, lr=1e-2, segment_heads=True, selection="per_segment")
  train_and_evaluate(cfg, tmp_path / "run")
  run = load_run(tmp_path / "run")
  norms = diagnosis.update_norms(run.model)
  assert set(norms) >= {"head"} and (norms["head"] > 0).any()
  records = diagnosis.records(tmp_path / "run")
  assert len(records) == 3 and all(np.isfinite(r["val_mse"]) for r in records)
