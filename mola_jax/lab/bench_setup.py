"""The benchmark's machinery: the problems it measures (data, T, S), each stage's train step as fit builds it, the
ahead-of-time compile of a program, and the timed loop. Nothing here outlives a benchmark run: what is worth
keeping between measurements (loaded series, random models, compiled programs) lives in a `Context` that the run
makes and drops.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mola_jax import config_lib, data, evaluation, plan, steps
from mola_jax.models import build, predict, predict_per_segment
from mola_jax.state import TrainState


def unshared_prefix(model, batch, ctx):
  """`predict` with the layers before the first adapted layer computed K times (Ctx.share_prefix=False)."""
  return predict(model, batch, dataclasses.replace(ctx, share_prefix=False))


FORWARDS = {"batched": predict, "loop": predict_per_segment, "unshared_prefix": unshared_prefix}

# CI mode asserts no speed, so its compiles skip the backend's optimisation passes: about 4x less compile time.
CHEAP_COMPILES = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Settings:
  """The study's settings (--study.*), with CI mode (`tiny`) applied."""

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
  compiler_options: dict | None = None  # XLA options of every compile

  @classmethod
  def of(cls, s: ml_collections.ConfigDict) -> Settings:
    names = [f.name for f in dataclasses.fields(cls) if f.name != "compiler_options"]
    out = cls(**{n: tuple(s[n]) if isinstance(s[n], (list, tuple)) else s[n] for n in names})
    if out.tiny:  # every code path, a few steps each
      out = dataclasses.replace(
        out, repeats=2, warmup=1, repeat_seconds=0.0, min_steps=3, max_steps=3, segments=out.segments[:2],
        horizons=out.horizons[:1], channels=out.channels[:1], sweep_loop=False, accuracy_steps=3,
        matmul_size=min(out.matmul_size, 256), compiler_options=CHEAP_COMPILES,
      )  # fmt: skip
    if out.repeats < 1 or out.min_steps < 1 or out.max_steps < out.min_steps or out.warmup < 0:
      raise config_lib.ConfigError(
        "study.repeats and study.min_steps must be >= 1, study.max_steps >= study.min_steps and study.warmup >= 0"
      )
    return out


@dataclasses.dataclass
class Problem:
  cfg: ml_collections.ConfigDict  # the config with this problem's data, horizon and segment_len
  series: data.Series
  horizon: int  # T
  s: int  # S
  k: int  # K = T / S

  @property
  def channels(self) -> int:
    return int(self.series.values.shape[1])

  @property
  def marks(self) -> int:
    return int(self.series.marks.shape[1])

  def shape(self) -> dict:
    return {"T": self.horizon, "S": self.s, "K": self.k, "D": self.channels}

  def changed(self, **values) -> Problem:
    """This problem with config keys changed (dotted), e.g. changed(**{"technique.mola.factored": True})."""
    return dataclasses.replace(self, cfg=config_lib.with_values(self.cfg, values))


@dataclasses.dataclass
class Context:
  """One benchmark run: its settings and what its measurements share (figures, rows, and caches that die with it)."""

  cfg: ml_collections.ConfigDict
  st: Settings
  workdir: pathlib.Path | None = None  # where measurements that train whole runs keep them
  figures: dict = dataclasses.field(default_factory=dict)  # flat key -> value (bench.json)
  rows: list = dataclasses.field(default_factory=list)  # the table of timed steps
  named: dict = dataclasses.field(default_factory=dict)  # row name -> row
  skipped: list = dataclasses.field(default_factory=list)
  series: dict = dataclasses.field(default_factory=dict)
  models: dict = dataclasses.field(default_factory=dict)
  compiled: dict = dataclasses.field(default_factory=dict)

  def problem(self, *, horizon=None, segment_len=None, channels=None) -> Problem:
    """The config's data (or synthetic data of `channels` channels) at horizon T with segment length S."""
    values = {k: v for k, v in (("horizon", horizon), ("segment_len", segment_len)) if v is not None}
    if channels is not None:
      values |= {"data.name": "synthetic", "data.path": None, "data.synthetic_channels": channels}
    cfg = config_lib.with_values(self.cfg, values)
    run_plan = plan.make(cfg)
    d = cfg.data
    key = (d.name, d.path, d.seq_len, d.synthetic_rows, d.synthetic_channels)
    if key not in self.series:
      self.series[key] = data.load_series(d)
    series = self.series[key]
    for split in ("train", "test"):  # raises DataError if T does not fit the splits
      data.window_source(series, split, d.seq_len, cfg.horizon)
    return Problem(cfg, series, cfg.horizon, run_plan.segment_len, run_plan.segments)

  def model(self, prob: Problem, stage: str, seed: int = 0) -> nnx.Module:
    """One random model per shape, stage and seed (eager initialisation costs seconds on a CPU)."""
    key = (model_key(prob.cfg), tuple(prob.shape().items()), stage, seed)
    if key not in self.models:
      self.models[key] = new_model(prob, stage, seed)
    return self.models[key]

  def aot(self, fn, *args, key: tuple):
    """-> (compiled executable, {compile_seconds, flops_per_call, bytes_per_device, temp_bytes, cached}): a program
    is compiled once per run; `key` (what the traced function closes over) and the arguments' shapes identify it."""
    leaves, tree = jax.tree.flatten(args)
    full = (key, str(tree), tuple((tuple(np.shape(x)), str(x.dtype)) for x in leaves))
    if full in self.compiled:
      compiled, info = self.compiled[full]
      return compiled, info | {"cached": True}
    t0 = time.perf_counter()
    options = self.st.compiler_options
    compiled = fn.lower(*args).compile(compiler_options=options) if options else fn.lower(*args).compile()
    info = {"compile_seconds": time.perf_counter() - t0, "cached": False} | compiled_cost(compiled)
    self.compiled[full] = compiled, info
    return compiled, info

  def add(self, row: dict) -> dict:
    self.rows.append(row)
    self.named[row["name"]] = row
    print(
      f"{row['name']:<34} {row['windows_per_s']:10.1f} windows/s  {row['step_ms']:8.2f} ms/step  "
      f"{row['flops_per_step'] / 1e9:8.3f} GFLOP/step  compile {row['compile_seconds']:5.1f} s",
      flush=True,
    )
    return row


def model_key(cfg) -> str:
  """What a step's program depends on beyond its arguments' shapes: the model, its adapters, the look-back."""
  spec = plan.model_spec(cfg)
  return json.dumps(
    [spec.backbone, spec.method, spec.sizes.to_dict(), spec.settings.to_dict(), spec.targets, spec.seq_len],
    sort_keys=True,
    default=str,
  )


def new_model(prob: Problem, stage: str, seed: int = 0) -> nnx.Module:
  segments = 0 if stage == plan.PRETRAIN else prob.k
  spec = plan.model_spec(prob.cfg)
  return build(spec, channels=prob.channels, marks=prob.marks, pred_len=prob.s, segments=segments, rngs=nnx.Rngs(seed))


@dataclasses.dataclass
class Setup:
  """One stage's train step and everything it is called with."""

  step: object  # the jitted step (variant_step)
  state: TrainState  # donated by the step: never reuse after a call
  opts: steps.StepOptions
  active: tuple  # the step's (segment ids, active mask): every segment trains
  windows: data.DeviceWindows  # the train split on the device
  batch_size: int
  segments: int
  seed: int
  key: tuple  # what the step closes over, for the compile cache (Context.aot)


def variant_step(opts: steps.StepOptions, forward: str = "batched", groups=None):
  """The train step of a benchmark variant, unjitted: the core's step (steps.train_step_fn) over the variant's
  forecast (FORWARDS: one batched pass, the official K passes, or the prefix computed per segment) in `groups`
  passes (None: the core's choice)."""
  return steps.train_step_fn(steps.train_forecast(groups, FORWARDS[forward]), opts)


def train_setup(ctx: Context, prob: Problem, stage: str, *, forward="batched", dtype=None, share_dropout=None,
                model=None, seed=0, groups=None) -> Setup:  # fmt: skip
  """The stage's train step as fit builds it (recipe, schedule, split), on a fresh copy of `model`'s state."""
  cfg = prob.cfg
  recipe = cfg.pretrain if stage == plan.PRETRAIN else cfg.adapt
  k = 1 if stage == plan.PRETRAIN else prob.k
  src = data.window_source(prob.series, "train", cfg.data.seq_len, prob.s if stage == plan.PRETRAIN else prob.horizon)
  model = model or ctx.model(prob, stage, seed)
  per_epoch = data.num_train_batches(src, recipe.batch_size)
  tx = steps.make_tx(steps.lr_schedule(recipe.lr, per_epoch, recipe.lr_decay, recipe.lr_decay_from))
  state = TrainState.create(model, stage, tx, jax.random.key_data(jax.random.key(seed)))
  state = jax.tree.map(jnp.copy, state)  # the step donates it; the model keeps its own arrays
  share = cfg.adapt.share_prefix_dropout if share_dropout is None else share_dropout
  opts = steps.StepOptions(k, compute_dtype=dtype, share_prefix_dropout=share)
  step = jax.jit(variant_step(opts, forward, groups), donate_argnums=0)
  key = ("train", model_key(cfg), stage, forward, dtype or "float32", share, k, recipe.lr, per_epoch, groups)
  segs = steps.training_segments([True] * k)
  return Setup(step, state, opts, segs, data.DeviceWindows(src), recipe.batch_size, k, seed, key)


def fit_batches(windows: data.DeviceWindows, batch_size: int, seed: int):
  """Training batches as fit makes them (gathered on the device from each epoch's window order), forever."""
  for epoch in itertools.count(1):
    for idx in data.train_order(windows, batch_size, seed=seed, epoch=epoch):
      yield windows.take(idx)


def chunk_program(ctx: Context, setup: Setup, forward: str, dtype, share_dropout, groups, steps_per_call: int):
  """fit's own program for the setup (steps.train_chunk_fn over the variant's step), compiled, and its fixed
  arguments over the epoch's first `steps_per_call` steps -> (run(state, _) -> (state, losses), state, info)."""
  w = setup.windows
  opts = dataclasses.replace(setup.opts, share_prefix_dropout=share_dropout, compute_dtype=dtype)
  chunk = steps.train_chunk_fn(variant_step(opts, forward, groups), seq_len=w.seq_len, pred_len=w.pred_len)
  program = jax.jit(chunk, donate_argnums=0)
  idx = data.train_order(w, setup.batch_size, seed=setup.seed, epoch=1)[:steps_per_call]  # [C, B]
  fixed = jax.device_put((w.arrays, idx, setup.active, np.ones(idx.shape[0], bool)))
  compiled, info = ctx.aot(program, setup.state, *fixed, key=setup.key + ("chunk", idx.shape[0]))
  return (lambda st, _: compiled(st, *fixed)), setup.state, info


def compile_step(ctx: Context, setup: Setup):
  """The setup's train step compiled ahead of time for its batches -> (executable, info)."""
  first = next(fit_batches(setup.windows, setup.batch_size, setup.seed))
  return ctx.aot(setup.step, setup.state, first, setup.active, key=setup.key)


def timed(run, state, inputs, *, windows_per_call: int, st: Settings, min_calls=None, warmup=None):
  """Median throughput of `run(state, next(inputs)) -> (state, out)` over st.repeats timed repeats, after
  st.warmup untimed calls and one more that sets how many calls a repeat makes. A repeat ends with one
  block_until_ready; nothing inside it reads a value back. -> ({windows_per_s, call_seconds, calls_per_repeat,
  repeat_seconds}, state)."""
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
  info = {"windows_per_s": windows_per_call / per_call, "call_seconds": per_call, "calls_per_repeat": calls}
  return info | {"repeat_seconds": seconds}, state


def step_inputs(setup: Setup, mode: str):
  """What a train step dispatched alone reads: `dispatch` fit's batches as the per-step loop made them (new indices
  each step, gathered on the device: one gather and one step dispatched per step), `device` 8 batches already on
  the device, cycled (the step alone)."""
  if mode == "dispatch":
    return fit_batches(setup.windows, setup.batch_size, setup.seed)
  if mode == "device":
    order = data.train_order(setup.windows, setup.batch_size, seed=setup.seed, epoch=1)[:8]
    return itertools.cycle([jax.block_until_ready(setup.windows.take(idx)) for idx in order])
  raise ValueError(f"unknown mode {mode!r}")


def measure_train(ctx: Context, prob: Problem, stage: str, *, mode="chunk", forward="batched", dtype=None,
                  share_dropout=None, name="", groups=None) -> dict:  # fmt: skip
  """Compile and time one stage's train step in one mode and variant -> a row (added to the context). `chunk`:
  fit's loop, chunks of cfg.chunk_steps steps (CI mode: study.max_steps) as one program; `dispatch`, `device`:
  the step dispatched alone (step_inputs)."""
  setup = train_setup(ctx, prob, stage, forward=forward, dtype=dtype, share_dropout=share_dropout, groups=groups)
  b = setup.batch_size
  compiled, info = compile_step(ctx, setup)
  flops, per_call = info["flops_per_call"], 1  # XLA counts a loop body once: a chunk's FLOPs per step are these
  if mode == "chunk":
    per_call = min(ctx.cfg.chunk_steps, ctx.st.max_steps if ctx.st.tiny else ctx.cfg.chunk_steps)
    per_call = min(per_call, data.num_train_batches(setup.windows, b))
    share = prob.cfg.adapt.share_prefix_dropout if share_dropout is None else share_dropout
    run, state, info = chunk_program(ctx, setup, forward, dtype, share and stage == plan.ADAPT, groups, per_call)
    inputs = itertools.repeat(None)
  else:
    active, state = setup.active, setup.state
    run, inputs = (lambda st, batch: compiled(st, batch, active)), step_inputs(setup, mode)
  chunk = mode == "chunk"  # a call is many steps: its calibration call is warm-up enough
  timing, _ = timed(run, state, inputs, windows_per_call=b * per_call, st=ctx.st, min_calls=1 if chunk else None,
                    warmup=0 if chunk else None)  # fmt: skip
  step_seconds = timing["call_seconds"] / per_call
  variant = forward + ("" if dtype in (None, "float32") else f"_{dtype}") + ("_shared_dropout" if share_dropout else "")
  return ctx.add({
    "name": name or f"stage{1 if stage == plan.PRETRAIN else 2}_{forward}_{mode}", "stage": stage,
    "variant": variant, "mode": mode, **prob.shape(), "K": setup.segments, "batch_size": b,
    "windows_per_s": timing["windows_per_s"], "step_ms": 1e3 * step_seconds, "flops_per_step": flops,
    "gflop_per_s": flops / step_seconds / 1e9, "bytes_per_device": info["bytes_per_device"],
    "temp_bytes": info["temp_bytes"], "compile_seconds": info["compile_seconds"], "compile_cached": info["cached"],
    "steps_per_call": per_call, "steps_per_repeat": timing["calls_per_repeat"] * per_call,
    "steps_per_epoch": data.num_train_batches(setup.windows, b),
  })  # fmt: skip


def randomise_adapters(model: nnx.Module, seed: int = 0) -> None:
  """Give every adapter parameter a random value (B = 0 at init would make all segments trivially equal)."""
  rng = np.random.default_rng(seed)  # host noise: nothing to compile
  noise = lambda x: jnp.asarray(np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype))
  nnx.update(model, jax.tree.map(noise, nnx.state(model, nnx.LoRAParam)))


def measure_eval(ctx: Context, prob: Problem, model: nnx.Module, *, stage: str, forward="batched", dtype=None,
                 repeats=None) -> dict:  # fmt: skip
  """Compile the eval chunk, then time evaluation.evaluate over the whole test split (every window, padded last
  batch) -> {seconds, windows_per_s, compile_seconds, flops_per_batch, mse, per_step_mse}."""
  cfg, k = prob.cfg, 1 if stage == plan.PRETRAIN else prob.k
  src = data.window_source(prob.series, "test", cfg.data.seq_len, prob.s if stage == plan.PRETRAIN else prob.horizon)
  state = TrainState.create(model, stage)
  windows, size = data.DeviceWindows(src), cfg.data.eval_batch_size
  opts = steps.StepOptions(k, compute_dtype=dtype)
  one = steps.eval_step_fn(opts, forward=FORWARDS[forward])
  program = jax.jit(steps.eval_chunk_fn(one, seq_len=src.seq_len, pred_len=src.pred_len))
  e = steps.EVAL_CHUNK
  args = jax.device_put((windows.arrays, np.zeros((e, size), np.int32), np.ones((e, size), bool), np.ones(e, bool)))
  key = ("eval", model_key(cfg), stage, forward, dtype or "float32", k)
  compiled, info = ctx.aot(program, state, *args, key=key)
  ev = plan.Evaluation(src.seq_len, size, "full", 0, dtype or "float32", ())
  idx, mask = data.eval_order(windows, size)
  run = lambda: evaluation.scores(evaluation.batch_sums(compiled, state, windows.arrays, idx, mask), ev, segments=k,
                                  channels=windows.values.shape[-1])  # fmt: skip
  result, seconds = run(), []  # the first: warm-up
  for _ in range(repeats or ctx.st.repeats):
    t0 = time.perf_counter()
    run()  # ends with one host read of the sums
    seconds.append(time.perf_counter() - t0)
  sec = statistics.median(seconds)
  return {
    "seconds": sec, "windows_per_s": result["windows"] / sec, "windows": result["windows"],
    "batches": data.num_eval_batches(src, size), "compile_seconds": info["compile_seconds"],
    "flops_per_batch": info["flops_per_call"], "mse": result["mse"], "per_step_mse": result["per_step_mse"],
  }  # fmt: skip


def compiled_cost(compiled) -> dict:
  """XLA's FLOPs and memory of a compiled program, per device: {flops_per_call, bytes_per_device (arguments +
  outputs + temporaries - donated buffers; -1 where the platform reports none), temp_bytes, memory (the parts)}."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  parts = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
  )
  memory = {k: int(getattr(mem, k)) for k in parts} if mem else {}
  total = (
    (
      memory["argument_size_in_bytes"]
      + memory["output_size_in_bytes"]
      + memory["temp_size_in_bytes"]
      - memory["alias_size_in_bytes"]
    )
    if memory
    else -1
  )
  return {
    "flops_per_call": float(cost.get("flops", float("nan"))) if cost else float("nan"),
    "bytes_per_device": total,
    "temp_bytes": memory.get("temp_size_in_bytes", -1),
    "memory": memory,
  }
