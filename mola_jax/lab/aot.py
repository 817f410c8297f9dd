"""Compile a config's programs for a TPU slice or GPUs that are not here: the evidence of what a pod or a GPU node
would need, from any machine with `libtpu` (`pip install "jax[tpu]"`) or jax's CUDA plugin (`pip install
"jax[cuda12-local]"`) installed; no TPU, no GPU, no driver, also under JAX_PLATFORMS=cpu.

    python -m mola_jax.lab.aot --config etth1 --study.topology=v5e:2x4 --workdir runs/aot
    python -m mola_jax.lab.aot --config etth1 --study.topology=h100,h100:1x1x8,h100:2x1x8 --workdir runs/aot_gpu
    python -m mola_jax.lab.aot --config traffic --study.topology=v5e:2x4,v5e:16x16 \\
        --study.rules=data_parallel,segment,variate --study.batch_per_shard=16 --config.horizon=720 --workdir DIR

For every topology (jax.experimental.topologies: `v5e:2x4` is a v5e-8 slice, `v5e:16x16` a v5e-256, `v5p:2x2x2`,
`v4:2x2x2`, `v6e:4x4`, ...; GPUs from lab/targets.py's target configs: `h100` one H100, `h100:1x1x8` a node of 8,
`h100:2x1x8` two nodes, `a100:...`, `h200:...`) and rules table, the mesh is built from the topology's devices,
`data x model` with `--study.model_axis` devices on `model` (1 for data_parallel), and the real train and eval
programs of both stages (fit's: steps.make_train_chunk / make_eval_chunk, the real sharding rules) are lowered on
abstract inputs (sharding.abstract: shapes, dtypes and shardings, no arrays) and compiled by XLA's TPU or GPU
compiler. Written to DIR/aot.csv and DIR/aot.json, one row per (topology, rules, stage, program):

* per-chip memory of the compiled program: arguments, outputs, temporaries, donated (aliased) buffers, their total
  (arguments + outputs + temporaries - aliased) and the chip's HBM (`fits` = total <= HBM);
* FLOPs per chip and step from XLA's cost analysis where it has one (TPU; it counts a loop body once: one train
  step, one eval batch), XLA's estimated time (`optimal_seconds`, a roofline, not a measurement; it leaves out
  the loop's body, so for fit's chunk programs it is not a step's time) and the compile time here;
* what a step is made of, counted from the compiled program (lab/hlo.py): kernels, matmul FLOPs, bytes read and
  written, collective bytes, and its floor on the chip (lab/targets.py: a projection, not a measurement).
  `xla_options` names what a GPU program needed beyond XLA's defaults to compile without a GPU (lab/targets.py).

No data file is read for a registry dataset: its channel count comes from the registry, so traffic's 862 variates
compile without traffic.csv. Global batches: the config's, or `--study.batch_per_shard` times the `data` axis.
"""

from __future__ import annotations

import csv
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import PartitionSpec as P

from mola_jax import data, plan, runtime, sharding, steps
from mola_jax import workdir as workdir_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import hlo, side_by_side, study, targets
from mola_jax.models import build
from mola_jax.state import TrainState

COLUMNS = (
  "dataset", "backbone", "method", "horizon", "segments", "topology", "chips", "device_kind", "mesh", "rules",
  "stage", "program", "global_batch", "argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "total_bytes",
  "hbm_bytes", "fits", "flops_per_chip", "estimated_seconds", "compile_seconds", "xla_options", "steps_per_call",
  "kernels_per_step", "kernels_by_kind", "kernels_per_call_outside", "hlo_flops_per_step", "bytes_per_step",
  "collective_bytes_per_step", "precision", "compute_s", "memory_s", "launch_s", "floor_s", "bound",
)  # fmt: skip


def topology_devices(name: str) -> list:
  """The devices of a TPU slice described by `name` (e.g. v5e:2x4), one per chip, of GPUs (e.g. h100:1x1x8,
  lab/targets.py), or `local`: this machine's first device, compiled for as it is (on a GPU, autotuned), the
  floors beside launch/device_check.sh's measured steps. v4 chips hold two cores that jax runs as one device
  ("megacore"): asked for explicitly, since a mesh needs one device per chip."""
  if name == "local":
    return jax.devices()[:1]
  if targets.is_gpu(name):
    return targets.gpu_devices(name)
  from jax.experimental import topologies

  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu missing, or a name it does not know: both need the user's fix
    raise ConfigError(
      f"cannot describe TPU topology {name!r} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); install "
      'libtpu (pip install "jax[tpu]") and give a name such as v5e:2x4, v5e:16x16, v5p:2x2x2, v4:2x2x2, v6e:4x4'
    ) from None
  if len({tuple(d.coords) for d in devices}) < len(devices):  # two devices on one chip
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name="megacore").devices
  return list(devices)


def hbm_bytes(kind: str) -> int | None:
  device = targets.chip(kind)
  return device.hbm_bytes if device else None


def data_shape(cfg) -> tuple[int, int, int, int]:
  """(channels, marks, training rows, future covariates among the marks) of the config's data, without reading
  a registry file."""
  d = cfg.data
  if d.path is None and d.name == "synthetic":
    channels, rows, kind = int(d.synthetic_channels), int(d.synthetic_rows), "ratio"
  elif d.path is None and d.name in data.DATASETS and not d.future_covariates and d.freq != "auto":
    info = data.DATASETS[d.name]
    channels, rows, kind = 1 if d.features == "S" else info.channels, info.rows, info.split
  else:
    series = data.load_series(d)
    train = series.borders["train"]
    return series.values.shape[1], series.marks.shape[1], train[1] - train[0], len(series.covariates)
  start, end = data.split_borders(kind, rows, d.seq_len)["train"]
  return channels, data.num_features(d.freq or "h"), end - start, 0


def sds(shape, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def abstract_state(cfg, stage: plan.Stage, shape: tuple) -> TrainState:
  """The stage's train state as shapes and dtypes (jax.eval_shape: nothing is allocated)."""
  channels, marks, _, covariates = shape
  segments = stage.segments if stage.name == plan.ADAPT else 0
  spec = plan.model_spec(cfg)
  make = lambda: build(spec, channels=channels, marks=marks, pred_len=stage.pred_len, segments=segments,
                       rngs=nnx.Rngs(stage.seed), covariates=covariates)  # fmt: skip
  tx = steps.make_tx(steps.lr_schedule(stage.recipe.lr, 1000, stage.recipe.lr_decay))
  new = lambda: TrainState.create(make(), stage.name, tx, jax.random.key_data(jax.random.key(0)))
  return jax.eval_shape(new)


def stage_programs(cfg, stage: plan.Stage, layout: sharding.Layout, shape: tuple, batches: tuple[int, int]):
  """Yield (program name, lowered) for the stage's train chunk and eval chunk on abstract inputs, as fit builds
  them: cfg.chunk_steps steps a call, the training split's rows held on the device."""
  channels, marks, rows, _ = shape
  k, run_plan = stage.segments, plan.make(cfg)
  state = sharding.abstract(abstract_state(cfg, stage, shape), layout)
  (train_batch, eval_batch), c = batches, cfg.chunk_steps
  series = {"values": sds((rows, channels)), "marks": sds((rows, marks)), "start": sds((), jnp.int32)}
  args = sharding.abstract((series, sds((c, train_batch), jnp.int32), (sds((k,), jnp.int32), sds((k,), jnp.bool_)),
                            sds((c,), jnp.bool_)), layout)  # fmt: skip
  lengths = {"seq_len": cfg.data.seq_len, "pred_len": stage.window, "layout": layout}
  chunk = steps.make_train_chunk(plan.step_options(stage, run_plan.loop), **lengths)
  yield "train", chunk.lower(state, *args)
  evaluate = steps.make_eval_chunk(plan.eval_options(stage, run_plan.evaluation), **lengths)
  e = steps.EVAL_CHUNK
  idx, mask = sds((e, eval_batch), jnp.int32), sds((e, eval_batch), jnp.bool_)
  eval_args = sharding.abstract((idx, mask, sds((e,), jnp.bool_)), layout)
  yield "eval", evaluate.lower(state.forecaster(), args[0], *eval_args)


def runs_programs(cfg, stage: plan.Stage, devices: list, shape: tuple, batches: tuple[int, int]):
  """Yield (program name, lowered) for the train and eval chunks of R = len(devices) runs side by side, run r on
  chip r (lab/side_by_side.py's runs mesh, what `seeds_in_one_program` compiles on a host of R chips): each chip
  holds one run's state and batches, and the split's rows, shared."""
  channels, marks, rows, _ = shape
  run_plan, mesh, k = plan.make(cfg), side_by_side.runs_mesh(devices), stage.segments
  c, e = cfg.chunk_steps, steps.EVAL_CHUNK

  def placed(tree, spec: P, lead: tuple = ()):  # shapes and dtypes -> the same with a sharding on the runs mesh
    put = lambda x: jax.ShapeDtypeStruct((*lead, *x.shape), x.dtype, sharding=jax.sharding.NamedSharding(mesh, spec))
    return jax.tree.map(put, tree)

  per_run = lambda tree: placed(tree, P(side_by_side.RUNS), (len(devices),))
  shared = lambda tree: placed(tree, P())
  state = per_run(abstract_state(cfg, stage, shape))
  series = shared({"values": sds((rows, channels)), "marks": sds((rows, marks)), "start": sds((), jnp.int32)})
  chunk, evaluate = side_by_side.on_runs_mesh(*side_by_side.run_axis_chunks(
    stage, run_plan.loop, run_plan.evaluation, seq_len=cfg.data.seq_len, pred_len=stage.window), mesh)  # fmt: skip
  segs = per_run((sds((k,), jnp.int32), sds((k,), jnp.bool_)))
  idx = per_run(sds((c, batches[0]), jnp.int32))
  yield "train", chunk.lower(state, series, idx, segs, shared(sds((c,), jnp.bool_)))
  idx, mask = per_run((sds((e, batches[1]), jnp.int32), sds((e, batches[1]), jnp.bool_)))
  yield "eval", evaluate.lower(state.forecaster(), series, idx, mask, shared(sds((e,), jnp.bool_)))


def compiled_row(lowered, cfg, device, gpu_gemm: str | None, hlo_path: pathlib.Path | None = None) -> dict:
  """Compile and describe a program for `device` (one of the mesh's); gpu_gemm: lab/targets.compile_gpu's choice
  for a GPU compiled without one, else None. hlo_path: where to keep the compiled program's HLO text (None:
  nowhere)."""
  t0 = time.perf_counter()
  compiled, options = targets.compile_gpu(lowered, gpu_gemm) if gpu_gemm else (lowered.compile(), {})
  seconds = time.perf_counter() - t0
  text = compiled.as_text()
  if hlo_path is not None:
    hlo_path.parent.mkdir(parents=True, exist_ok=True)
    hlo_path.write_text(text)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  parts = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  total = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
  estimate = float(cost.get("optimal_seconds", -1.0))
  row = {f"{k}_bytes": v for k, v in parts.items()} | {
    "total_bytes": total,
    "flops_per_chip": float(cost.get("flops", float("nan"))),  # no cost analysis: NaN (a GPU compiled here)
    "estimated_seconds": estimate if estimate >= 0 else float("nan"),  # XLA reports -1 where it has none
    "compile_seconds": seconds,
    "xla_options": " ".join(f"{k}={v}" for k, v in options.items()),
  }
  platform = "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
  return row | step_figures(text, cfg, device.device_kind, platform)


def step_figures(text: str, cfg, kind: str, platform: str) -> dict:
  """A step of the compiled program (lab/hlo.py) and its floor on the chip (lab/targets.py; none for a CPU)."""
  counted = hlo.step_cost(text)
  step = counted.step
  key = targets.precision(cfg.compute_dtype, cfg.matmul_precision, platform)
  device = targets.chip(kind)
  row = {
    "kernels_per_step": step.kernels,
    "kernels_by_kind": " ".join(f"{k}:{v:g}" for k, v in sorted(step.kinds.items()) if v),
    "kernels_per_call_outside": counted.outside.kernels, "hlo_flops_per_step": step.flops,
    "bytes_per_step": step.bytes, "collective_bytes_per_step": step.collective_bytes, "precision": key,
  }  # fmt: skip
  if counted.steps_per_call is not None:
    row["steps_per_call"] = counted.steps_per_call
  if device is None:
    return row
  return row | targets.floor(step.kernels, step.flops, step.bytes, device, key)


def mesh_for(devices: list, rules: str, model_axis: int) -> jax.sharding.Mesh:
  model = 1 if rules == "data_parallel" else model_axis
  if len(devices) % model:
    raise ConfigError(f"study.model_axis {model} does not divide the topology's {len(devices)} chips")
  shape = (len(devices) // model, model)
  return jax.make_mesh(shape, sharding.MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def global_batches(cfg, stage: plan.Stage, data_axis: int, per_shard: int) -> tuple[int, int]:
  """(train, eval) global batch of a stage: the config's, or `per_shard` windows per `data` shard."""
  if per_shard:
    return per_shard * data_axis, per_shard * data_axis
  train, evaluate = stage.recipe.batch_size, cfg.data.eval_batch_size
  if train % data_axis or evaluate % data_axis:
    raise ConfigError(
      f"the global batches ({train} train, {evaluate} eval) do not split over a data axis of {data_axis}; "
      "set --study.batch_per_shard=N (N windows per data shard) or change the config's batch sizes"
    )
  return train, evaluate


def run(cfg, workdir, *, topologies: str, rules: str, model_axis: int, per_shard: int, runs: int = 0,
        gpu_gemm: str = "auto", dump_hlo: bool = False) -> list[dict]:  # fmt: skip
  run_plan = plan.make(cfg)
  tables = [r.strip() for r in rules.split(",") if r.strip()]
  bad = [r for r in tables if r not in sharding.RULES]
  if bad:
    raise ConfigError(f"unknown study.rules {bad}; use any of {', '.join(sharding.RULES)}")
  shape, rows = data_shape(cfg), []
  for topology in filter(None, (t.strip() for t in topologies.split(","))):
    devices = topology_devices(topology)
    kind, gemm = devices[0].device_kind, gpu_gemm if targets.is_gpu(topology) else None
    for table, mesh, stage, program, batch, lowered in lowered_programs(cfg, devices, tables, model_axis, per_shard,
                                                                        runs, shape):  # fmt: skip
      row = {
        "dataset": cfg.data.name, "backbone": cfg.backbone, "method": cfg.method, "horizon": run_plan.horizon,
        "segments": stage.segments, "topology": topology, "chips": runs or len(devices), "device_kind": kind,
        "mesh": mesh, "rules": table, "stage": stage.name, "program": program, "global_batch": batch,
        "hbm_bytes": hbm_bytes(kind),
        # fit's chunks loop over the steps an epoch has left, a bound the HLO knows only at run time
        "steps_per_call": cfg.chunk_steps if program == "train" else steps.EVAL_CHUNK,
      } | compiled_row(lowered, cfg, devices[0], gemm,
                       hlo_path(workdir, topology, table, stage.name, program) if dump_hlo else None)  # fmt: skip
      row["fits"] = row["hbm_bytes"] is None or row["total_bytes"] <= row["hbm_bytes"]
      rows.append(row)
      write(pathlib.Path(workdir), rows, cfg)  # after every program: an interrupted study keeps its rows
      print(
        f"{topology:>10} {table:<13} {row['mesh']:>6} {stage.name:<8} {program:<5} batch {row['global_batch']:>5}"
        f"  {row['total_bytes'] / 2**20:9.1f} MiB/chip  {row['hlo_flops_per_step'] / 1e9:9.3f} GFLOP/step  "
        f"{row['kernels_per_step']:5g} kernels/step  floor {row.get('floor_s', float('nan')) * 1e3:8.4f} ms"
        f"  compile {row['compile_seconds']:5.1f} s {row['xla_options']}",
        flush=True,
      )
  print(f"wrote {pathlib.Path(workdir) / 'aot.csv'} and aot.json ({len(rows)} programs)")
  return rows


def lowered_programs(cfg, devices: list, tables: list, model_axis: int, per_shard: int, runs: int, shape: tuple):
  """Yield (rules, mesh name, stage, program, global batch, lowered) for every program to compile on `devices`:
  one run over a mesh per rules table, or (runs > 0) `runs` runs side by side, one per chip (rules "runs")."""
  stages = plan.make(cfg).method_stages
  if runs:
    if runs > len(devices):
      raise ConfigError(f"study.runs {runs} is more than the topology's {len(devices)} chips; one run per chip")
    for stage in stages:
      batches = (stage.recipe.batch_size, cfg.data.eval_batch_size)
      with runtime.matmul_precision(cfg.matmul_precision):
        for program, lowered in runs_programs(cfg, stage, devices[:runs], shape, batches):
          yield "runs", f"runs={runs}", stage, program, batches[program == "eval"], lowered
    return
  for table in tables:
    mesh = mesh_for(devices, table, model_axis)
    layout = sharding.Layout(mesh, sharding.RULES[table], table)
    for stage in stages:
      batches = global_batches(cfg, stage, mesh.shape["data"], per_shard)
      with sharding.use(mesh, table), runtime.matmul_precision(cfg.matmul_precision):
        for program, lowered in stage_programs(cfg, stage, layout, shape, batches):
          yield table, sharding.mesh_name(mesh), stage, program, batches[program == "eval"], lowered


def hlo_path(workdir, topology: str, rules: str, stage: str, program: str) -> pathlib.Path:
  return pathlib.Path(workdir) / "hlo" / f"{topology.replace(':', '_')}-{rules}-{stage}-{program}.txt"


def write(workdir: pathlib.Path, rows: list[dict], cfg) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.atomic(workdir / "aot.csv") as tmp, tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  settings = {"jax": jax.__version__, "matmul_precision": cfg.matmul_precision, "compute_dtype": cfg.compute_dtype}
  workdir_lib.write_json(workdir / "aot.json", {"settings": settings, "rows": rows}, indent=1)


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  # Topologies, comma-separated: TPU slices (v5e:2x4, v5e:16x16, v5p:2x2x2, v4:2x2x2, v6e:4x4, ...), GPUs (h100,
  # h100:1x1x8, h100:2x1x8, a100:..., h200:...: lab/targets.py), or local (this machine's first device)
  s.topology = "v5e:2x4"
  s.rules = "data_parallel"  # sharding rules tables, comma-separated (sharding.RULES)
  s.model_axis = 4  # chips on the `model` mesh axis for every table but data_parallel
  s.batch_per_shard = 0  # windows per data shard; 0: the config's global batch sizes
  # R > 0: instead of one run over a mesh, R runs side by side with run r on chip r (seeds_in_one_program on a host
  # of R chips, lab/side_by_side.py); the rules tables are not used.
  s.runs = 0
  # GPU GEMMs: "auto", XLA's defaults (Triton GEMM fusions and cuBLAS), a program XLA cannot tile without a GPU
  # compiled again with cuBLAS GEMMs only (lab/targets.py); "cublas": every program so, for counts that compare.
  s.gpu_gemm = "auto"
  s.dump_hlo = False  # also write each compiled program's HLO text to DIR/hlo/
  return s


def command() -> None:
  """`mola-aot` / `python -m mola_jax.lab.aot`."""
  study.command(
    lambda cfg, s, workdir: run(cfg, workdir, topologies=s.topology, rules=s.rules, model_axis=s.model_axis,
                                per_shard=s.batch_per_shard, runs=s.runs, gpu_gemm=s.gpu_gemm, dump_hlo=s.dump_hlo),
    defaults(),
    "Where aot.csv and aot.json go",
    multi_process=False,
  )  # fmt: skip


if __name__ == "__main__":
  command()
