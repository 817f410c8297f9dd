"""The train step freezes what it must, early stopping follows method.md §7, and both stages run end to end
on the real ETTh1 file through `train_and_evaluate`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mola_jax import checkpointing, data, steps
from mola_jax.models import SegmentParam, build
from mola_jax.train import SegmentStopper, train_and_evaluate

from conftest import tiny


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])
def test_stage2_steps_leave_the_backbone_bit_identical(graph):
  cfg = tiny()
  with nnx.set_graph_mode(graph):
    model = build(cfg, channels=7, marks=4, pred_len=8, segments=3, rngs=nnx.Rngs(0))
    graphdef, params, stats, frozen = steps.split(model, "adapt")
    frozen_before = leaves(frozen)
    assert frozen_before and all(not isinstance(v, nnx.LoRAParam) for v in jax.tree.leaves(
        frozen, is_leaf=lambda v: isinstance(v, nnx.Variable)))
    seg_before, shared_before = leaves(params[0]), leaves(params[1])
    tx = steps.make_tx(1e-2, 10)
    state = {"params": params, "opt": tx.init(params), "stats": stats, "key": jax.random.key(0)}
    step = steps.make_train_step(graphdef, tx, segments=3, share_prefix_dropout=False)
    rng = np.random.default_rng(0)
    active = steps.training_segments([True, False, True], skip_stopped=False)  # segment 1 has stopped
    for _ in range(3):
      batch = {"x": rng.standard_normal((4, 96, 7), np.float32), "x_mark": np.zeros((4, 96, 4), np.float32),
               "y": rng.standard_normal((4, 24, 7), np.float32)}
      state, loss = step(state, frozen, batch, active)
    assert np.isfinite(float(loss))
  for a, b in zip(frozen_before, leaves(frozen)):
    np.testing.assert_array_equal(a, b)
  # The optimizer holds state for the adapters only: no Adam moments for the frozen backbone.
  n_adapter = sum(x.size for x in seg_before + shared_before)
  mu = state["opt"].inner_state[0].mu
  assert sum(np.size(x) for x in jax.tree.leaves(mu)) == n_adapter
  # Shared experts trained; logits rows of the stopped segment did not move, the active ones did.
  assert any(not np.array_equal(a, b) for a, b in zip(shared_before, leaves(state["params"][1])))
  for before, after in zip(seg_before, leaves(state["params"][0])):
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(before[0], after[0]) and not np.array_equal(before[2], after[2])


def test_segment_stopper_follows_the_official_rule():
  stop = SegmentStopper(best=[1.0, 1.0], patience=2)
  assert stop.update(np.array([1.0, 1.1]))  # a tie counts as an improvement
  assert stop.update(np.array([1.2, 0.9]))
  assert list(stop.count) == [1, 0]
  assert stop.update(np.array([0.9, 1.0]))  # segment 0 improves; segment 1 worse once
  assert not stop.update(np.array([1.0, 1.0]))  # both worse: segment 1 reaches patience 2 and stops
  assert list(stop.active) == [True, False]
  assert not stop.update(np.array([1.0, 0.1]))  # a stopped segment's value no longer counts
  assert list(stop.active) == [False, False] and stop.best[1] == 0.9


def test_eval_scores_every_window_once(data_dir):
  cfg = tiny()
  series = data.load_series(cfg.data)
  model = build(cfg, channels=7, marks=4, pred_len=96, segments=0, rngs=nnx.Rngs(0))
  graphdef, *states = nnx.split(model)
  src = data.window_source(series, "test", 96, 96)
  acc = steps.empty_acc(96)
  step = steps.make_eval_step(graphdef, segments=1)
  for batch in data.eval_batches(src, 32):  # 87 full batches and one holding a single window
    acc = step(acc, tuple(states), batch)
  assert int(acc["count"]) == 2785
  # Same sums as a plain numpy pass over all windows.
  from mola_jax.models import Ctx, predict
  preds = np.concatenate([np.asarray(predict(model, b, Ctx()))[:, 0][b["mask"]]
                          for b in data.eval_batches(src, 500)])
  ys = np.stack([src[i]["y"] for i in range(len(src))])
  np.testing.assert_allclose(float(acc["sq"].sum()) / ys.size, np.mean((preds - ys) ** 2), rtol=1e-4)


def test_both_stages_end_to_end_on_etth1(data_dir, tmp_path):
  cfg = tiny()
  cfg.horizon, cfg.segment_len = 48, 24
  results = train_and_evaluate(cfg, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved == json.loads(json.dumps(results))
  for key in ("dataset", "backbone", "method", "horizon", "segment_len", "seed", "test_mse", "test_mae", "val_mse",
              "num_test_windows", "train_seconds", "per_step_test_mse"):
    assert key in saved
  assert (saved["dataset"], saved["method"], saved["horizon"], saved["segment_len"]) == ("ETTh1", "mola", 48, 24)
  assert saved["num_test_windows"] == 2881 - 48 and len(saved["per_step_test_mse"]) == 48
  assert np.isclose(np.mean(saved["per_step_test_mse"]), saved["test_mse"], rtol=1e-5)
  assert 0.2 < saved["test_mse"] < 1.5  # a trained forecaster on standardised data, not a broken one
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["stage"] for r in records] == ["stage1", "stage2", "stage2", "test"]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["horizon"] == 48
  for stage in ("pretrain", "adapt"):
    assert checkpointing.stage_dir(tmp_path / "run", stage).is_dir()

  # Stage 2 alone, from the first run's stage-1 checkpoint, with another seed for the adapters.
  cfg2 = tiny()
  cfg2.horizon, cfg2.segment_len, cfg2.stage, cfg2.method = 48, 24, "adapt", "lora"
  cfg2.init_from = str(tmp_path / "run")
  other = train_and_evaluate(cfg2, tmp_path / "lora")
  assert other["method"] == "lora" and other["num_test_windows"] == 2833
  assert "stage1" not in other["stages"]

  # A stage-1 checkpoint of another segment length is refused, with nothing trained on it.
  cfg3 = tiny()
  cfg3.horizon, cfg3.segment_len, cfg3.stage = 48, 16, "adapt"
  cfg3.init_from = str(tmp_path / "run")
  with pytest.raises(checkpointing.CheckpointError, match="segment_len=24"):
    train_and_evaluate(cfg3, tmp_path / "bad")


def test_mtf_and_synthetic_run_with_no_data_file(tmp_path, monkeypatch):
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.method, cfg.horizon = "mtf", 48
  cfg.pretrain.update(epochs=6, lr=5e-3)
  results = train_and_evaluate(cfg, tmp_path / "mtf")
  assert results["segment_len"] == 48 and results["segments"] == 1 and len(results["per_step_test_mse"]) == 48
  # The known pattern (two cycles + noise 0.1) is learnable: far better than predicting the mean (MSE ~1).
  assert results["test_mse"] < 0.8


def test_per_segment_selection_keeps_each_segments_best_epoch(tmp_path, monkeypatch):
  """Each segment's validation MSE after selection is the minimum over its epochs (epoch 0 = the frozen
  backbone included), however the other segments fared."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.adapt.update(epochs=4, lr=5e-3, selection="per_segment")
  train_and_evaluate(cfg, tmp_path / "run")
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  curves = np.array([r["val_mse_per_segment"] for r in records if r["stage"] == "stage2"])  # [epochs + 1, K]
  assert curves.shape == (5, 3)

  from mola_jax.inference import load_run
  from mola_jax.train import test as evaluate_split

  run = load_run(tmp_path / "run")
  series = data.load_series(cfg.data)
  val = evaluate_split(run.model, series=series, cfg=cfg, horizon=48, segments=3, split="val")
  np.testing.assert_allclose(val["per_segment_mse"], curves.min(axis=0), rtol=1e-5)


@pytest.mark.parametrize("backbone", ["itransformer", "dlinear"])
def test_skipping_stopped_segments_changes_no_result(backbone, data_dir, tmp_path):
  """Stage 2 computes only the segments that have not early-stopped; each segment's dropout masks follow its id,
  so the run equals one that computes every segment and masks the stopped ones: same epochs, same selection,
  same test MSE to 1e-5."""
  def run(skip: bool) -> tuple[dict, list]:
    cfg = tiny()
    cfg.backbone, cfg.horizon, cfg.segment_len = backbone, 48, 16
    cfg.adapt.update(epochs=4, patience=1, lr=3e-3, skip_stopped=skip)
    results = train_and_evaluate(cfg, tmp_path / f"skip{skip}")
    records = [json.loads(line) for line in (tmp_path / f"skip{skip}" / "metrics.jsonl").read_text().splitlines()]
    return results, [r for r in records if r["stage"] == "stage2"]

  (skip, skip_log), (full, full_log) = run(True), run(False)
  assert [r.get("active_segments") for r in skip_log] == [r.get("active_segments") for r in full_log]
  assert any(0 < r.get("active_segments", 3) < 3 for r in skip_log)  # some epoch ran with a segment stopped
  assert skip["stages"]["stage2"]["best_epoch"] == full["stages"]["stage2"]["best_epoch"]
  for a, b in zip(skip_log, full_log):
    np.testing.assert_allclose(a["val_mse_per_segment"], b["val_mse_per_segment"], rtol=1e-5)
  assert skip["test_mse"] == pytest.approx(full["test_mse"], rel=1e-5)
