"""Panels at scale: a synthetic panel of 20,000 hourly series of 200 to 5,000 steps (each with its own start,
levels, daily and weekly cycles, trend and noise) trains under data.placement=host with bounded host memory, and
the windows per second of device and host placement on the same panel, side by side.

    python -m mola_jax.lab.panel_bench --config configs/etth1.py --config.backbone=patchtst --workdir runs/panel_bench
    python -m mola_jax.lab.panel_bench --config configs/etth1.py --config.backbone=dlinear --workdir /tmp/pb \\
        --study.series=300 --study.repeats=2   # a quick check

The model is the config's (a panel backbone: iTransformer mixes channels, so the README's model size is PatchTST's
or DLinear's at the README's look-back and horizon, L = T = 96, S = 24). What it measures:

* Throughput: fit's own path (data.PanelOrder's chunks, fit.Windows.inputs, steps.make_train_chunk) for each stage
  and placement, `chunks` chunks of `chunk_steps` steps a repeat, the placements alternated repeat by repeat after
  a warm-up chunk each; a figure is the median of `repeats` repeats, windows per second = steps x batch / seconds.
* Memory: a fresh process builds the panel and trains `memory_chunks` chunks of each stage under host placement.
  Its peak RSS (getrusage) includes JAX's own (the runtime, the compiled programs), so it is reported as is and
  above two baselines: after importing and starting the backend, and after compiling the train chunks on a small
  panel of the same shapes (so the compile's own memory is not the panel's). The target compares the peak above
  the import baseline with the panel's own size in float32 (rows x 4 bytes).

Writes panel_bench.json (every figure) and prints the table docs/performance.md quotes.
"""

from __future__ import annotations

import json
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from mola_jax import config_lib, data, fit, plan, steps
from mola_jax import workdir as workdir_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import study as study_lib
from mola_jax.models import build


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.series, s.min_len, s.max_len, s.seed = 20000, 200, 5000, 0  # the synthetic panel
  s.chunk_steps, s.chunks, s.repeats = 32, 2, 5  # a repeat: `chunks` chunks of `chunk_steps` steps
  s.memory_chunks = 4  # chunks of each stage the memory process trains under host placement
  return s


def synthetic_panel(study, seq_len: int, horizon: int, series: int | None = None) -> data.Panel:
  """`series` hourly series (study.series by default) of lengths drawn from min_len .. max_len, built straight
  into the panel's array (data.build_panel); series too short for the split rule are skipped."""
  n = study.series if series is None else series
  rng = np.random.default_rng(study.seed)
  lengths = rng.integers(study.min_len, study.max_len + 1, size=n)
  starts = np.datetime64("2000-01-01T00") + rng.integers(0, 20 * 8760, size=n).astype("timedelta64[h]")

  def read(i: int):
    r = np.random.default_rng([study.seed, i])
    t = np.arange(lengths[i]) + r.integers(0, 168)
    daily, weekly = np.sin(2 * np.pi * t / 24), np.sin(2 * np.pi * t / 168)
    noise = np.cumsum(r.normal(0, 0.1, lengths[i])) * 0.2 + r.normal(0, 0.3, lengths[i])
    y = r.normal(0, 10) + r.gamma(2.0) * (daily + 0.5 * weekly) + r.normal(0, 1e-3) * t + noise
    return y, None

  ids = [f"s{i:05d}" for i in range(n)]
  return data.build_panel("synthetic_panel", ids, starts, ["h"] * n, lengths, read, seq_len=seq_len, horizon=horizon,
                          short="skip")  # fmt: skip


def stage_state(run_plan: plan.Plan, stage: plan.Stage, steps_per_epoch: int):
  """A fresh state of the stage's model (random weights: the cost does not depend on them)."""
  adapt = stage.name == plan.ADAPT
  model = build(run_plan.model, channels=1, marks=0, pred_len=stage.pred_len, segments=stage.segments if adapt else 0,
                rngs=nnx.Rngs(stage.seed))  # fmt: skip
  return fit.new_state(model, stage, run_plan.loop, fit.stage_tx(stage, steps_per_epoch))


class Trainer:
  """One stage's training on a panel under one placement, as fit runs it: the order's chunks -> Train requests ->
  the stage's train chunk."""

  def __init__(self, run_plan: plan.Plan, stage: plan.Stage, panel: data.Panel, placement: str, chunk: int):
    self.windows = fit.Windows.of(panel, stage, run_plan.evaluation.seq_len, placement)
    w, batch = self.windows.source, stage.recipe.batch_size
    self.order = self.windows.order(run_plan.seed, batch, chunk).chunks(1, 0)
    self.program = steps.make_train_chunk(plan.step_options(stage, run_plan.loop), seq_len=w.seq_len,
                                          pred_len=w.pred_len, host=self.windows.train is None)  # fmt: skip
    self.segs = steps.training_segments(np.ones(stage.segments, bool))
    self.windows_per_chunk = chunk * batch

  def run(self, state, chunks: int):
    for _ in range(chunks):
      c = next(self.order)
      request = fit.Train(state, c.idx, self.segs, c.valid, (1, c.first), c.batch)
      state, _ = self.program(state, *self.windows.inputs(request))
    return jax.block_until_ready(state)


def throughput(cfg, study, panel: data.Panel) -> dict:
  """Windows per second of each stage under device and host placement (medians of alternated repeats)."""
  run_plan, out = plan.make(cfg), {}
  for stage in run_plan.method_stages:
    trainers = {p: Trainer(run_plan, stage, panel, p, study.chunk_steps) for p in ("device", "host")}
    state = stage_state(run_plan, stage, trainers["host"].windows.steps_per_epoch)
    rates = {p: [] for p in trainers}
    for trainer in trainers.values():  # warm-up: compiles, fills the prefetch
      state = trainer.run(state, 1)
    for r in range(study.repeats):
      for p in ("device", "host") if r % 2 == 0 else ("host", "device"):
        t0 = time.perf_counter()
        state = trainers[p].run(state, study.chunks)
        rates[p].append(study.chunks * trainers[p].windows_per_chunk / (time.perf_counter() - t0))
    median = {p: statistics.median(v) for p, v in rates.items()}
    out[stage.name] = {"device_windows_per_s": median["device"], "host_windows_per_s": median["host"],
                       "host_over_device": median["host"] / median["device"], "repeats": rates}  # fmt: skip
  return out


def rss() -> int:
  """This process's resident memory now, bytes."""
  return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def memory(workdir: str) -> None:
  """The memory process (a fresh one: its peak is this panel's alone): build the panel, train `memory_chunks`
  chunks of each stage under host placement -> memory.json."""
  workdir = pathlib.Path(workdir)
  cfg = config_lib.from_json(json.loads((workdir / "config.json").read_text()))
  study = ml_collections.ConfigDict(json.loads((workdir / "study.json").read_text()))
  run_plan, seq_len = plan.make(cfg), cfg.data.seq_len
  jax.devices()
  imported = rss()
  small = synthetic_panel(study, seq_len, cfg.horizon, series=20)  # the same program shapes: compiled here
  for stage in run_plan.method_stages:
    trainer = Trainer(run_plan, stage, small, "host", study.chunk_steps)
    trainer.run(stage_state(run_plan, stage, trainer.windows.steps_per_epoch), 1)
  compiled = rss()
  t0 = time.perf_counter()
  panel = synthetic_panel(study, seq_len, cfg.horizon)
  built, build_seconds = rss(), time.perf_counter() - t0
  for stage in run_plan.method_stages:
    trainer = Trainer(run_plan, stage, panel, "host", study.chunk_steps)
    trainer.run(stage_state(run_plan, stage, trainer.windows.steps_per_epoch), study.memory_chunks)
  peak, size = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, int(panel.values.nbytes)
  record = {
    "series": len(panel.ids), "skipped_series": len(panel.skipped), "rows": int(len(panel.values)),
    "panel_bytes": size, "build_seconds": build_seconds, "rss_after_import": imported,
    "rss_after_compile": compiled, "rss_after_build": built, "peak_rss": peak,
    "peak_above_import_over_panel": (peak - imported) / size, "peak_above_compile_over_panel": (peak - compiled) / size,
  }  # fmt: skip
  workdir_lib.write_json(workdir / "memory.json", record)


def run(cfg, study, workdir) -> None:
  if cfg.backbone not in data.PANEL_BACKBONES:
    raise ConfigError(f"a panel trains {', '.join(data.PANEL_BACKBONES)}; pass --config.backbone=patchtst or dlinear")
  workdir = pathlib.Path(workdir)
  study_lib.save_settings(workdir, cfg, study)
  child = [sys.executable, "-c", "import sys; from mola_jax.lab import panel_bench; panel_bench.memory(sys.argv[1])"]
  subprocess.run([*child, str(workdir)], check=True)
  mem = json.loads((workdir / "memory.json").read_text())
  panel = synthetic_panel(study, cfg.data.seq_len, cfg.horizon)
  rates = throughput(cfg, study, panel)
  record = {"backbone": cfg.backbone, "seq_len": cfg.data.seq_len, "horizon": cfg.horizon, "memory": mem,
            "throughput": rates, "device": str(jax.devices()[0])}  # fmt: skip
  workdir_lib.write_json(workdir / "panel_bench.json", record)
  print(table(record))


def table(record: dict) -> str:
  mb, mem = 2**20, record["memory"]
  head = (f"{record['backbone']}, L = {record['seq_len']}, T = {record['horizon']}: {mem['series']} series "
          f"({mem['skipped_series']} short ones skipped), {mem['rows']:,} rows, {mem['panel_bytes'] / mb:.0f} MiB "
          "in float32")  # fmt: skip
  lines = [head, "", "| stage | device windows/s | host windows/s | host / device |", "|---|---|---|---|"]
  for name, r in record["throughput"].items():
    lines.append(f"| {name} | {r['device_windows_per_s']:.0f} | {r['host_windows_per_s']:.0f} | "
                 f"{r['host_over_device']:.2f} |")  # fmt: skip
  above = lambda key: (mem["peak_rss"] - mem[key]) / mb
  lines += ["", f"host placement, peak RSS {mem['peak_rss'] / mb:.0f} MiB: {above('rss_after_import'):.0f}"
            f" MiB above the import baseline ({mem['peak_above_import_over_panel']:.2f}x the panel), "
            f"{above('rss_after_compile'):.0f} MiB above the compiled baseline "
            f"({mem['peak_above_compile_over_panel']:.2f}x)"]  # fmt: skip
  return "\n".join(lines)


def command() -> None:
  """`python -m mola_jax.lab.panel_bench`."""
  study_lib.command(run, defaults(), "Where panel_bench.json and memory.json go", multi_process=False)


if __name__ == "__main__":
  command()
