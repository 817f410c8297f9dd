"""The benchmark's CI mode end to end (no speed is asserted), and what its figures rely on: the stage-2 variants
compute the batched pass's loss, the epoch-in-scan trains on fit's batches, bf16 keeps float32 master state, and
a training run compiles each of its steps once (no recompilation on the last batch or a new epoch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, tiny

from mola_jax import data, plan, steps
from mola_jax.lab import bench, bench_setup
from mola_jax.train import train_and_evaluate


def synthetic(dropout: float = 0.0):
  """Tiny model on generated data, K = 3. Dropout off unless asked: losses of different programs then compare
  exactly, and the steps compile several times faster."""
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.model.itransformer.dropout = dropout
  return cfg


def context(cfg=None) -> bench_setup.Context:
  """A benchmark run's context in CI mode (cheap compiles)."""
  settings = bench.defaults()
  settings.tiny = True
  return bench_setup.Context(cfg or synthetic(), bench_setup.Settings.of(settings))


def batches(setup: bench_setup.Setup, n: int) -> list[dict]:
  """The first n training batches of epoch 1, as fit gathers them."""
  return [setup.windows.take(idx) for idx in data.train_order(setup.windows, setup.batch_size, seed=0, epoch=1)[:n]]


def test_tiny_cli_writes_every_figure(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  cmd = [sys.executable, "-m", "mola_jax.lab.bench", "--config", str(REPO / "configs" / "synthetic.py"), "--workdir",
         str(tmp_path), "--study.tiny=True"]  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "bench.json").read_text())
  for key in bench.REQUIRED:
    assert np.isfinite(result[key]) and result[key] > 0, key
  assert result["settings"]["tiny"]
  # The per-segment loop and the unshared prefix compute the batched pass's numbers (eval, whole test split).
  assert result["loop_max_rel_diff"] < 1e-5 and result["unshared_prefix_max_rel_diff"] < 1e-5
  assert {row["sweep"] for row in result["rows"] if "sweep" in row} == {"K", "T", "D"}
  assert {row["mode"] for row in result["rows"]} == {"chunk", "device", "dispatch"}
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


def test_every_measurement_is_registered_in_order():
  names = list(bench.MEASUREMENTS)
  assert names[:2] == ["stage1", "stage2"] and names.index("evaluations") < names.index("peaks_and_mfu")
  assert all(callable(fn) and fn.__doc__ is None or isinstance(fn.__doc__, str) for fn in bench.MEASUREMENTS.values())


@pytest.mark.parametrize("forward", ["loop", "unshared_prefix"])
def test_stage2_variants_give_the_batched_loss(forward):
  """Same weights (adapters randomised, so segments differ), same batches: the official K passes and the
  unshared prefix give the batched pass's loss, and after one update (equal gradients) still do."""
  ctx = context()
  prob = ctx.problem()
  model = bench_setup.new_model(prob, plan.ADAPT)
  bench_setup.randomise_adapters(model)
  losses = {}
  for name in ("batched", forward):
    setup = bench_setup.train_setup(ctx, prob, plan.ADAPT, forward=name, model=model)
    step, state, out = bench_setup.compile_step(ctx, setup)[0], setup.state, []
    for batch in batches(setup, 2):
      state, loss = step(state, batch, setup.active)
      out.append(float(loss))
    losses[name] = out
  np.testing.assert_allclose(losses[forward], losses["batched"], rtol=1e-5)


def test_the_chunk_program_trains_on_fit_batches():
  """fit's chunk (steps.make_train_chunk: a lax.scan gathering each batch with data.gather in its body) gives the
  losses of the step dispatched alone on the same batches; a step beyond `valid` changes nothing."""
  ctx = context()
  prob = ctx.problem()
  a, b = bench_setup.train_setup(ctx, prob, plan.ADAPT), bench_setup.train_setup(ctx, prob, plan.ADAPT)
  run, state, _ = bench_setup.chunk_program(ctx, a, "batched", None, False, None, 3)
  state, chunked = run(state, None)
  step, single, looped = bench_setup.compile_step(ctx, b)[0], b.state, []
  for batch in batches(b, 3):
    single, loss = step(single, batch, b.active)
    looped.append(float(loss))
  np.testing.assert_allclose(np.asarray(chunked), looped, rtol=1e-5)
  w = a.windows
  program = steps.make_train_chunk(a.opts, seq_len=w.seq_len, pred_len=w.pred_len)
  idx = data.train_order(w, a.batch_size, seed=a.seed, epoch=1)[:3]
  before = jax.tree.map(np.asarray, state)  # the program donates its state
  held, losses = program(state, w.arrays, idx, a.active, np.zeros(3, bool))
  for x, y in zip(jax.tree.leaves(held), jax.tree.leaves(before), strict=True):
    np.testing.assert_array_equal(np.asarray(x), y)
  assert not np.asarray(losses).any()


def test_bf16_keeps_float32_master_state():
  assert steps.caster(None) is None and steps.caster("float32") is None  # the default step gets no extra op
  ctx = context()
  prob = ctx.problem()
  f32 = bench_setup.train_setup(ctx, prob, plan.ADAPT)
  bf16 = bench_setup.train_setup(ctx, prob, plan.ADAPT, dtype="bfloat16")
  batch = batches(f32, 1)[0]
  s32, l32 = bench_setup.compile_step(ctx, f32)[0](f32.state, batch, f32.active)
  s16, l16 = bench_setup.compile_step(ctx, bf16)[0](bf16.state, batch, bf16.active)
  master = lambda s: s.replace(tx=None)  # each setup has its own optimizer object, a static field
  assert jax.tree.structure(master(s16)) == jax.tree.structure(master(s32))
  assert [x.dtype for x in jax.tree.leaves(s16)] == [x.dtype for x in jax.tree.leaves(s32)]
  assert l16.dtype == np.float32 and abs(float(l16) - float(l32)) < 2e-2 * abs(float(l32))


@pytest.mark.parametrize("segments", [4, 6])
def test_a_stage_compiles_at_most_two_train_programs_whatever_k(tmp_path, monkeypatch, segments):
  """Two epochs per stage, segments stopping as they go (patience 1, a high lr): a stage compiles at most two
  train programs (steps.segment_buckets: all K, and half of them), and one eval program serves its validation and
  its test pass (compiled once per split's shape: no recompilation on the last, padded batch or a new epoch)."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  made = {"train": [], "eval": []}

  def recording(factory, kind):
    def make(*args, **kwargs):
      made[kind].append(factory(*args, **kwargs))
      return made[kind][-1]

    return make

  steps.make_train_chunk.cache_clear()  # programs are cached per settings: count this run's compiles alone
  steps.make_eval_chunk.cache_clear()
  monkeypatch.setattr(steps, "make_train_chunk", recording(steps.make_train_chunk, "train"))
  monkeypatch.setattr(steps, "make_eval_chunk", recording(steps.make_eval_chunk, "eval"))
  cfg = synthetic()
  cfg.horizon, cfg.segment_len = 16 * segments, 16
  cfg.pretrain.epochs, cfg.adapt.epochs, cfg.adapt.patience, cfg.adapt.lr = 2, 4, 1, 3e-2
  results = train_and_evaluate(cfg, tmp_path / "run")
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  active = {r["active_segments"] for r in records if r["stage"] == "adapt" and "active_segments" in r}
  assert len(active) > 1, active  # segments did stop during stage 2
  assert results["stages"]["pretrain"]["epochs"] == 2
  train = [program._cache_size() for program in made["train"]]
  assert len(train) == 2 and train[0] == 1 and 1 <= train[1] <= 2, train  # stage 1: one; stage 2: at most two
  stage1, stage2, test = made["eval"]  # the test pass asks for stage 2's program again: the same one
  assert test is stage2 and stage1 is not stage2
  assert (stage1._cache_size(), stage2._cache_size()) == (1, 2)  # stage 2's: its validation rows, its test rows
