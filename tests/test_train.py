"""The train step freezes what it must, early stopping follows docs/method.md §7, and both stages run end to end
on the real ETTh1 file through `train_and_evaluate`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import tiny
from flax import nnx

from mola_jax import checkpointing, data, metrics, plan, steps
from mola_jax.fit import RunSetup, fit
from mola_jax.models import build
from mola_jax.state import TrainState
from mola_jax.stopping import SegmentStopper
from mola_jax.train import train_and_evaluate


def leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def synthetic_cfg(**adapt):
  """Tiny model on generated data (no file), T = 48 in K = 3 segments."""
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.adapt.update(**adapt)
  return cfg


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])
def test_a_real_stage2_fit_moves_only_the_adapters(graph, tmp_path, monkeypatch):
  """Every leaf of the model that is not an adapter is bit-identical before and after stage 2's fit (a backbone
  weight that moved would show here), while the adapters did train."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = synthetic_cfg(epochs=2, lr=1e-2)
  cfg.stage = "pretrain"
  train_and_evaluate(cfg, tmp_path)
  cfg.stage = "all"
  run_plan = plan.make(cfg)
  stage = run_plan.method_stages[1]
  series = data.load_series(cfg.data)
  with nnx.set_graph_mode(graph):
    model = build(
      plan.model_spec(cfg),
      channels=7,
      marks=4,
      pred_len=stage.pred_len,
      segments=stage.segments,
      rngs=nnx.Rngs(stage.seed),
    )
    checkpointing.load_backbone(
      model,
      checkpointing.stage_dir(tmp_path, "pretrain"),
      checkpointing.backbone_identity(run_plan.model, series, run_plan.segment_len),
    )
    backbone = leaves(nnx.state(model, nnx.Not(nnx.LoRAParam)))
    adapters = leaves(nnx.state(model, nnx.LoRAParam))
    run = RunSetup(tmp_path, {}, metrics.MetricsLog(tmp_path / "m"), run_plan.loop, run_plan.evaluation)
    model = fit(model, stage, series=series, run=run)[0].model()
    after = leaves(nnx.state(model, nnx.Not(nnx.LoRAParam)))
  assert len(after) == len(backbone) > 10
  for a, b in zip(backbone, after, strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(adapters, leaves(nnx.state(model, nnx.LoRAParam)), strict=True))


def test_stopped_segments_rows_stay_put_through_the_step():
  """The step restores a stopped segment's rows of the per-segment parameters (a zero gradient would still move
  them through Adam's momentum); the shared experts and the active segments' rows train."""
  cfg = tiny()
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=3, rngs=nnx.Rngs(0))
  tx = steps.make_tx(steps.lr_schedule(1e-2, 10))
  state = TrainState.create(model, "adapt", tx, jax.random.key_data(jax.random.key(0)))
  seg_before, shared_before = leaves(state.seg), leaves(state.train)
  step = jax.jit(steps.train_step_fn(steps.train_forecast(), steps.StepOptions(3)), donate_argnums=0)
  rng = np.random.default_rng(0)
  for skip in (False, True):  # the stopped segment masked out of the loss, or not computed at all
    for _ in range(2):
      batch = {
        "x": rng.standard_normal((4, 96, 7), np.float32),
        "x_mark": np.zeros((4, 96, 4), np.float32),
        "y": rng.standard_normal((4, 24, 7), np.float32),
      }
      state, loss = step(state, batch, steps.training_segments([True, False, True], skip_stopped=skip))
    assert np.isfinite(float(loss))
  assert any(not np.array_equal(a, b) for a, b in zip(shared_before, leaves(state.train), strict=True))
  for before, after in zip(seg_before, leaves(state.seg), strict=True):
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(before[0], after[0]) and not np.array_equal(before[2], after[2])


def test_logged_lr_is_the_lr_the_epoch_trained_with(tmp_path, monkeypatch):
  """TSLib's type1 rule: epochs 1-2 at the full lr, then halved every epoch; metrics.jsonl logs what each epoch's
  steps used (it used to log the previous epoch's)."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = synthetic_cfg()
  cfg.method = "mtf"
  cfg.pretrain.update(epochs=4, patience=10, lr=1e-3)
  train_and_evaluate(cfg, tmp_path / "run")
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["lr"] for r in records if r["stage"] == "pretrain"] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


def test_stage2_parameters_are_not_another_seeds_backbone():
  """Stage 2's fresh parameters come from a stream of their own: not from seed + 1, which builds the next seed's
  stage-1 backbone (the seeds of a study would then not be independent)."""
  cfg = tiny()
  cfg.method = "mola"
  mine = plan.make(cfg).method_stages[1]
  cfg.seed += 1
  next_backbone = plan.make(cfg).method_stages[0]
  assert mine.seed != next_backbone.seed
  a = build(
    plan.model_spec(cfg), channels=7, marks=4, pred_len=mine.pred_len, segments=mine.segments, rngs=nnx.Rngs(mine.seed)
  )
  b = build(
    plan.model_spec(cfg), channels=7, marks=4, pred_len=mine.pred_len, segments=0, rngs=nnx.Rngs(next_backbone.seed)
  )
  assert not np.array_equal(np.asarray(a.embed.kernel[...]), np.asarray(b.embed.kernel[...]))


def test_a_non_finite_value_on_a_padded_row_does_not_reach_the_sums():
  """The eval step selects the real rows instead of multiplying by the mask (0 * nan = nan)."""
  cfg = tiny()
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  state = TrainState.create(model, "pretrain")
  step = jax.jit(steps.eval_step_fn(steps.StepOptions(1)))
  rng = np.random.default_rng(0)
  batch = {
    "x": rng.standard_normal((4, 96, 7), np.float32),
    "x_mark": np.zeros((4, 96, 4), np.float32),
    "y": rng.standard_normal((4, 24, 7), np.float32),
    "mask": np.array([True, True, True, False]),
  }
  clean = step(state, batch)
  batch["x"][3] = np.nan  # the padded row
  batch["y"][3] = np.inf
  dirty = step(state, batch)
  assert np.isfinite(np.asarray(dirty["sq"])).all() and int(dirty["count"]) == 3
  np.testing.assert_allclose(np.asarray(dirty["sq"]), np.asarray(clean["sq"]), rtol=1e-6)


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
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=96, segments=0, rngs=nnx.Rngs(0))
  state = TrainState.create(model, "pretrain")
  src = data.window_source(series, "test", 96, 96)
  acc = {"sq": np.zeros(96), "count": 0}
  step = jax.jit(steps.eval_step_fn(steps.StepOptions(1)))
  windows = data.DeviceWindows(src)
  for idx, mask in zip(*data.eval_order(src, 32), strict=True):  # 87 full batches and one holding a single window
    sums = step(state, windows.take(idx, mask))
    acc = {"sq": acc["sq"] + np.asarray(sums["sq"]), "count": acc["count"] + int(sums["count"])}
  assert int(acc["count"]) == 2785
  # Same sums as a plain numpy pass over all windows.
  from mola_jax.models import Ctx, predict

  every = data.host_batch(src, np.arange(len(src)))
  preds = np.asarray(predict(model, every, Ctx()))[:, 0]
  ys = every["y"]
  np.testing.assert_allclose(float(acc["sq"].sum()) / ys.size, np.mean((preds - ys) ** 2), rtol=1e-4)


def test_both_stages_end_to_end_on_etth1(data_dir, tmp_path):
  cfg = tiny()
  cfg.horizon, cfg.segment_len = 48, 24
  results = train_and_evaluate(cfg, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved == json.loads(json.dumps(results))
  for key in (
    "dataset",
    "backbone",
    "method",
    "horizon",
    "segment_len",
    "seed",
    "test_mse",
    "test_mae",
    "val_mse",
    "num_test_windows",
    "train_seconds",
    "per_step_test_mse",
  ):
    assert key in saved
  assert (saved["dataset"], saved["method"], saved["horizon"], saved["segment_len"]) == ("ETTh1", "mola", 48, 24)
  assert saved["num_test_windows"] == 2881 - 48 and len(saved["per_step_test_mse"]) == 48
  assert np.isclose(np.mean(saved["per_step_test_mse"]), saved["test_mse"], rtol=1e-5)
  assert 0.2 < saved["test_mse"] < 1.5  # a trained forecaster on standardised data, not a broken one
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["stage"] for r in records] == ["pretrain", "adapt", "adapt", "test"]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["horizon"] == 48
  for stage in ("pretrain", "adapt"):
    assert checkpointing.stage_dir(tmp_path / "run", stage).is_dir()

  # Stage 2 alone, from the first run's stage-1 checkpoint, with another seed for the adapters.
  cfg2 = tiny()
  cfg2.horizon, cfg2.segment_len, cfg2.stage, cfg2.method = 48, 24, "adapt", "lora"
  cfg2.init_from = str(tmp_path / "run")
  other = train_and_evaluate(cfg2, tmp_path / "lora")
  assert other["method"] == "lora" and other["num_test_windows"] == 2833
  assert "pretrain" not in other["stages"]

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
  curves = np.array([r["val_mse_per_segment"] for r in records if r["stage"] == "adapt"])  # [epochs + 1, K]
  assert curves.shape == (5, 3)

  from mola_jax.evaluation import score_split
  from mola_jax.inference import load_run

  run, run_plan = load_run(tmp_path / "run"), plan.make(cfg)
  series = data.load_series(cfg.data)
  val = score_split(run.state, run_plan.final, series=series, evaluation=run_plan.evaluation, split="val")
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
    return results, [r for r in records if r["stage"] == "adapt"]

  (skip, skip_log), (full, full_log) = run(True), run(False)
  assert [r.get("active_segments") for r in skip_log] == [r.get("active_segments") for r in full_log]
  assert any(0 < r.get("active_segments", 3) < 3 for r in skip_log)  # some epoch ran with a segment stopped
  assert skip["stages"]["adapt"]["best_epoch"] == full["stages"]["adapt"]["best_epoch"]
  for a, b in zip(skip_log, full_log, strict=True):
    np.testing.assert_allclose(a["val_mse_per_segment"], b["val_mse_per_segment"], rtol=1e-5)
  assert skip["test_mse"] == pytest.approx(full["test_mse"], rel=1e-5)


@pytest.mark.parametrize(("segments", "skip"), [(1, True), (4, True), (4, False)], ids=["K1", "K4-skip", "K4-noskip"])
def test_chunks_of_steps_train_what_one_step_per_dispatch_trains(segments, skip, tmp_path, monkeypatch):
  """An epoch in scans of 5 steps (the last one padded) trains what one step per dispatch (chunk_steps=1)
  trains: the same kept epochs, active segments and validation curves in both stages, and the selected
  parameters to 1e-6."""
  from mola_jax.inference import load_run

  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))

  def config(chunk: int):
    cfg = synthetic_cfg(epochs=4, patience=1, lr=5e-3, skip_stopped=skip)
    cfg.data.synthetic_rows = 1000
    cfg.horizon, cfg.segment_len, cfg.pretrain.epochs = 16 * segments, 16, 2
    cfg.chunk_steps = chunk
    return cfg

  def run(chunk: int):
    path = tmp_path / f"chunk{chunk}"
    results = train_and_evaluate(config(chunk), path)
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return results, records, leaves(nnx.state(load_run(path).model))

  cfg = config(5)
  src = data.window_source(data.load_series(cfg.data), "train", cfg.data.seq_len, cfg.horizon)
  assert data.num_train_batches(src, cfg.adapt.batch_size) % 5 != 0  # the last chunk of an epoch is padded
  (one, one_log, one_params), (five, five_log, five_params) = run(1), run(5)
  for stage in ("pretrain", "adapt"):
    assert one["stages"][stage]["best_epoch"] == five["stages"][stage]["best_epoch"]
  assert [r.get("active_segments") for r in one_log] == [r.get("active_segments") for r in five_log]
  if segments > 1:
    assert any(0 < r.get("active_segments", segments) < segments for r in one_log)  # a segment stopped early
  for a, b in zip(one_log, five_log, strict=True):
    np.testing.assert_allclose(a.get("val_mse_per_segment", 0), b.get("val_mse_per_segment", 0), rtol=1e-5)
  assert len(one_params) == len(five_params) > 10
  for a, b in zip(one_params, five_params, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_weighted_l1_weighs_each_step_by_its_place_in_the_horizon():
  """OLinear's loss: |error| (t + 1)^-1/2 with t the step's place in the whole horizon, so segment k of S steps
  weighs its steps as a direct model of T = K S steps weighs kS .. kS + S - 1; filled values are left out."""
  rng = np.random.default_rng(0)
  pred, y = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))  # [B, K, S, D]
  ids = np.array([0, 2, 5], np.int32)  # three of six segments
  got = np.asarray(steps.segment_weighted_l1(pred, y, None, ids))
  t = ids[:, None] * 4 + np.arange(4)  # [K, S]
  want = (np.abs(pred - y) / np.sqrt(t + 1.0)[None, :, :, None]).mean(axis=(0, 2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  whole = np.asarray(steps.segment_weighted_l1(pred.reshape(2, 1, 12, 5), y.reshape(2, 1, 12, 5), None, np.zeros(1)))
  t = np.arange(12)
  np.testing.assert_allclose(
    whole, (np.abs(pred - y).reshape(2, 12, 5) / np.sqrt(t + 1.0)[None, :, None]).mean(), rtol=1e-6
  )
  observed = rng.random(pred.shape) > 0.5
  masked = np.asarray(steps.segment_weighted_l1(pred, np.where(observed, y, 1e6), observed, ids))
  weights = observed / np.sqrt(ids[:, None] * 4 + np.arange(4) + 1.0)[None, :, :, None]
  np.testing.assert_allclose(masked, (np.abs(pred - y) * weights).sum((0, 2, 3)) / observed.sum((0, 2, 3)), rtol=1e-5)
