"""Benchmark: training throughput of both stages, test-split evaluation, compile time, memory, FLOPs and MFU, with
the variants side by side and the table of how the cost grows with K, T and the number of channels.

    python -m mola_jax.bench --config configs/etth1.py --workdir runs/bench_etth1          # the full benchmark
    python -m mola_jax.bench --config configs/synthetic.py --workdir /tmp/b --config.bench.tiny=True   # CI mode

Writes DIR/bench.json (every figure; the flat keys of REQUIRED are what scripts read) and DIR/bench.md (tables).
docs/performance.md explains the figures and holds the results.

How it measures (a throughput is windows per second = batch size x steps / wall seconds):
* Warm-up is excluded: every step is compiled ahead of time first (its compile time, XLA's FLOP count and its
  compiled memory are recorded), then `bench.warmup` untimed steps run; a figure is the median of
  `bench.repeats` timed repeats, each of enough steps to last about `bench.repeat_seconds`. A repeat ends with
  one block_until_ready; nothing inside it reads a value back to the host.
* The timed program is the compiled executable itself, so a batch of another shape (a ragged last batch, a new
  epoch) would be an error, not a silent recompile: the timed loops cross epoch ends on the real pipeline.
* Modes: `pipeline` is fit's inner loop (batches of the real train split, shuffled per epoch, gathered on the
  device from window indices by data.DeviceWindows); `device` steps over a few batches already on the device
  (the step alone); `scan` runs a whole epoch (CI mode: a few steps) as one jitted lax.scan over the series held
  on the device, windows gathered there by index, in the same order as the pipeline's epoch.
* Variants of stage 2 on identical batches: `batched` (models.predict: one pass with a leading K axis),
  `loop` (models.predict_per_segment: the official K passes), `unshared_prefix` (the layers before the first
  adapted layer computed K times), and `bf16` (compute_dtype bfloat16, float32 master weights).
* Weights are random (the cost does not depend on them); the accuracy section trains both dtypes from one init.
* MFU = achieved FLOP/s (compiled FLOPs per step / step seconds) over a peak: the FLOP/s of a large float32
  matmul measured on this machine (an attainable peak), and the vendor's nominal dense peak where known.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax import cli, config_lib, data, plan, runtime, steps
from mola_jax import workdir as workdir_lib
from mola_jax.metrics import evaluate
from mola_jax.models import build, predict, predict_per_segment

REQUIRED = (
  "stage1_train_windows_per_s",
  "stage2_train_windows_per_s",
  "stage2_loop_windows_per_s",
  "eval_test_seconds",
  "compile_seconds",
  "peak_rss_mb",
)

# Nominal dense peaks (FLOP/s) from the vendors' data sheets, by a substring of jax's device_kind. float32 is the
# non-tensor-core rate; XLA may run float32 matmuls as TF32 on NVIDIA GPUs, so the measured matmul is the fairer
# float32 denominator there.
NOMINAL_PEAK = {
  "H100": {"bfloat16": 989e12, "float32": 67e12},  # SXM
  "H200": {"bfloat16": 989e12, "float32": 67e12},
  "A100": {"bfloat16": 312e12, "float32": 19.5e12},
  "TPU v4": {"bfloat16": 275e12},
  "TPU v5 lite": {"bfloat16": 197e12},
  "TPU v6 lite": {"bfloat16": 918e12},
}


def unshared_prefix(model, batch, ctx):
  """`predict` with the layers before the first adapted layer computed K times (Ctx.share_prefix=False)."""
  return predict(model, batch, dataclasses.replace(ctx, share_prefix=False))


FORWARDS = {"batched": predict, "loop": predict_per_segment, "unshared_prefix": unshared_prefix}

# CI mode asserts no speed, so its compiles skip the backend's optimisation passes: about 4x less compile time.
CHEAP_COMPILES = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Settings:
  """cfg.bench, with CI mode (`tiny`) applied."""

  tiny: bool
  repeats: int
  warmup: int
  repeat_seconds: float
  min_steps: int
  max_steps: int
  segments: tuple
  horizons: tuple
  channels: tuple
  sweep_loop: bool
  accuracy_steps: int
  matmul_size: int
  compiler_options: dict | None = None  # XLA options of every compile (`aot`)

  @classmethod
  def from_cfg(cls, b) -> Settings:
    out = cls(
      bool(b.tiny),
      int(b.repeats),
      int(b.warmup),
      float(b.repeat_seconds),
      int(b.min_steps),
      int(b.max_steps),
      tuple(b.segments),
      tuple(b.horizons),
      tuple(b.channels),
      bool(b.sweep_loop),
      int(b.accuracy_steps),
      int(b.matmul_size),
    )
    if out.tiny:  # every code path, a few steps each
      out = dataclasses.replace(
        out,
        repeats=2,
        warmup=1,
        repeat_seconds=0.0,
        min_steps=3,
        max_steps=3,
        segments=out.segments[:2],
        horizons=out.horizons[:1],
        channels=out.channels[:1],
        sweep_loop=False,
        accuracy_steps=3,
        matmul_size=min(out.matmul_size, 256),
        compiler_options=CHEAP_COMPILES,
      )
    if out.repeats < 1 or out.min_steps < 1 or out.max_steps < out.min_steps or out.warmup < 0:
      raise config_lib.ConfigError(
        "bench.repeats and bench.min_steps must be >= 1, bench.max_steps >= bench.min_steps and bench.warmup >= 0"
      )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Problems (data, T, S) and their steps.


@dataclasses.dataclass
class Problem:
  cfg: object  # the config with this problem's data, horizon and segment_len
  series: data.Series
  horizon: int  # T
  s: int  # S
  k: int  # K = T / S

  @property
  def channels(self) -> int:
    return int(self.series.values.shape[1])

  def shape(self) -> dict:
    return {"T": self.horizon, "S": self.s, "K": self.k, "D": self.channels}


_SERIES: dict = {}


def problem(cfg, *, horizon: int | None = None, segment_len: int | None = None, channels: int | None = None) -> Problem:
  """The config's data (or synthetic data of `channels` channels) at horizon T with segment length S."""
  cfg = copy.deepcopy(cfg)
  if horizon is not None:
    cfg.horizon = horizon
  if segment_len is not None:
    cfg.segment_len = segment_len
  if channels is not None:
    cfg.data.name, cfg.data.path, cfg.data.synthetic_channels = "synthetic", None, channels
  run_plan = plan.make(cfg)
  key = (cfg.data.name, cfg.data.path, cfg.data.seq_len, cfg.data.synthetic_rows, cfg.data.synthetic_channels)
  if key not in _SERIES:
    _SERIES[key] = data.load_series(cfg.data)
  series = _SERIES[key]
  for split in ("train", "test"):  # raises DataError if T does not fit the splits
    data.window_source(series, split, cfg.data.seq_len, cfg.horizon)
  return Problem(cfg, series, cfg.horizon, run_plan.segment_len, run_plan.segments)


def model_key(cfg) -> str:
  """What a step's program depends on beyond its arguments' shapes: the model, its adapters, the look-back."""
  return json.dumps(
    [cfg.backbone, cfg.method, cfg.model[cfg.backbone].to_dict(), cfg.mola.to_dict(), cfg.data.seq_len],
    sort_keys=True,
    default=str,
  )


def new_model(prob: Problem, stage: str, seed: int = 0) -> nnx.Module:
  return build(
    prob.cfg,
    channels=prob.channels,
    marks=int(prob.series.marks.shape[1]),
    pred_len=prob.s,
    segments=0 if stage == "pretrain" else prob.k,
    rngs=nnx.Rngs(seed),
  )


_MODELS: dict = {}


@dataclasses.dataclass
class Setup:
  """One stage's train step and everything it is called with."""

  step: object  # the jitted step (steps.make_train_step)
  graphdef: object
  state: dict  # donated by the step: never reuse after a call
  frozen: object
  active: tuple  # the step's (segment ids, active mask): every segment trains
  src: data.WindowSource
  batch_size: int
  segments: int
  seed: int
  key: tuple  # what the step closes over, for the compile cache (`aot`)


def train_setup(
  prob: Problem,
  stage: str,
  *,
  forward: str = "batched",
  dtype: str | None = None,
  share_dropout: bool | None = None,
  model: nnx.Module | None = None,
  seed: int = 0,
  groups: int | None = None,
) -> Setup:
  """The stage's train step as fit builds it (recipe, schedule, split), on a fresh copy of `model`'s state."""
  cfg = prob.cfg
  recipe = cfg.pretrain if stage == "pretrain" else cfg.adapt
  k = 1 if stage == "pretrain" else prob.k
  src = data.window_source(prob.series, "train", cfg.data.seq_len, prob.s if stage == "pretrain" else prob.horizon)
  if model is None:  # one random model per shape, stage and seed: eager initialisation costs seconds on a CPU
    key = (model_key(cfg), tuple(prob.shape().items()), stage, seed)
    if key not in _MODELS:
      _MODELS[key] = new_model(prob, stage, seed)
    model = _MODELS[key]
  tx = steps.make_tx(steps.lr_schedule(recipe.lr, data.num_train_batches(src, recipe.batch_size), recipe.lr_decay))
  graphdef, state, frozen = steps.init_state(model, stage, tx, jax.random.key_data(jax.random.key(seed)))
  state = jax.tree.map(jnp.copy, state)  # the step donates it; the model keeps its own arrays
  share = cfg.mola.share_prefix_dropout if share_dropout is None else share_dropout
  step = steps.make_train_step(
    graphdef, tx, segments=k, share_prefix_dropout=share, forward=FORWARDS[forward], compute_dtype=dtype, groups=groups
  )
  key = (
    "train",
    model_key(cfg),
    stage,
    forward,
    dtype or "float32",
    share,
    k,
    recipe.lr,
    data.num_train_batches(src, recipe.batch_size),
    groups,
  )
  return Setup(step, graphdef, state, frozen, steps.training_segments([True] * k), src, recipe.batch_size, k, seed, key)


def fit_batches(src, batch_size: int, seed: int):
  """Training batches as fit makes them (gathered on the device from each epoch's window order), epoch after
  epoch, forever."""
  windows = data.DeviceWindows(src)
  for epoch in itertools.count(1):
    for idx in data.train_order(src, batch_size, seed=seed, epoch=epoch):
      yield windows.take(idx)


def epoch_starts(src, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """int32 [batches, B]: the window indices of one epoch's batches, in training's order (data.train_order)."""
  return data.train_order(src, batch_size, seed=seed, epoch=epoch)


def make_scan(step, src):
  """chunk(state, frozen, (values, marks), starts [n, B], active) -> (state, losses [n]): n train steps in one
  jitted lax.scan; the series stays on the device and each batch is gathered there by window index."""
  seq, pred = src.seq_len, src.pred_len

  def window(values, marks, i):
    a = src.start + i
    cut = jax.lax.dynamic_slice_in_dim
    return {
      "x": cut(values, a, seq),
      "x_mark": cut(marks, a, seq),
      "y": cut(values, a + seq, pred),
      "y_mark": cut(marks, a + seq, pred),
    }

  def chunk(state, frozen, series, starts, active):
    def body(st, idx):
      batch = jax.vmap(window, in_axes=(None, None, 0))(*series, idx)
      return step(st, frozen, batch, active)

    return jax.lax.scan(body, state, starts)

  return jax.jit(chunk, donate_argnums=0)


# ---------------------------------------------------------------------------------------------------------------
# Compiling and timing.


_COMPILED: dict = {}


def aot(fn, *args, key: tuple, options: dict | None = None):
  """-> (compiled executable, {compile_seconds, flops_per_call, bytes_per_device, temp_bytes, cached}). A program
  is compiled once per run: `key` (what the traced function closes over), the arguments' shapes and dtypes and
  the XLA `options` identify it, and a repeat (e.g. the same step timed in another mode) reuses the executable."""
  leaves, tree = jax.tree.flatten(args)
  full = (key, str(tree), tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves), str(options))
  if full in _COMPILED:
    compiled, info = _COMPILED[full]
    return compiled, info | {"cached": True}
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile(compiler_options=options) if options else fn.lower(*args).compile()
  seconds = time.perf_counter() - t0
  _COMPILED[full] = compiled, {"compile_seconds": seconds, "cached": False} | runtime.compiled_cost(compiled)
  return _COMPILED[full]


def timed(
  run, state, inputs, *, windows_per_call: int, st: Settings, min_calls: int | None = None, warmup: int | None = None
):
  """Median throughput of `run(state, next(inputs)) -> (state, out)` over st.repeats timed repeats, after
  st.warmup untimed calls and one more that sets how many calls a repeat makes.
  -> ({windows_per_s, call_seconds, calls_per_repeat, repeat_seconds}, state)."""
  for _ in range(st.warmup if warmup is None else warmup):
    state, out = run(state, next(inputs))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  state, out = run(state, next(inputs))
  jax.block_until_ready((state, out))
  one = time.perf_counter() - t0
  lo = st.min_steps if min_calls is None else min_calls
  calls = int(np.clip(math.ceil(st.repeat_seconds / max(one, 1e-9)), lo, max(lo, st.max_steps)))
  seconds = []
  for _ in range(st.repeats):
    t0 = time.perf_counter()
    for _ in range(calls):
      state, out = run(state, next(inputs))
    jax.block_until_ready((state, out))  # the only sync of a repeat
    seconds.append(time.perf_counter() - t0)
  per_call = statistics.median(seconds) / calls
  return {
    "windows_per_s": windows_per_call / per_call,
    "call_seconds": per_call,
    "calls_per_repeat": calls,
    "repeat_seconds": seconds,
  }, state


def compile_step(setup: Setup, options: dict | None = None):
  """The setup's train step compiled ahead of time for its batches -> (executable, info, cache key)."""
  first = next(fit_batches(setup.src, setup.batch_size, setup.seed))
  return *aot(setup.step, setup.state, setup.frozen, first, setup.active, key=setup.key, options=options), setup.key


def measure_train(
  prob: Problem,
  stage: str,
  st: Settings,
  *,
  mode: str = "pipeline",
  forward: str = "batched",
  dtype: str | None = None,
  share_dropout: bool | None = None,
  name: str = "",
  groups: int | None = None,
) -> dict:
  """Compile and time one stage's train step in one mode and variant -> a row."""
  setup = train_setup(prob, stage, forward=forward, dtype=dtype, share_dropout=share_dropout, groups=groups)
  b = setup.batch_size
  frozen, active = setup.frozen, setup.active
  compiled, info, key = compile_step(setup, st.compiler_options)
  flops = info["flops_per_call"]  # per step
  steps_per_call = 1
  if mode == "scan":
    starts = epoch_starts(setup.src, b, setup.seed, epoch=1)
    if st.tiny:
      starts = starts[: st.max_steps]
    steps_per_call = len(starts)
    series = jax.device_put((setup.src.values, setup.src.marks))
    starts = jax.device_put(starts)
    # XLA's cost analysis counts a loop body once, so the scan's FLOPs per step are the step's (above).
    compiled, info = aot(
      make_scan(setup.step, setup.src),
      setup.state,
      frozen,
      series,
      starts,
      active,
      key=key + ("scan", setup.src.start),
      options=st.compiler_options,
    )
    run = lambda state, _: compiled(state, frozen, series, starts, active)
    inputs = itertools.repeat(None)
  else:
    run = lambda state, batch: compiled(state, frozen, batch, active)
    if mode == "pipeline":
      inputs = fit_batches(setup.src, b, setup.seed)
    elif mode == "device":
      some = itertools.islice(data.train_batches(setup.src, b, seed=setup.seed, epoch=1), 8)
      inputs = itertools.cycle([jax.device_put(x) for x in some])
    else:
      raise ValueError(f"unknown mode {mode!r}")
  scan = mode == "scan"  # a call is a whole epoch: its calibration call is warm-up enough
  timing, _ = timed(
    run,
    setup.state,
    inputs,
    windows_per_call=b * steps_per_call,
    st=st,
    min_calls=1 if scan else None,
    warmup=0 if scan else None,
  )
  step_seconds = timing["call_seconds"] / steps_per_call
  return {
    "name": name or f"stage{1 if stage == 'pretrain' else 2}_{forward}_{mode}",
    "stage": stage,
    "variant": forward
    + ("" if dtype in (None, "float32") else f"_{dtype}")
    + ("_shared_dropout" if share_dropout else ""),
    "mode": mode,
    **prob.shape(),
    "K": setup.segments,
    "batch_size": b,
    "windows_per_s": timing["windows_per_s"],
    "step_ms": 1e3 * step_seconds,
    "flops_per_step": flops,
    "gflop_per_s": flops / step_seconds / 1e9,
    "bytes_per_device": info["bytes_per_device"],
    "temp_bytes": info["temp_bytes"],
    "compile_seconds": info["compile_seconds"],
    "compile_cached": info["cached"],
    "steps_per_repeat": timing["calls_per_repeat"] * steps_per_call,
    "steps_per_epoch": data.num_train_batches(setup.src, b),
  }


def randomise_adapters(model: nnx.Module, seed: int = 0) -> None:
  """Give every adapter parameter a random value (B = 0 at init would make all segments trivially equal)."""
  rng = np.random.default_rng(seed)  # host noise: nothing to compile
  noise = lambda x: jnp.asarray(np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype))
  nnx.update(model, jax.tree.map(noise, nnx.state(model, nnx.LoRAParam)))


def measure_eval(
  prob: Problem, model: nnx.Module, st: Settings, *, stage: str, forward: str = "batched", dtype: str | None = None
) -> dict:
  """Compile the eval step, then time metrics.evaluate over the whole test split (every window, padded last
  batch) -> {seconds, windows_per_s, compile_seconds, flops_per_batch, mse, per_step_mse}."""
  cfg = prob.cfg
  k = 1 if stage == "pretrain" else prob.k
  src = data.window_source(prob.series, "test", cfg.data.seq_len, prob.s if stage == "pretrain" else prob.horizon)
  graphdef, states = steps.eval_states(model, stage)
  step = steps.make_eval_step(graphdef, segments=k, forward=FORWARDS[forward], compute_dtype=dtype)
  windows = data.DeviceWindows(src)
  first = windows.take(*(part[0] for part in data.eval_order(src, cfg.data.eval_batch_size)))
  compiled, info = aot(
    step,
    steps.empty_acc(src.pred_len),
    states,
    first,
    key=("eval", model_key(cfg), stage, forward, dtype or "float32", k),
    options=st.compiler_options,
  )
  run = lambda: evaluate(compiled, states, windows, cfg.data.eval_batch_size, k)
  result = run()  # warm-up
  seconds = []
  for _ in range(st.repeats):
    t0 = time.perf_counter()
    run()  # ends with one host read of the sums
    seconds.append(time.perf_counter() - t0)
  sec = statistics.median(seconds)
  return {
    "seconds": sec,
    "windows_per_s": result["windows"] / sec,
    "windows": result["windows"],
    "batches": data.num_eval_batches(src, cfg.data.eval_batch_size),
    "compile_seconds": info["compile_seconds"],
    "flops_per_batch": info["flops_per_call"],
    "mse": result["mse"],
    "per_step_mse": result["per_step_mse"],
  }


def matmul_flops_per_s(n: int, dtype, st: Settings) -> float:
  """FLOP/s of an n x n x n matmul on the default device: an attainable peak (the MFU denominator)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda a, b: (a @ b, b))
  run = lambda b, _: f(a, b)[::-1]
  timing, _ = timed(run, a, itertools.repeat(None), windows_per_call=1, st=st)
  return 2.0 * n**3 / timing["call_seconds"]


def nominal_peak(kind: str, dtype: str) -> float | None:
  for name, peaks in NOMINAL_PEAK.items():
    if name.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def with_changes(prob: Problem, **changes) -> Problem:
  """`prob` with config keys changed, e.g. with_changes(prob, **{"mola.factored": True})."""
  cfg = copy.deepcopy(prob.cfg)
  for dotted, value in changes.items():
    *parents, last = dotted.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[last] = value
  return dataclasses.replace(prob, cfg=cfg)


def ffn_matmul(prob: Problem, st: Settings) -> dict:
  """FLOP/s of one matmul of the model's own FFN shape in stage 2 ([K B rows, d_in] x [d_in, d_out], the first
  adapted layer's), timed on this device in this run: the rate a step made of such matmuls could reach."""
  model = new_model(prob, "pretrain")
  rows, d_in, d_out = model.ffn_shape(prob.cfg.adapt.batch_size, prob.channels, int(prob.series.marks.shape[1]))
  rows *= prob.k
  a = jax.random.normal(jax.random.key(0), (rows, d_in))
  w = jax.random.normal(jax.random.key(1), (d_in, d_out))
  f = jax.jit(lambda a, w: (a, w + 1e-9 * (a @ w)[0]))  # the product feeds the next call: nothing is skipped
  timing, _ = timed(lambda w, _: f(a, w)[::-1], w, itertools.repeat(None), windows_per_call=1, st=st)
  return {"shape": [rows, d_in, d_out], "flop_per_s": 2.0 * rows * d_in * d_out / timing["call_seconds"]}


def compile_cold_warm(prob: Problem) -> dict:
  """Seconds to get the stage-2 train step ready with an empty persistent compilation cache (a first run) and
  again from a fresh jit object once the cache holds it (a rerun, or the next cell of a study)."""
  import tempfile

  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    previous = runtime.use_compile_cache(True, path=tmp)
    try:
      for name in ("cold", "warm"):
        setup = train_setup(prob, "adapt", seed=len(out))  # a fresh step: nothing cached in this process
        first = next(fit_batches(setup.src, setup.batch_size, setup.seed))
        t0 = time.perf_counter()
        setup.step.lower(setup.state, setup.frozen, first, setup.active).compile()
        out[name] = time.perf_counter() - t0
    finally:
      runtime.use_compile_cache(previous is not None, path=previous)
  return out


def stage2_runs(cfg, workdir: pathlib.Path) -> dict:
  """The config's whole stage 2 (fit with validation, early stopping and checkpoints, then the test pass) from one
  stage-1 model, with stopped segments skipped (the default) and computed (adapt.skip_stopped=False): wall
  seconds of each fit with a warm compilation cache, and the test MSE of each (the same to float rounding)."""
  from mola_jax.train import train_and_evaluate  # late: the benchmark's other parts need no training loop

  base = copy.deepcopy(cfg)
  base.stage = "pretrain"
  train_and_evaluate(base, workdir / "pretrain", overwrite=True)
  out = {}
  for skip in (True, False, True):  # the first run fills the compilation cache with the programs of every
    run_cfg = copy.deepcopy(cfg)  # active count, so the two timed runs compare compute, not compiles
    run_cfg.stage, run_cfg.init_from, run_cfg.adapt.skip_stopped = "adapt", str(workdir / "pretrain"), skip
    result = train_and_evaluate(run_cfg, workdir / f"stage2_skip_{skip}", overwrite=True)
    out["skipped" if skip else "computed"] = {
      "fit_seconds": result["stages"]["adapt"]["seconds"],
      "epochs": result["stages"]["adapt"]["epochs"],
      "test_mse": result["test_mse"],
    }
  return out


# ---------------------------------------------------------------------------------------------------------------
# The accuracy effect of bf16.


def train_steps(setup: Setup, n: int, st: Settings) -> tuple[dict, float]:
  """n train steps on the pipeline, as fit runs them -> (state, mean loss of the last tenth of the steps)."""
  step = compile_step(setup, st.compiler_options)[0]
  state, losses = setup.state, []
  for batch in itertools.islice(fit_batches(setup.src, setup.batch_size, setup.seed), n):
    state, loss = step(state, setup.frozen, batch, setup.active)
    losses.append(loss)
  tail = np.asarray(jax.device_get(losses[-max(1, n // 10) :]), np.float64)
  return state, float(tail.mean())


def accuracy(prob: Problem, st: Settings) -> dict:
  """Stage 1 then stage 2 from one random init, once in float32 and once in bfloat16 (master weights
  float32 either way): test MSE of each (evaluated in its own dtype), and the float32 result evaluated in
  bfloat16 (the effect of bf16 inference alone)."""
  out = {}
  for dtype in ("float32", "bfloat16"):
    s1 = train_setup(prob, "pretrain", dtype=dtype, seed=0)
    n1 = st.accuracy_steps or data.num_train_batches(s1.src, s1.batch_size)
    state, loss1 = train_steps(s1, n1, st)
    m1 = nnx.merge(s1.graphdef, *state["params"], state["stats"], s1.frozen)
    m2 = new_model(prob, "adapt", seed=1)
    nnx.update(m2, nnx.state(m1))  # the trained backbone; adapters as initialised (B = 0)
    s2 = train_setup(prob, "adapt", dtype=dtype, model=m2, seed=1)
    n2 = st.accuracy_steps or data.num_train_batches(s2.src, s2.batch_size)
    state, loss2 = train_steps(s2, n2, st)
    m2 = nnx.merge(s2.graphdef, *state["params"], state["stats"], s2.frozen)
    one = st if st.tiny else dataclasses.replace(st, repeats=1)
    out[dtype] = {
      "stage1_steps": n1,
      "stage2_steps": n2,
      "stage1_train_loss": loss1,
      "stage2_train_loss": loss2,
      "stage1_test_mse": measure_eval(prob, m1, one, stage="pretrain", dtype=dtype)["mse"],
      "test_mse": measure_eval(prob, m2, one, stage="adapt", dtype=dtype)["mse"],
    }
    if dtype == "float32":
      out["float32_weights_bfloat16_eval_test_mse"] = measure_eval(prob, m2, one, stage="adapt", dtype="bfloat16")[
        "mse"
      ]
  f32, bf16 = out["float32"]["test_mse"], out["bfloat16"]["test_mse"]
  out["bfloat16_rel_change_test_mse"] = (bf16 - f32) / f32
  out["bfloat16_eval_only_rel_change_test_mse"] = (out["float32_weights_bfloat16_eval_test_mse"] - f32) / f32
  return out


# ---------------------------------------------------------------------------------------------------------------
# The run.


def sweep_rows(cfg, st: Settings, log) -> tuple[list[dict], list[str]]:
  """Stage-2 training (batched, pipeline) over K (T fixed), over T (S = each T's default), over channels."""
  rows, skipped = [], []

  def add(sweep: str, label: str, make, **kw):
    try:
      prob = make()
    except (config_lib.ConfigError, data.DataError) as e:
      skipped.append(f"{sweep} {label}: {' '.join(str(e).split())}")
      return
    for forward in ("batched", "loop") if kw.pop("loop", False) and prob.k > 1 else ("batched",):
      row = measure_train(prob, "adapt", st, forward=forward, name=label) | {"sweep": sweep}
      rows.append(row)
      log(row)

  t = cfg.horizon
  for k in st.segments:
    if t % k:
      skipped.append(f"K {k}: does not divide T = {t}")
      continue
    add("K", f"K={k}", functools.partial(problem, cfg, segment_len=t // k), loop=st.sweep_loop)
  for h in st.horizons:
    options = cfg.segment_options.get(str(h))
    s = options[0] if options else cfg.segment_len
    add("T", f"T={h}", functools.partial(problem, cfg, horizon=h, segment_len=s))
  for d in st.channels:
    add("D", f"D={d}", functools.partial(problem, cfg, channels=d))
  return rows, skipped


def run(cfg, workdir) -> dict:
  plan.make(cfg)  # every config check
  if cfg.mesh.shape is not None:
    raise config_lib.ConfigError("the benchmark runs on one device; use python -m mola_jax.scaling for meshes")
  if cfg.method == "mtf":
    raise config_lib.ConfigError("the benchmark measures both stages; use --config.method=mola or lora")
  st = Settings.from_cfg(cfg.bench)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  device = jax.devices()[0]
  rows = []

  def log(row):
    print(
      f"{row['name']:<34} {row['windows_per_s']:10.1f} windows/s  {row['step_ms']:8.2f} ms/step  "
      f"{row['flops_per_step'] / 1e9:8.3f} GFLOP/step  compile {row['compile_seconds']:5.1f} s",
      flush=True,
    )

  def train(prob, stage, **kw):
    row = measure_train(prob, stage, st, **kw)
    rows.append(row)
    log(row)
    return row

  prob = problem(cfg)
  s1 = {m: train(prob, "pretrain", mode=m) for m in ("pipeline", "device", "scan")}
  s1_bf16 = train(prob, "pretrain", dtype="bfloat16", name="stage1_batched_pipeline_bf16")
  s2 = {m: train(prob, "adapt", mode=m) for m in ("pipeline", "device", "scan")}
  loop = train(prob, "adapt", forward="loop")
  unshared = train(prob, "adapt", forward="unshared_prefix")
  shared_dropout = {
    f: train(prob, "adapt", forward=f, share_dropout=True, name=f"stage2_{f}_shared_dropout")
    for f in ("batched", "unshared_prefix")
  }
  s2_bf16 = train(prob, "adapt", dtype="bfloat16", name="stage2_batched_pipeline_bf16")
  one_group = train(prob, "adapt", mode="device", groups=1, name="stage2_step_one_group")
  rate_key = f"model.{cfg.backbone}.dropout"
  no_dropout = (
    train(with_changes(prob, **{rate_key: 0.0}), "adapt", mode="device", name="stage2_step_no_dropout")
    if "dropout" in cfg.model[cfg.backbone]
    else None
  )
  ffn = ffn_matmul(prob, st)
  compile_times = compile_cold_warm(prob)
  print(
    f"FFN-shape matmul {ffn['shape']}: {ffn['flop_per_s'] / 1e9:.1f} GFLOP/s; stage-2 step compile "
    f"{compile_times['cold']:.2f} s cold, {compile_times['warm']:.2f} s warm",
    flush=True,
  )
  runs = stage2_runs(cfg, workdir / "stage2_runs")
  print(
    f"stage-2 fit: {runs['skipped']['fit_seconds']:.1f} s with stopped segments skipped, "
    f"{runs['computed']['fit_seconds']:.1f} s computed",
    flush=True,
  )
  form = {}  # how the adapters are applied: the materialised delta vs factored (models/adapters.py)
  for factored, name in ((False, "dense_delta"), (True, "factored")):
    variant = dataclasses.replace(prob, cfg=copy.deepcopy(prob.cfg))
    variant.cfg.mola.factored = factored
    form[name] = train(variant, "adapt", mode="device", name=f"stage2_step_{name}")

  model1 = new_model(prob, "pretrain")
  model2 = new_model(prob, "adapt")
  randomise_adapters(model2)
  ev1 = measure_eval(prob, model1, st, stage="pretrain")
  ev = {f: measure_eval(prob, model2, st, stage="adapt", forward=f) for f in FORWARDS}
  ev_bf16 = measure_eval(prob, model2, st, stage="adapt", dtype="bfloat16")
  for name, e in (
    [("stage1_eval_test", ev1)]
    + [(f"stage2_eval_test_{f}", e) for f, e in ev.items()]
    + [("stage2_eval_test_bf16", ev_bf16)]
  ):
    print(
      f"{name:<34} {e['seconds']:8.3f} s  {e['windows_per_s']:10.1f} windows/s  compile {e['compile_seconds']:5.1f} s",
      flush=True,
    )

  def rel_diff(e):  # the loop and the unshared prefix compute the same numbers as the batched pass
    a, b = np.asarray(ev["batched"]["per_step_mse"]), np.asarray(e["per_step_mse"])
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))

  sweeps, skipped = sweep_rows(cfg, st, log)
  rows += sweeps
  acc = accuracy(prob, st)
  print(
    f"bf16 accuracy: test mse float32 {acc['float32']['test_mse']:.5f}  bfloat16 "
    f"{acc['bfloat16']['test_mse']:.5f}  ({100 * acc['bfloat16_rel_change_test_mse']:+.2f}%)",
    flush=True,
  )

  peak = matmul_flops_per_s(st.matmul_size, jnp.float32, st)
  peak_bf16 = matmul_flops_per_s(st.matmul_size, jnp.bfloat16, st)
  nominal = nominal_peak(device.device_kind, "float32")
  nominal_bf16 = nominal_peak(device.device_kind, "bfloat16")

  def mfu(row, dtype="float32"):
    achieved = row["flops_per_step"] / (row["step_ms"] / 1e3)
    nom = nominal_bf16 if dtype == "bfloat16" else nominal
    return {
      "achieved_flop_per_s": achieved,
      "mfu_vs_measured_matmul": achieved / (peak_bf16 if dtype == "bfloat16" else peak),
      "mfu_vs_nominal": achieved / nom if nom else None,
    }

  stats = device.memory_stats() or {}
  compile_by_step = {
    "stage1_train": s1["pipeline"]["compile_seconds"],
    "stage1_eval": ev1["compile_seconds"],
    "stage2_train": s2["pipeline"]["compile_seconds"],
    "stage2_eval": ev["batched"]["compile_seconds"],
  }
  result = {
    "stage1_train_windows_per_s": s1["pipeline"]["windows_per_s"],
    "stage1_step_windows_per_s": s1["device"]["windows_per_s"],
    "stage1_scan_windows_per_s": s1["scan"]["windows_per_s"],
    "stage1_bf16_windows_per_s": s1_bf16["windows_per_s"],
    "stage2_train_windows_per_s": s2["pipeline"]["windows_per_s"],
    "stage2_step_windows_per_s": s2["device"]["windows_per_s"],
    "stage2_scan_windows_per_s": s2["scan"]["windows_per_s"],
    "stage2_loop_windows_per_s": loop["windows_per_s"],
    "stage2_batched_over_loop": s2["pipeline"]["windows_per_s"] / loop["windows_per_s"],
    "stage2_unshared_prefix_windows_per_s": unshared["windows_per_s"],
    "stage2_shared_over_unshared_prefix": s2["pipeline"]["windows_per_s"] / unshared["windows_per_s"],
    "stage2_shared_dropout_windows_per_s": shared_dropout["batched"]["windows_per_s"],
    "stage2_shared_dropout_over_unshared_prefix": (
      shared_dropout["batched"]["windows_per_s"] / shared_dropout["unshared_prefix"]["windows_per_s"]
    ),
    "stage2_bf16_windows_per_s": s2_bf16["windows_per_s"],
    "stage2_step_dense_delta_windows_per_s": form["dense_delta"]["windows_per_s"],
    "stage2_step_factored_windows_per_s": form["factored"]["windows_per_s"],
    "stage2_factored_over_dense_delta": form["factored"]["windows_per_s"] / form["dense_delta"]["windows_per_s"],
    "stage2_flops_per_step_dense_delta": form["dense_delta"]["flops_per_step"],
    "stage2_flops_per_step_factored": form["factored"]["flops_per_step"],
    "stage2_dropout_cost": (s2["device"]["step_ms"] / no_dropout["step_ms"]) if no_dropout else None,
    "stage2_groups_speedup": one_group["step_ms"] / s2["device"]["step_ms"],
    "ffn_matmul_shape": ffn["shape"],
    "ffn_matmul_flop_per_s": ffn["flop_per_s"],
    "stage2_step_over_ffn_matmul": s2["device"]["flops_per_step"] / (s2["device"]["step_ms"] / 1e3) / ffn["flop_per_s"],
    "stage2_compile_cold_seconds": compile_times["cold"],
    "stage2_compile_warm_seconds": compile_times["warm"],
    "stage2_fit_skipped_seconds": runs["skipped"]["fit_seconds"],
    "stage2_fit_computed_seconds": runs["computed"]["fit_seconds"],
    "stage2_fit_computed_over_skipped": runs["computed"]["fit_seconds"] / runs["skipped"]["fit_seconds"],
    "stage2_runs": runs,
    "eval_test_seconds": ev["batched"]["seconds"],
    "eval_test_windows_per_s": ev["batched"]["windows_per_s"],
    "eval_test_loop_seconds": ev["loop"]["seconds"],
    "eval_test_unshared_prefix_seconds": ev["unshared_prefix"]["seconds"],
    "eval_test_bf16_seconds": ev_bf16["seconds"],
    "eval_batched_over_loop": ev["loop"]["seconds"] / ev["batched"]["seconds"],
    "eval_shared_over_unshared_prefix": ev["unshared_prefix"]["seconds"] / ev["batched"]["seconds"],
    "stage1_eval_test_seconds": ev1["seconds"],
    "loop_max_rel_diff": rel_diff(ev["loop"]),
    "unshared_prefix_max_rel_diff": rel_diff(ev["unshared_prefix"]),
    "compile_seconds": sum(compile_by_step.values()),
    "compile_seconds_by_step": compile_by_step,
    "stage1_flops_per_step": s1["device"]["flops_per_step"],
    "stage2_flops_per_step": s2["device"]["flops_per_step"],
    "matmul_flop_per_s": peak,
    "matmul_bf16_flop_per_s": peak_bf16,
    "nominal_peak_flop_per_s": {"float32": nominal, "bfloat16": nominal_bf16},
    "mfu": {
      "stage1_step": mfu(s1["device"]),
      "stage2_step": mfu(s2["device"]),
      "stage1_train": mfu(s1["pipeline"]),
      "stage2_train": mfu(s2["pipeline"]),
      "stage2_bf16_train": mfu(s2_bf16, "bfloat16"),
    },
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    "device_peak_bytes": stats.get("peak_bytes_in_use"),
    "stage2_step_bytes_per_device": s2["device"]["bytes_per_device"],
    "eval": {
      name: {k: v for k, v in e.items() if k != "per_step_mse"}
      for name, e in [("stage1", ev1)] + [(f"stage2_{f}", e) for f, e in ev.items()] + [("stage2_bf16", ev_bf16)]
    },
    "accuracy_bf16": acc,
    "rows": rows,
    "skipped": skipped,
    "settings": {
      "config": cfg.data.name,
      "backbone": cfg.backbone,
      "method": cfg.method,
      **prob.shape(),
      "model": cfg.model[cfg.backbone].to_dict(),
      "pretrain_batch": cfg.pretrain.batch_size,
      "adapt_batch": cfg.adapt.batch_size,
      "eval_batch": cfg.data.eval_batch_size,
      "platform": device.platform,
      "device_kind": device.device_kind,
      "devices": jax.device_count(),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      **dataclasses.asdict(st),
    },
  }
  result["bench_seconds"] = time.perf_counter() - t_start
  workdir_lib.write_json(workdir / "bench.json", result, indent=1)
  workdir_lib.write_text(workdir / "bench.md", markdown(result))
  print(f"wrote {workdir / 'bench.json'} and bench.md ({result['bench_seconds']:.0f} s)")
  return result


def markdown(r: dict) -> str:
  """bench.md: the headline figures, the variants side by side, the sweeps, MFU, bf16 accuracy, memory."""
  s = r["settings"]
  g = lambda x: "—" if x is None else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
  pct = lambda x: "—" if x is None else f"{100 * x:.2f}%"
  out = [
    f"# Benchmark: {s['config']}, {s['backbone']} {s['method']}, T = {s['T']}, S = {s['S']}, K = {s['K']}, "
    f"D = {s['D']}",
    "",
    f"{s['device_kind']} ({s['platform']}), jax {s['jax']}, XLA_FLAGS `{s['xla_flags']}`, compiler options "
    f"`{s['compiler_options']}`; medians of "
    f"{s['repeats']} repeats; batch {s['pretrain_batch']} (stage 1), {s['adapt_batch']} (stage 2), "
    f"{s['eval_batch']} (eval)." + (" **CI mode (tiny): a smoke test, not a measurement.**" if s["tiny"] else ""),
    "",
    "| figure | value |",
    "|---|---|",
  ]
  for key in REQUIRED + (
    "stage2_step_windows_per_s",
    "stage2_scan_windows_per_s",
    "stage2_batched_over_loop",
    "stage2_dropout_cost",
    "stage2_groups_speedup",
    "stage2_step_over_ffn_matmul",
    "ffn_matmul_flop_per_s",
    "stage2_compile_cold_seconds",
    "stage2_compile_warm_seconds",
    "stage2_fit_skipped_seconds",
    "stage2_fit_computed_seconds",
    "stage2_fit_computed_over_skipped",
    "stage2_shared_over_unshared_prefix",
    "stage2_shared_dropout_over_unshared_prefix",
    "stage2_factored_over_dense_delta",
    "eval_test_windows_per_s",
    "eval_batched_over_loop",
    "eval_shared_over_unshared_prefix",
    "loop_max_rel_diff",
    "unshared_prefix_max_rel_diff",
  ):
    out.append(f"| `{key}` | {g(r[key])} |")

  out += [
    "",
    "## Evaluation of the whole test split",
    "",
    "| variant | seconds | windows/s | compile s |",
    "|---|---|---|---|",
  ]
  for name, e in r["eval"].items():
    out.append(f"| {name} | {g(e['seconds'])} | {g(e['windows_per_s'])} | {g(e['compile_seconds'])} |")

  head = (
    "| row | variant | mode | K | S | T | D | windows/s | ms/step | step time vs first | GFLOP/step | "
    "GFLOP/s | MiB compiled | compile s |"
  )
  rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

  def table(rows, relative: bool):
    lines, first = [head, rule], {}
    for row in rows:
      base = first.setdefault(row["variant"], row["step_ms"])  # the first row of the same variant
      cached = " (cached)" if row.get("compile_cached") else ""
      growth = f"{row['step_ms'] / base:.2f}x" if relative else "—"
      lines.append(
        f"| {row['name']} | {row['variant']} | {row['mode']} | {row['K']} | {row['S']} | {row['T']} | "
        f"{row['D']} | {g(row['windows_per_s'])} | {g(row['step_ms'])} | "
        f"{growth} | "
        f"{g(row['flops_per_step'] / 1e9)} | {g(row['gflop_per_s'])} | {g(row['bytes_per_device'] / 2**20)}"
        f" | {g(row['compile_seconds'])}{cached} |"
      )
    return lines

  out += ["", "## Training steps: both stages, modes and variants", ""]
  out += table([row for row in r["rows"] if "sweep" not in row], relative=False)
  for sweep, what in (
    ("K", "segments K at fixed T (S = T / K)"),
    ("T", "horizon T (S = its default)"),
    ("D", "channels D (synthetic data)"),
  ):
    rows = [row for row in r["rows"] if row.get("sweep") == sweep]
    if rows:
      out += ["", f"## How stage-2 cost grows with {what}", ""] + table(rows, relative=True)

  out += [
    "",
    "## FLOP/s and MFU",
    "",
    f"Measured matmul ({s['matmul_size']}^3): {g(r['matmul_flop_per_s'] / 1e9)} GFLOP/s float32, "
    f"{g(r['matmul_bf16_flop_per_s'] / 1e9)} GFLOP/s bfloat16. Nominal peak: "
    + ", ".join(f"{k} {g(v / 1e12) + ' TFLOP/s' if v else '—'}" for k, v in r["nominal_peak_flop_per_s"].items())
    + ".",
    "",
    "| step | achieved GFLOP/s | MFU vs measured matmul | MFU vs nominal peak |",
    "|---|---|---|---|",
  ]
  for name, v in r["mfu"].items():
    out.append(
      f"| {name} | {g(v['achieved_flop_per_s'] / 1e9)} | {pct(v['mfu_vs_measured_matmul'])} | "
      f"{pct(v['mfu_vs_nominal'])} |"
    )

  a = r["accuracy_bf16"]
  out += [
    "",
    "## bf16 compute (float32 master weights): accuracy",
    "",
    "Both stages trained from one init on the same batches, evaluated on the whole test split in the same dtype.",
    "",
    "| compute dtype | stage-1 steps | stage-2 steps | stage-1 test MSE | stage-2 test MSE |",
    "|---|---|---|---|---|",
  ]
  for d in ("float32", "bfloat16"):
    out.append(
      f"| {d} | {a[d]['stage1_steps']} | {a[d]['stage2_steps']} | {a[d]['stage1_test_mse']:.5f} | "
      f"{a[d]['test_mse']:.5f} |"
    )
  out += [
    "",
    f"Stage-2 test MSE change: {100 * a['bfloat16_rel_change_test_mse']:+.3f}% (bf16 training and eval); "
    f"{100 * a['bfloat16_eval_only_rel_change_test_mse']:+.3f}% (float32-trained weights, bf16 eval).",
    "",
    "## Memory",
    "",
    f"Peak host RSS {g(r['peak_rss_mb'])} MB; device peak "
    + (
      "— (not reported on this platform)"
      if r["device_peak_bytes"] is None
      else f"{g(r['device_peak_bytes'] / 2**20)} MiB"
    )
    + f"; compiled stage-2 step {g(r['stage2_step_bytes_per_device'] / 2**20)} MiB (arguments + outputs + "
    f"temporaries - donated). Benchmark wall time {r['bench_seconds']:.0f} s.",
  ]
  if r["skipped"]:
    out += ["", "Skipped: " + "; ".join(r["skipped"]) + "."]
  return "\n".join(out) + "\n"


def command() -> None:
  """`mola-bench` / `python -m mola_jax.bench`."""
  cli.config_command(run, "Where bench.json and bench.md go", multi_process=False)


if __name__ == "__main__":
  command()
