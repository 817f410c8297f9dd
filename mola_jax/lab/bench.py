"""Benchmark: training throughput of both stages, test-split evaluation, compile time, memory, FLOPs and MFU, with
the variants side by side and the table of how the cost grows with K, T and the number of channels.

    python -m mola_jax.lab.bench --config etth1 --workdir runs/bench_etth1          # the full benchmark
    python -m mola_jax.lab.bench --config synthetic --workdir /tmp/b --study.tiny=True   # CI mode

Writes DIR/bench.json (every figure; the flat keys of REQUIRED are what scripts read) and DIR/bench.md (tables,
lab/bench_report.py). docs/performance.md explains the figures and holds the results.

The benchmark is its MEASUREMENTS, run in order, each a small function of the run's Context that records flat
figures (and timed rows) for the ones after it and for bench.json; adding a measurement is one registered
function. How it measures (a throughput is windows per second = batch size x steps / wall seconds):
* Warm-up is excluded: every program is compiled ahead of time first (its compile time, XLA's FLOP count and its
  compiled memory are recorded), then `warmup` untimed steps run; a figure is the median of `repeats` timed
  repeats, each of enough steps to last about `repeat_seconds`. A repeat ends with one block_until_ready.
* The timed program is the compiled executable itself, so a batch of another shape would be an error, not a
  silent recompile.
* Modes: `chunk` is fit's loop (chunks of cfg.chunk_steps steps of the real train split, shuffled per epoch, as
  one jitted lax.scan whose body gathers each batch on the device: steps.make_train_chunk, the same program);
  `dispatch` dispatches each step alone with its gather (fit's loop before it ran in chunks); `device` cycles
  over 8 batches already on the device (the step alone).
* Variants of stage 2 on identical batches: `batched` (models.predict: one pass with a leading K axis), `loop`
  (models.predict_per_segment: the official K passes), `unshared_prefix` (the layers before the first adapted
  layer computed K times), and `bf16` (compute_dtype bfloat16, float32 master weights).
* Weights are random (the cost does not depend on them); the accuracy measurement trains both dtypes from one init.
* MFU = achieved FLOP/s (compiled FLOPs per step / step seconds) over a peak: the FLOP/s of a large float32
  matmul measured on this machine (an attainable peak), and the vendor's nominal dense peak where known.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import pathlib
import resource
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mola_jax import config_lib, data, plan, runtime
from mola_jax import workdir as workdir_lib
from mola_jax.lab import bench_report, study, targets
from mola_jax.lab.bench_setup import (
  FORWARDS,
  Context,
  Settings,
  compile_step,
  fit_batches,
  measure_eval,
  measure_train,
  new_model,
  randomise_adapters,
  timed,
  train_setup,
)

REQUIRED = (
  "stage1_train_windows_per_s",
  "stage2_train_windows_per_s",
  "stage2_loop_windows_per_s",
  "eval_test_seconds",
  "compile_seconds",
  "peak_rss_mb",
)

# Nominal dense peaks (FLOP/s) from the vendors' data sheets (lab/targets.py's CHIPS), by a substring of jax's
# device_kind. float32 is full float32 precision: the non-tensor-core rate on a GPU (XLA may run float32 matmuls
# as TF32 there, so the measured matmul is the fairer float32 denominator), six bfloat16 passes on a TPU.
NOMINAL_PEAK = {chip.kind: {d: chip.peaks[d] for d in ("bfloat16", "float32")} for chip in targets.CHIPS}


def defaults() -> ml_collections.ConfigDict:
  """Throughputs are medians of `repeats` timed repeats after `warmup` untimed steps; a repeat runs enough steps
  to last about `repeat_seconds` (within min/max_steps)."""
  s = ml_collections.ConfigDict()
  s.tiny = False  # CI mode: 3 steps a repeat, 2 repeats, sweeps cut to K[:2], T[:1], D[:1]; no speed asserted
  s.repeats, s.warmup, s.repeat_seconds, s.min_steps, s.max_steps = 5, 2, 2.0, 5, 200
  s.segments = (1, 2, 4, 8, 24)  # K sweep at T = horizon (S = T / K); a K that does not divide T is skipped
  s.horizons = (96, 192, 336, 720)  # T sweep, S = each T's default segment length
  s.channels = (7, 21, 321)  # channel sweep, on synthetic data with the config's model
  s.sweep_loop = True  # also time the per-segment loop (the official K passes) in the K sweep
  s.accuracy_steps = 0  # bf16 vs float32: train steps per stage from one init; 0 = one epoch each
  s.matmul_size = 2048  # square matmul that measures the attainable FLOP/s (the MFU denominator)
  return s


# The modes of a train step (bench_setup.measure_train) and the figure each gives: stage{1,2}_<figure>_windows_per_s.
MODES = (("chunk", "train"), ("device", "step"), ("dispatch", "dispatch"))

MEASUREMENTS: dict = {}  # name -> measure(ctx): records ctx.figures (and rows), in registration order


def measurement(fn):
  MEASUREMENTS[fn.__name__] = fn
  return fn


@measurement
def stage1(ctx: Context) -> None:
  """Stage 1's train step in the three modes, and in bf16."""
  prob, f = ctx.problem(), ctx.figures
  for mode, key in MODES:
    f[f"stage1_{key}_windows_per_s"] = measure_train(ctx, prob, plan.PRETRAIN, mode=mode)["windows_per_s"]
  bf16 = measure_train(ctx, prob, plan.PRETRAIN, dtype="bfloat16", name="stage1_batched_chunk_bf16")
  f["stage1_bf16_windows_per_s"] = bf16["windows_per_s"]
  f["stage1_flops_per_step"] = ctx.named["stage1_batched_device"]["flops_per_step"]


@measurement
def stage2(ctx: Context) -> None:
  """Stage 2's train step in the three modes, in bf16, and its variants on the same batches."""
  prob, f = ctx.problem(), ctx.figures
  for mode, key in MODES:
    f[f"stage2_{key}_windows_per_s"] = measure_train(ctx, prob, plan.ADAPT, mode=mode)["windows_per_s"]
  f["stage2_bf16_windows_per_s"] = measure_train(
    ctx, prob, plan.ADAPT, dtype="bfloat16", name="stage2_batched_chunk_bf16"
  )["windows_per_s"]
  f["stage2_chunk_over_dispatch"] = f["stage2_train_windows_per_s"] / f["stage2_dispatch_windows_per_s"]
  train = f["stage2_train_windows_per_s"]
  f["stage2_loop_windows_per_s"] = measure_train(ctx, prob, plan.ADAPT, forward="loop")["windows_per_s"]
  f["stage2_batched_over_loop"] = train / f["stage2_loop_windows_per_s"]
  unshared = measure_train(ctx, prob, plan.ADAPT, forward="unshared_prefix")["windows_per_s"]
  f["stage2_unshared_prefix_windows_per_s"], f["stage2_shared_over_unshared_prefix"] = unshared, train / unshared
  shared = {
    fw: measure_train(ctx, prob, plan.ADAPT, forward=fw, share_dropout=True, name=f"stage2_{fw}_shared_dropout")
    for fw in ("batched", "unshared_prefix")
  }
  f["stage2_shared_dropout_windows_per_s"] = shared["batched"]["windows_per_s"]
  f["stage2_shared_dropout_over_unshared_prefix"] = (
    shared["batched"]["windows_per_s"] / shared["unshared_prefix"]["windows_per_s"]
  )
  device = ctx.named["stage2_batched_device"]
  f["stage2_flops_per_step"], f["stage2_step_bytes_per_device"] = device["flops_per_step"], device["bytes_per_device"]


@measurement
def stage2_step_costs(ctx: Context) -> None:
  """What parts of the stage-2 step cost: one group of segments instead of one per core, dropout, and the two
  ways a bank applies its delta (materialised vs factored, models/adapters.py)."""
  prob, f, device = ctx.problem(), ctx.figures, ctx.named["stage2_batched_device"]
  one = measure_train(ctx, prob, plan.ADAPT, mode="device", groups=1, name="stage2_step_one_group")
  f["stage2_groups_speedup"] = one["step_ms"] / device["step_ms"]
  f["stage2_dropout_cost"] = None
  if "dropout" in ctx.cfg.model[ctx.cfg.backbone]:
    quiet = prob.changed(**{f"model.{ctx.cfg.backbone}.dropout": 0.0})
    no = measure_train(ctx, quiet, plan.ADAPT, mode="device", name="stage2_step_no_dropout")
    f["stage2_dropout_cost"] = device["step_ms"] / no["step_ms"]
  if "factored" not in ctx.cfg.technique[ctx.cfg.method]:  # a low-rank method: the delta has two forms
    return
  factored = f"technique.{ctx.cfg.method}.factored"
  form = {
    name: measure_train(ctx, prob.changed(**{factored: value}), plan.ADAPT, mode="device", name=f"stage2_step_{name}")
    for value, name in ((False, "dense_delta"), (True, "factored"))
  }
  f["stage2_step_dense_delta_windows_per_s"] = form["dense_delta"]["windows_per_s"]
  f["stage2_step_factored_windows_per_s"] = form["factored"]["windows_per_s"]
  f["stage2_factored_over_dense_delta"] = form["factored"]["windows_per_s"] / form["dense_delta"]["windows_per_s"]
  f["stage2_flops_per_step_dense_delta"] = form["dense_delta"]["flops_per_step"]
  f["stage2_flops_per_step_factored"] = form["factored"]["flops_per_step"]


@measurement
def ffn_matmul(ctx: Context) -> None:
  """FLOP/s of one matmul of the model's own FFN shape in stage 2 ([K B rows, d_in] x [d_in, d_out], the first
  adapted layer's), timed on this device in this run: the rate a step made of such matmuls could reach."""
  prob = ctx.problem()
  rows, d_in, d_out = new_model(prob, plan.PRETRAIN).ffn_shape(ctx.cfg.adapt.batch_size, prob.channels, prob.marks)
  rows *= prob.k
  a = jax.random.normal(jax.random.key(0), (rows, d_in))
  w = jax.random.normal(jax.random.key(1), (d_in, d_out))
  fn = jax.jit(lambda a, w: (a, w + 1e-9 * (a @ w)[0]))  # the product feeds the next call: nothing is skipped
  timing, _ = timed(lambda w, _: fn(a, w)[::-1], w, itertools.repeat(None), windows_per_call=1, st=ctx.st)
  rate, device = 2.0 * rows * d_in * d_out / timing["call_seconds"], ctx.named["stage2_batched_device"]
  ctx.figures |= {"ffn_matmul_shape": [rows, d_in, d_out], "ffn_matmul_flop_per_s": rate}
  ctx.figures["stage2_step_over_ffn_matmul"] = device["flops_per_step"] / (device["step_ms"] / 1e3) / rate


@measurement
def compile_cold_warm(ctx: Context) -> None:
  """Seconds to get the stage-2 train step ready with an empty persistent compilation cache (a first run) and
  again from a fresh jit object once the cache holds it (a rerun, or the next cell of a study)."""
  prob, out = ctx.problem(), {}
  with tempfile.TemporaryDirectory() as tmp:
    previous = runtime.use_compile_cache(True, path=tmp)
    try:
      for name in ("cold", "warm"):
        setup = train_setup(ctx, prob, plan.ADAPT, seed=len(out))  # a fresh step: nothing cached in this process
        first = next(fit_batches(setup.windows, setup.batch_size, setup.seed))
        t0 = time.perf_counter()
        setup.step.lower(setup.state, first, setup.active).compile()
        out[name] = time.perf_counter() - t0
    finally:
      runtime.use_compile_cache(previous is not None, path=previous)
  ctx.figures |= {"stage2_compile_cold_seconds": out["cold"], "stage2_compile_warm_seconds": out["warm"]}


@measurement
def stage2_fit(ctx: Context) -> None:
  """The config's whole stage 2 (fit with validation, early stopping and checkpoints, then the test pass) from one
  stage-1 model, stopped segments skipped (the default) and computed (adapt.skip_stopped=False): wall seconds of
  each fit with a warm compilation cache, and their test MSE (the same to float rounding)."""
  from mola_jax.train import train_and_evaluate  # late: the other measurements need no training loop

  root = ctx.workdir / "stage2_runs"
  train_and_evaluate(config_lib.with_values(ctx.cfg, {"stage": "pretrain"}), root / "pretrain", overwrite=True)
  runs = {}
  for skip in (True, False, True):  # the first run fills the compilation cache with the programs of every
    values = {"stage": "adapt", "init_from": str(root / "pretrain"), "adapt.skip_stopped": skip}  # active count
    result = train_and_evaluate(config_lib.with_values(ctx.cfg, values), root / f"stage2_skip_{skip}", overwrite=True)
    adapt = result["stages"]["adapt"]
    runs["skipped" if skip else "computed"] = {
      "fit_seconds": adapt["seconds"], "epochs": adapt["epochs"], "test_mse": result["test_mse"]
    }  # fmt: skip
  f = ctx.figures
  f["stage2_runs"] = runs
  f["stage2_fit_skipped_seconds"], f["stage2_fit_computed_seconds"] = (runs[k]["fit_seconds"] for k in runs)
  f["stage2_fit_computed_over_skipped"] = f["stage2_fit_computed_seconds"] / f["stage2_fit_skipped_seconds"]


@measurement
def evaluations(ctx: Context) -> None:
  """The whole test split through the eval step: stage 1, stage 2 in each forward variant (their per-step MSE
  must agree) and in bf16."""
  prob, f = ctx.problem(), ctx.figures
  model2 = new_model(prob, plan.ADAPT)
  randomise_adapters(model2)
  ev = {"stage1": measure_eval(ctx, prob, new_model(prob, plan.PRETRAIN), stage=plan.PRETRAIN)}
  ev |= {f"stage2_{fw}": measure_eval(ctx, prob, model2, stage=plan.ADAPT, forward=fw) for fw in FORWARDS}
  ev["stage2_bf16"] = measure_eval(ctx, prob, model2, stage=plan.ADAPT, dtype="bfloat16")
  for name, e in ev.items():
    print(f"eval {name:<29} {e['seconds']:8.3f} s  {e['windows_per_s']:10.1f} windows/s  "
          f"compile {e['compile_seconds']:5.1f} s", flush=True)  # fmt: skip
  batched = np.asarray(ev["stage2_batched"]["per_step_mse"])
  rel = lambda e: float(np.max(np.abs(batched - np.asarray(e["per_step_mse"]))) / np.max(np.abs(batched)))
  sec = {name: e["seconds"] for name, e in ev.items()}
  f |= {"eval_test_seconds": sec["stage2_batched"], "eval_test_windows_per_s": ev["stage2_batched"]["windows_per_s"]}
  f["eval_test_loop_seconds"], f["eval_test_unshared_prefix_seconds"] = (
    sec["stage2_loop"],
    sec["stage2_unshared_prefix"],
  )
  f |= {"eval_test_bf16_seconds": sec["stage2_bf16"], "stage1_eval_test_seconds": sec["stage1"]}
  f["eval_batched_over_loop"] = sec["stage2_loop"] / sec["stage2_batched"]
  f["eval_shared_over_unshared_prefix"] = sec["stage2_unshared_prefix"] / sec["stage2_batched"]
  f["loop_max_rel_diff"], f["unshared_prefix_max_rel_diff"] = rel(ev["stage2_loop"]), rel(ev["stage2_unshared_prefix"])
  f["eval"] = {name: {k: v for k, v in e.items() if k != "per_step_mse"} for name, e in ev.items()}
  by_step = {"stage1_train": ctx.named["stage1_batched_chunk"]["compile_seconds"],
             "stage1_eval": ev["stage1"]["compile_seconds"],
             "stage2_train": ctx.named["stage2_batched_chunk"]["compile_seconds"],
             "stage2_eval": ev["stage2_batched"]["compile_seconds"]}  # fmt: skip
  f["compile_seconds"], f["compile_seconds_by_step"] = sum(by_step.values()), by_step


@measurement
def sweeps(ctx: Context) -> None:
  """Stage-2 training (batched, fit's chunks) over K (T fixed), over T (S = each T's default), over channels."""
  cfg, st, t = ctx.cfg, ctx.st, ctx.cfg.horizon
  todo = []  # (sweep, label, problem arguments, also the loop)
  for k in st.segments:
    if t % k:
      ctx.skipped.append(f"K {k}: does not divide T = {t}")
    else:
      todo.append(("K", f"K={k}", {"segment_len": t // k}, st.sweep_loop))
  for h in st.horizons:
    options = cfg.segment_options.get(str(h))
    todo.append(("T", f"T={h}", {"horizon": h, "segment_len": options[0] if options else cfg.segment_len}, False))
  todo += [("D", f"D={d}", {"channels": d}, False) for d in st.channels]
  for sweep, label, args, loop in todo:
    try:
      prob = ctx.problem(**args)
    except (config_lib.ConfigError, data.DataError) as e:
      ctx.skipped.append(f"{sweep} {label}: {' '.join(str(e).split())}")
      continue
    for forward in ("batched", "loop") if loop and prob.k > 1 else ("batched",):
      measure_train(ctx, prob, plan.ADAPT, forward=forward, name=label)["sweep"] = sweep


def train_steps(ctx: Context, setup, n: int) -> tuple[dict, float]:
  """n train steps on fit's batches, one dispatch each -> (state, mean loss of the last tenth of the steps)."""
  step = compile_step(ctx, setup)[0]
  state, losses = setup.state, []
  for batch in itertools.islice(fit_batches(setup.windows, setup.batch_size, setup.seed), n):
    state, loss = step(state, batch, setup.active)
    losses.append(loss)
  return state, float(np.mean(jax.device_get(losses[-max(1, n // 10) :])))


def trained(ctx: Context, prob, dtype: str) -> dict:
  """Stage 1, then stage 2 on its backbone, from one random init in `dtype` compute -> their steps, losses and
  test MSE (and the models)."""
  one = None if ctx.st.tiny else 1  # one timed evaluation repeat: only the MSE is wanted
  s1 = train_setup(ctx, prob, plan.PRETRAIN, dtype=dtype, seed=0)
  n1 = ctx.st.accuracy_steps or data.num_train_batches(s1.windows, s1.batch_size)
  state, loss1 = train_steps(ctx, s1, n1)
  m1 = state.model()
  m2 = new_model(prob, plan.ADAPT, seed=1)
  nnx.update(m2, nnx.state(m1))  # the trained backbone; adapters as initialised (B = 0)
  s2 = train_setup(ctx, prob, plan.ADAPT, dtype=dtype, model=m2, seed=1)
  n2 = ctx.st.accuracy_steps or data.num_train_batches(s2.windows, s2.batch_size)
  state, loss2 = train_steps(ctx, s2, n2)
  m2 = state.model()
  return {
    "stage1_steps": n1, "stage2_steps": n2, "stage1_train_loss": loss1, "stage2_train_loss": loss2,
    "stage1_test_mse": measure_eval(ctx, prob, m1, stage=plan.PRETRAIN, dtype=dtype, repeats=one)["mse"],
    "test_mse": measure_eval(ctx, prob, m2, stage=plan.ADAPT, dtype=dtype, repeats=one)["mse"], "model": m2,
  }  # fmt: skip


@measurement
def accuracy_bf16(ctx: Context) -> None:
  """Both stages trained in float32 and in bfloat16 compute (float32 master weights either way), each evaluated in
  its own dtype, and the float32 result evaluated in bfloat16 (the effect of bf16 inference alone)."""
  prob = ctx.problem()
  out = {dtype: trained(ctx, prob, dtype) for dtype in ("float32", "bfloat16")}
  one = None if ctx.st.tiny else 1
  f32_model = out["float32"].pop("model")
  out["bfloat16"].pop("model")
  bf16_eval = measure_eval(ctx, prob, f32_model, stage=plan.ADAPT, dtype="bfloat16", repeats=one)["mse"]
  f32, bf16 = out["float32"]["test_mse"], out["bfloat16"]["test_mse"]
  out |= {"float32_weights_bfloat16_eval_test_mse": bf16_eval, "bfloat16_rel_change_test_mse": (bf16 - f32) / f32}
  out["bfloat16_eval_only_rel_change_test_mse"] = (bf16_eval - f32) / f32
  ctx.figures["accuracy_bf16"] = out
  print(f"bf16 accuracy: test mse float32 {f32:.5f}  bfloat16 {bf16:.5f}  ({100 * (bf16 - f32) / f32:+.2f}%)")


def matmul_flops_per_s(n: int, dtype, st: Settings) -> float:
  """FLOP/s of an n x n x n matmul on the default device: an attainable peak (the MFU denominator)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  fn = jax.jit(lambda a, b: (a @ b, b))
  timing, _ = timed(lambda b, _: fn(a, b)[::-1], a, itertools.repeat(None), windows_per_call=1, st=st)
  return 2.0 * n**3 / timing["call_seconds"]


def nominal_peak(kind: str, dtype: str) -> float | None:
  return next((peaks.get(dtype) for name, peaks in NOMINAL_PEAK.items() if name.lower() in kind.lower()), None)


@measurement
def peaks_and_mfu(ctx: Context) -> None:
  """The measured matmul peaks, the nominal ones, and each headline step's MFU against both."""
  f, kind = ctx.figures, jax.devices()[0].device_kind
  f["matmul_flop_per_s"] = matmul_flops_per_s(ctx.st.matmul_size, jnp.float32, ctx.st)
  f["matmul_bf16_flop_per_s"] = matmul_flops_per_s(ctx.st.matmul_size, jnp.bfloat16, ctx.st)
  f["nominal_peak_flop_per_s"] = {d: nominal_peak(kind, d) for d in ("float32", "bfloat16")}

  def mfu(row, dtype="float32"):
    achieved, nominal = row["flops_per_step"] / (row["step_ms"] / 1e3), f["nominal_peak_flop_per_s"][dtype]
    measured = f["matmul_bf16_flop_per_s"] if dtype == "bfloat16" else f["matmul_flop_per_s"]
    return {"achieved_flop_per_s": achieved, "mfu_vs_measured_matmul": achieved / measured,
            "mfu_vs_nominal": achieved / nominal if nominal else None}  # fmt: skip

  n = ctx.named
  f["mfu"] = {"stage1_step": mfu(n["stage1_batched_device"]), "stage2_step": mfu(n["stage2_batched_device"]),
              "stage1_train": mfu(n["stage1_batched_chunk"]), "stage2_train": mfu(n["stage2_batched_chunk"]),
              "stage2_bf16_train": mfu(n["stage2_batched_chunk_bf16"], "bfloat16")}  # fmt: skip


@measurement
def memory(ctx: Context) -> None:
  stats = jax.devices()[0].memory_stats() or {}
  ctx.figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
  ctx.figures["device_peak_bytes"] = stats.get("peak_bytes_in_use")


def settings_record(ctx: Context) -> dict:
  cfg, device, prob = ctx.cfg, jax.devices()[0], ctx.problem()
  return {
    "config": cfg.data.name, "backbone": cfg.backbone, "method": cfg.method, **prob.shape(),
    "model": cfg.model[cfg.backbone].to_dict(), "pretrain_batch": cfg.pretrain.batch_size,
    "adapt_batch": cfg.adapt.batch_size, "eval_batch": cfg.data.eval_batch_size, "platform": device.platform,
    "device_kind": device.device_kind, "devices": jax.device_count(), "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""), **dataclasses.asdict(ctx.st),
  }  # fmt: skip


def run(cfg, settings, workdir) -> dict:
  """Every measurement in order -> the result (also DIR/bench.json and DIR/bench.md)."""
  run_plan = plan.make(cfg)  # every config check
  if cfg.mesh.shape is not None:
    raise config_lib.ConfigError("the benchmark runs on one device; use python -m mola_jax.lab.scaling for meshes")
  if not run_plan.two_stage:
    raise config_lib.ConfigError(f"the benchmark measures both stages; method {cfg.method} has one: use mola")
  t0, workdir = time.perf_counter(), pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ctx = Context(copy.deepcopy(cfg), Settings.of(settings), workdir=workdir)
  for measure in MEASUREMENTS.values():
    measure(ctx)
  result = ctx.figures | {"rows": ctx.rows, "skipped": ctx.skipped, "settings": settings_record(ctx)}
  result["bench_seconds"] = time.perf_counter() - t0
  workdir_lib.write_json(workdir / "bench.json", result, indent=1)
  workdir_lib.write_text(workdir / "bench.md", bench_report.markdown(result, REQUIRED))
  print(f"wrote {workdir / 'bench.json'} and bench.md ({result['bench_seconds']:.0f} s)")
  return result


def command() -> None:
  """`mola-bench` / `python -m mola_jax.lab.bench`."""
  study.command(run, defaults(), "Where bench.json and bench.md go", multi_process=False)


if __name__ == "__main__":
  command()
