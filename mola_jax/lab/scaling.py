"""Scaling study: for every mesh shape and global batch size, compile the train step ahead of time, record its
compiled memory and FLOPs per device, then time it.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python -m mola_jax.lab.scaling --config etth1 --workdir runs/scaling           # 8 simulated CPU devices
    python -m mola_jax.lab.scaling --config etth1 --workdir /shared/scaling \\
      --study.meshes=8x1,16x1,32x1,16x2 --study.batches=256,1024 --study.rules=segment   # a pod (launch/README.md)

Writes DIR/scaling.csv (mesh, devices, global_batch, step_seconds, windows_per_second, bytes_per_device,
flops_per_step), DIR/scaling.json (the same rows plus the memory breakdown, FLOPs per device, compile time and
the run's settings) and DIR/scaling.png (throughput and scaling efficiency against devices).

* The step is the real one (steps.train_step_fn, jitted under the layout by sharding.jit), stage 2 by default:
  MoLA with K = T / S segments, on real windows of the config's dataset. Weights are random: the cost does not
  depend on them.
* bytes_per_device = arguments + outputs + temporaries - donated (aliased) buffers of the compiled program, per
  device. flops_per_step = the compiled per-device FLOPs x devices (XLA's cost analysis; CPU counts are
  approximate). step_seconds = throughput: of 3 repeats of `--study.steps` steps dispatched back to back (one
  wait at the end of each), after `--study.warmup` untimed ones, the median repeat's seconds per step.
* Scaling efficiency = (throughput(n) / throughput(n0)) / (n / n0), n0 the smallest device count measured at the
  same global batch (strong scaling).
* Simulated CPU devices share the host's cores, so their timings show the program's overheads, not speed-up;
  memory and FLOPs per device are meaningful. On a pod, every process runs this same command
  (MOLA_DISTRIBUTED=1); sub-meshes take the same number of devices from every process; process 0 writes.
"""

from __future__ import annotations

import csv
import math
import pathlib
import statistics
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mola_jax import config_lib, data, distributed, plan, sharding, steps
from mola_jax import workdir as workdir_lib
from mola_jax.lab import bench_setup, study
from mola_jax.models import build
from mola_jax.state import TrainState

HOST_CALLS = 9  # timed chunk dispatches of the host-time measurement (the median is reported)
REPEATS = 3  # timed repeats of `--study.steps` steps each; the median repeat's seconds per step is reported

COLUMNS = (
  "mesh",
  "devices",
  "global_batch",
  "step_seconds",
  "windows_per_second",
  "bytes_per_device",
  "flops_per_step",
  "host_ms_per_step",
)


def default_meshes(n: int, processes: int = 1) -> list[tuple[int, int]]:
  """Data parallel on p, 2p, 4p, ... n devices (p processes: a mesh must span every process, since every process
  runs every computation), plus n devices as (n/2) x 2 and (n/4) x 4."""
  out, d = [], processes
  while d < n:
    out.append((d, 1))
    d *= 2
  out.append((n, 1))
  out += [(n // m, m) for m in (2, 4) if n % m == 0 and n // m >= 1]
  return list(dict.fromkeys(out))


def parse_meshes(text: str | None, n: int, processes: int = 1) -> list[tuple[int, int]]:
  if not text:
    return default_meshes(n, processes)
  try:
    meshes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
  except ValueError:
    raise config_lib.ConfigError(f"study.meshes {text!r}: use DATAxMODEL items such as 8x1,4x2") from None
  for m in meshes:
    if len(m) != 2 or min(m) < 1 or math.prod(m) > n:
      raise config_lib.ConfigError(f"study.meshes: {m} is not DATAxMODEL with at most {n} devices")
  return meshes


def model_and_batches(cfg, stage_name: str, batch_sizes):
  """-> (graphdef, host state, segments, {global batch: host batch}) for the study's step."""
  series = data.load_series(cfg.data)
  run_plan = plan.make(cfg)
  stage = next(st for st in run_plan.method_stages if st.name == stage_name)
  model = build(
    run_plan.model,
    channels=series.values.shape[1],
    marks=series.marks.shape[1],
    pred_len=stage.pred_len,
    segments=stage.segments if stage.name == plan.ADAPT else 0,
    rngs=nnx.Rngs(cfg.seed),
  )
  graphdef, state = nnx.split(model)
  k = stage.segments
  src = data.window_source(series, "train", cfg.data.seq_len, stage.window)
  batches = {b: data.host_batch(src, data.train_order(src, b, seed=cfg.seed, epoch=1)[0]) for b in batch_sizes}
  return graphdef, jax.tree.map(np.asarray, state), k, batches, src


def measure(layout, graphdef, host_state, batch, *, stage: str, segments: int, cfg, warmup: int, timed: int):
  """Compile the train step for `layout` and this batch ahead of time, then time it. -> one record."""
  with sharding.use(layout.mesh, layout.rules):
    model = nnx.merge(graphdef, jax.tree.map(np.asarray, host_state))  # new Variables: the step donates them
    sharding.place_model(model)
    state = new_state(model, stage, cfg)
    opts = steps.StepOptions(segments, share_prefix_dropout=cfg.adapt.share_prefix_dropout and stage == plan.ADAPT)
    step = sharding.jit(steps.train_step_fn(steps.train_forecast(), opts), donate_argnums=0, layout=layout)
    segs = sharding.replicate(steps.training_segments([True] * segments))
    args = (state, sharding.global_batch(batch, layout), segs)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_seconds = time.perf_counter() - t0
    cost = bench_setup.compiled_cost(compiled)
    state, rest = args[0], args[1:]
    for _ in range(warmup):
      state, loss = compiled(state, *rest)
    jax.block_until_ready(state)
    seconds = []  # throughput: `timed` steps dispatched back to back, one wait at the end of each repeat
    for _ in range(REPEATS):
      t0 = time.perf_counter()
      for _ in range(timed):
        state, loss = compiled(state, *rest)
      jax.block_until_ready((state, loss))
      seconds.append((time.perf_counter() - t0) / timed)
  devices = layout.mesh.devices.size
  step_seconds = statistics.median(seconds)
  flops = cost["flops_per_call"]
  global_batch = int(np.shape(batch["x"])[0])
  return {
    "mesh": sharding.mesh_name(layout.mesh),
    "devices": devices,
    "global_batch": global_batch,
    "step_seconds": step_seconds,
    "windows_per_second": global_batch / step_seconds,
    "bytes_per_device": cost["bytes_per_device"],
    "flops_per_step": flops * devices,
    "flops_per_device": flops,
    "memory": cost["memory"],
    "compile_seconds": compile_seconds,
    "step_seconds_repeats": seconds,
    "loss": float(distributed.fetch(loss)),
  }


def measure_host(layout, graphdef, host_state, src, batch_size: int, *, stage: str, segments: int, cfg) -> dict:
  """The host's share of a train step as fit dispatches it, in chunks of cfg.chunk_steps steps and one step a
  call (chunk_steps=1) -> host ms per call and per step of both."""
  c = cfg.chunk_steps
  with sharding.use(layout.mesh, layout.rules):
    model = nnx.merge(graphdef, jax.tree.map(np.asarray, host_state))
    sharding.place_model(model)
    state, windows = new_state(model, stage, cfg), data.DeviceWindows(src)
    order = data.train_order(windows, batch_size, seed=cfg.seed, epoch=1)  # [steps, B]
    opts = steps.StepOptions(segments, share_prefix_dropout=cfg.adapt.share_prefix_dropout and stage == plan.ADAPT)
    chunked, state = dispatch_seconds(opts, state, windows, order, c, layout)
    single, state = dispatch_seconds(opts, state, windows, order, 1, layout)
  return {
    "chunk_steps": c, "host_ms_per_call": chunked * 1e3, "host_ms_per_step": chunked * 1e3 / c,
    "host_ms_per_step_unchunked": single * 1e3,
  }  # fmt: skip


def host_text(row: dict) -> str:
  if "host_ms_per_step" not in row:
    return ""
  return (
    f"host {row['host_ms_per_step']:.3f} ms/step in chunks of {row['chunk_steps']}, "
    f"{row['host_ms_per_step_unchunked']:.3f} one step a call  "
  )


def new_state(model, stage: str, cfg) -> TrainState:
  tx = steps.make_tx(steps.lr_schedule(cfg[stage].lr, 1000, cfg[stage].lr_decay))
  return TrainState.create(model, stage, tx, jax.random.key_data(jax.random.key(cfg.seed)))


def dispatch_seconds(opts, state, windows, order, c: int, layout):
  """Median host seconds of a call of fit's chunk program of `c` steps (steps.make_train_chunk), with what fit
  does per chunk (index arrays cut and replicated) -> (seconds, state). The device is idle before each timed call,
  so only the host's work is timed: the call returns once the program is enqueued. The first call compiles."""
  program = steps.make_train_chunk(opts, seq_len=windows.seq_len, pred_len=windows.pred_len, layout=layout)
  segs, series, seconds = steps.training_segments(np.ones(opts.segments, bool)), windows.arrays, []
  for _ in range(HOST_CALLS + 1):
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    idx = np.zeros((c, order.shape[1]), np.int32)
    n = min(c, len(order))
    idx[:n] = order[:n]
    state, losses = program(state, series, *sharding.replicate((idx, segs, np.arange(c) < n)))
    seconds.append(time.perf_counter() - t0)
  jax.block_until_ready((state, losses))
  return statistics.median(seconds[1:]), state


def efficiency(rows: list[dict]) -> list[float]:
  """Strong-scaling efficiency of every row against the smallest device count at its global batch."""
  base = {}
  for r in sorted(rows, key=lambda r: r["devices"]):
    base.setdefault(r["global_batch"], r)
  return [
    (r["windows_per_second"] / base[r["global_batch"]]["windows_per_second"])
    / (r["devices"] / base[r["global_batch"]]["devices"])
    for r in rows
  ]


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  eff = efficiency(rows)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  series: dict = {}
  for r, e in zip(rows, eff, strict=True):
    model = int(r["mesh"].split("x")[1])
    series.setdefault((r["global_batch"], model), []).append((r["devices"], r["windows_per_second"], e, r["mesh"]))
  for (batch, model), pts in sorted(series.items()):
    pts.sort()
    n, wps, e, names = zip(*pts, strict=True)
    label = f"batch {batch}" + (f", model axis {model}" if model > 1 else "")
    style = "-o" if model == 1 else "--s"
    ax1.plot(n, wps, style, label=label)
    ax2.plot(n, e, style, label=label)
    for x, y, name in zip(n, wps, names, strict=True):
      ax1.annotate(name, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
  for ax in (ax1, ax2):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("devices")
    ax.grid(alpha=0.3)
  ax1.set_ylabel("windows / second")
  ax1.set_title("throughput")
  ax2.axhline(1.0, color="grey", lw=0.8)
  ax2.set_ylabel("scaling efficiency")
  ax2.set_title("efficiency vs. the smallest mesh at that batch")
  ax2.legend(fontsize=8, loc="upper right")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  workdir_lib.save_figure(fig, path, dpi=120)
  plt.close(fig)


def run(cfg, workdir, *, meshes: str | None, batches: str, rules: str, stage: str, warmup: int, timed: int,
        host_time: bool = True) -> list:  # fmt: skip
  plan.make(cfg)  # every config check
  if rules not in sharding.RULES:
    raise config_lib.ConfigError(f"unknown study.rules {rules!r}; use one of {', '.join(sharding.RULES)}")
  if stage not in ("adapt", "pretrain"):
    raise config_lib.ConfigError(f"study.stage must be adapt or pretrain, not {stage!r}")
  if stage == "adapt" and not plan.make(cfg).two_stage:
    raise config_lib.ConfigError(f"method {cfg.method} has no stage 2; use --study.stage=pretrain or another method")
  try:
    batch_sizes = [int(b) for b in batches.split(",") if b.strip()]
  except ValueError:
    raise config_lib.ConfigError(f"study.batches {batches!r}: use integers such as 32,128") from None
  mesh_list = parse_meshes(meshes, jax.device_count(), jax.process_count())
  graphdef, host_state, k, host_batches, src = model_and_batches(cfg, stage, batch_sizes)
  workdir = pathlib.Path(workdir)
  lead = distributed.is_lead()
  if lead:
    workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for shape in mesh_list:
    mesh = jax.make_mesh(
      shape,
      sharding.MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * 2,
      devices=distributed.mesh_devices(math.prod(shape)),
    )
    layout = sharding.Layout(mesh, sharding.RULES[rules], rules)
    for b in batch_sizes:
      if b % shape[0]:
        logging.warning("skipping mesh %s with global batch %d: the batch does not split over %d", shape, b, shape[0])
        continue
      row = measure(
        layout, graphdef, host_state, host_batches[b], stage=stage, segments=k, cfg=cfg, warmup=warmup, timed=timed
      )
      if host_time:
        row |= measure_host(layout, graphdef, host_state, src, b, stage=stage, segments=k, cfg=cfg)
      rows.append(row)
      if lead:
        print(
          f"mesh {row['mesh']:>5}  batch {b:>5}  step {row['step_seconds'] * 1e3:8.2f} ms  "
          f"{row['windows_per_second']:10.1f} windows/s  {row['bytes_per_device'] / 2**20:8.2f} MiB/device  "
          f"{row['flops_per_step'] / 1e9:8.3f} GFLOP/step  {host_text(row)}(compile {row['compile_seconds']:.1f} s)",
          flush=True,
        )
  if lead and rows:
    write(cfg, workdir, rows, stage=stage, segments=k, rules=rules, warmup=warmup, timed=timed)
  return rows


def write(
  cfg, workdir: pathlib.Path, rows: list[dict], *, stage: str, segments: int, rules: str, warmup: int, timed: int
):
  """scaling.csv, scaling.json (with the strong-scaling efficiency and the settings) and scaling.png."""
  with workdir_lib.atomic(workdir / "scaling.csv") as tmp, tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  for r, e in zip(rows, efficiency(rows), strict=True):
    r["efficiency"] = e
  settings = {
    "dataset": cfg.data.name,
    "backbone": cfg.backbone,
    "method": cfg.method,
    "stage": stage,
    "horizon": cfg.horizon,
    "segments": segments,
    "rules": rules,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "processes": jax.process_count(),
    "jax": jax.__version__,
    "warmup": warmup,
    "timed_steps": timed,
  }
  workdir_lib.write_json(workdir / "scaling.json", {"settings": settings, "rows": rows}, indent=1)
  title = (
    f"{cfg.data.name} {cfg.backbone} {cfg.method} stage {stage} (K={segments}), rules {rules}, "
    f"{jax.device_count()} {jax.devices()[0].platform} devices"
  )
  plot(rows, workdir / "scaling.png", title)
  print(f"wrote {workdir / 'scaling.csv'}, scaling.json and scaling.png")


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  # DATAxMODEL mesh shapes, e.g. "1x1,2x1,4x1,8x1,4x2,2x4"; "" = powers of two from one device a process up to
  # every device, plus n/2 x 2 and n/4 x 4.
  s.meshes = ""
  s.batches = "32,128"  # global batch sizes (windows per step)
  s.rules = "segment"  # a sharding.RULES table; on n x 1 meshes every table is data parallel
  s.stage = "adapt"  # adapt: the stage-2 step with K segments; pretrain: the stage-1 step
  s.warmup = 2  # untimed steps after compiling
  s.steps = 5  # timed steps per repeat (3 repeats; the median repeat is reported)
  s.host_time = True  # also the host's share of a step as fit dispatches it (two more compiles per mesh and batch)
  return s


def command() -> None:
  """`mola-scaling` / `python -m mola_jax.lab.scaling`."""
  study.command(
    lambda cfg, s, workdir: run(cfg, workdir, meshes=s.meshes or None, batches=s.batches, rules=s.rules,
                                stage=s.stage, warmup=s.warmup, timed=s.steps, host_time=s.host_time),
    defaults(),
    "Where scaling.csv, scaling.json and scaling.png go",
  )  # fmt: skip


if __name__ == "__main__":
  command()
