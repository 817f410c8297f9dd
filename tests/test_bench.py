"""The benchmark's CI mode end to end (no speed is asserted), and what its figures rely on: the stage-2 variants
compute the batched pass's loss, the epoch-in-scan trains on the pipeline's batches, bf16 keeps float32 master
state, and a training run compiles each of its steps once (no recompilation on the last batch or a new epoch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, tiny

from mola_jax import bench, data, steps
from mola_jax.train import train_and_evaluate


def synthetic(dropout: float = 0.0):
  """Tiny model on generated data, K = 3. Dropout off unless asked: losses of different programs then compare
  exactly, and the steps compile several times faster."""
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.model.itransformer.dropout = dropout
  return cfg


def compiled(setup: bench.Setup):
  """The setup's train step, compiled ahead of time as the benchmark's CI mode does (cheaply)."""
  return bench.compile_step(setup, bench.CHEAP_COMPILES)[0]


def test_tiny_cli_writes_every_figure(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  cmd = [
    sys.executable,
    "-m",
    "mola_jax.bench",
    "--config",
    str(REPO / "configs" / "synthetic.py"),
    "--workdir",
    str(tmp_path),
    "--config.bench.tiny=True",
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "bench.json").read_text())
  for key in bench.REQUIRED:
    assert np.isfinite(result[key]) and result[key] > 0, key
  assert result["settings"]["tiny"]
  # The per-segment loop and the unshared prefix compute the batched pass's numbers (eval, whole test split).
  assert result["loop_max_rel_diff"] < 1e-5 and result["unshared_prefix_max_rel_diff"] < 1e-5
  assert {row["sweep"] for row in result["rows"] if "sweep" in row} == {"K", "T", "D"}
  assert {row["mode"] for row in result["rows"]} == {"pipeline", "device", "scan"}
  assert all(row["flops_per_step"] > 0 for row in result["rows"])
  # The two adapter forms are two programs (a cached compile of one would time the other twice).
  assert result["stage2_flops_per_step_dense_delta"] != result["stage2_flops_per_step_factored"]
  for key in (
    "stage2_dropout_cost",
    "stage2_groups_speedup",
    "stage2_step_over_ffn_matmul",
    "stage2_compile_cold_seconds",
    "stage2_compile_warm_seconds",
    "stage2_fit_computed_over_skipped",
  ):
    assert np.isfinite(result[key]) and result[key] > 0, key
  runs = result["stage2_runs"]  # skipping stopped segments changes no number
  assert runs["skipped"]["test_mse"] == pytest.approx(runs["computed"]["test_mse"], rel=1e-5)
  acc = result["accuracy_bf16"]
  assert np.isfinite(acc["float32"]["test_mse"]) and np.isfinite(acc["bfloat16"]["test_mse"])
  table = (tmp_path / "bench.md").read_text()
  assert all(f"`{key}`" in table for key in bench.REQUIRED) and "How stage-2 cost grows with segments" in table


@pytest.mark.parametrize("forward", ["loop", "unshared_prefix"])
def test_stage2_variants_give_the_batched_loss(forward):
  """Same weights (adapters randomised, so segments differ), same batches: the official K passes and the
  unshared prefix give the batched pass's loss, and after one update (equal gradients) still do."""
  prob = bench.problem(synthetic())
  model = bench.new_model(prob, "adapt")
  bench.randomise_adapters(model)
  losses = {}
  for name in ("batched", forward):
    setup = bench.train_setup(prob, "adapt", forward=name, model=model)
    step, state, out = compiled(setup), setup.state, []
    for batch in data.train_batches(setup.src, setup.batch_size, seed=0, epoch=1)[:2]:
      state, loss = step(state, setup.frozen, batch, setup.active)
      out.append(float(loss))
    losses[name] = out
  np.testing.assert_allclose(losses[forward], losses["batched"], rtol=1e-5)


def test_scan_epoch_trains_on_the_pipeline_batches():
  prob = bench.problem(synthetic())
  a, b = bench.train_setup(prob, "adapt"), bench.train_setup(prob, "adapt")
  starts = bench.epoch_starts(a.src, a.batch_size, a.seed, epoch=1)
  assert starts.shape == (data.num_train_batches(a.src, a.batch_size), a.batch_size)
  assert len(np.unique(starts)) == starts.size  # each window at most once
  batches = data.train_batches(a.src, a.batch_size, seed=a.seed, epoch=1)
  n = 3
  for i in range(n):  # grain's shuffle depends only on the length and the seed
    np.testing.assert_array_equal(batches[i]["y"], np.stack([a.src[int(j)]["y"] for j in starts[i]]))
  args = (a.state, a.frozen, (a.src.values, a.src.marks), starts[:n], a.active)
  _, scanned = bench.make_scan(a.step, a.src).lower(*args).compile(bench.CHEAP_COMPILES)(*args)
  step, state, looped = compiled(b), b.state, []
  for i in range(n):
    state, loss = step(state, b.frozen, batches[i], b.active)
    looped.append(float(loss))
  np.testing.assert_allclose(np.asarray(scanned), looped, rtol=1e-5)


def test_bf16_keeps_float32_master_state():
  assert steps.caster(None) is None and steps.caster("float32") is None  # the default step gets no extra op
  prob = bench.problem(synthetic())
  f32, bf16 = bench.train_setup(prob, "adapt"), bench.train_setup(prob, "adapt", dtype="bfloat16")
  batch = data.train_batches(f32.src, f32.batch_size, seed=0, epoch=1)[0]
  s32, l32 = compiled(f32)(f32.state, f32.frozen, batch, f32.active)
  s16, l16 = compiled(bf16)(bf16.state, bf16.frozen, batch, bf16.active)
  assert jax.tree.structure(s16) == jax.tree.structure(s32)
  assert [x.dtype for x in jax.tree.leaves(s16)] == [x.dtype for x in jax.tree.leaves(s32)]
  assert l16.dtype == np.float32 and abs(float(l16) - float(l32)) < 2e-2 * abs(float(l32))


def test_a_training_run_compiles_each_step_once(tmp_path, monkeypatch):
  """Two epochs per stage (so a new epoch, the last full batch and the padded last eval batch are all seen):
  every jitted train and eval step of the run holds exactly one compiled program."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  made = []

  def recording(factory):
    def make(*args, **kwargs):
      made.append(factory(*args, **kwargs))
      return made[-1]

    return make

  monkeypatch.setattr(steps, "make_train_step", recording(steps.make_train_step))
  monkeypatch.setattr(steps, "make_eval_step", recording(steps.make_eval_step))
  cfg = synthetic()
  cfg.pretrain.epochs = cfg.adapt.epochs = 2
  cfg.pretrain.patience = cfg.adapt.patience = 5
  results = train_and_evaluate(cfg, tmp_path / "run")
  assert [s["epochs"] for s in results["stages"].values()] == [2, 2]
  assert len(made) >= 4  # a train and an eval step per stage (and the test pass's eval step)
  assert [step._cache_size() for step in made] == [1] * len(made)
