"""Where a train step's time goes: a jax.profiler trace of N steps, summarised per XLA op.

    python -m mola_jax.lab.op_profile --config etth1 [--stage adapt] [--steps 20] \
        [--set model.itransformer.dropout=0]

Prints the step's wall time, the summed op time of XLA's worker threads (per step), how much of the wall time
0, 1 or 2+ threads were busy, the op time by kind (dense matmuls, attention's batched matmuls, loop fusions,
copies and transposes) and the top ops with their HLO shapes. Keeps the trace under --out (open it with
TensorBoard's profile plugin or Perfetto). On a CPU the trace's events are XLA's thunks: one event per op and
thread. docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import ast
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax

from mola_jax import config_lib, data
from mola_jax.lab import bench, bench_setup


def kind(name: str, hlo: str) -> str:
  if re.search(r"hqk|qhd|khd", hlo):
    return "attention (batched small matmuls)"
  if name.startswith(("ynn_fusion", "dot", "xnn_fusion")) or " dot(" in hlo:
    return "dense matmuls"
  if name.startswith(("copy", "transpose")) or "transpose" in name:
    return "copies and transposes"
  return "elementwise and reductions"


def summarise(trace: pathlib.Path, hlo_text: str, steps: int, top: int) -> None:
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  ops = [
    e
    for e in events
    if e.get("ph") == "X"
    and "XLAEigen" in threads.get((e.get("pid"), e.get("tid")), "")
    and not e["name"].startswith(("ThunkExecutor", "SlinkyThreadPool", "end:"))
  ]
  shapes = {m.group(1): m.group(2) for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([^\n]{0,160})", hlo_text, re.M)}
  total, by_kind = collections.Counter(), collections.Counter()
  for e in ops:
    total[e["name"]] += e["dur"]
    by_kind[kind(e["name"], shapes.get(e["name"], ""))] += e["dur"]
  # Busy threads over time: merge each thread's intervals, then sweep.
  points = []
  for tid in {(e["pid"], e["tid"]) for e in ops}:
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops if (e["pid"], e["tid"]) == tid)
    merged = []
    for a, b in spans:
      if merged and a <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], b)
      else:
        merged.append([a, b])
    points += [(a, 1) for a, _ in merged] + [(b, -1) for _, b in merged]
  points.sort()
  busy, level, last = collections.Counter(), 0, points[0][0] if points else 0
  for t, delta in points:
    busy[min(level, 2)] += t - last
    level, last = level + delta, t
  span = sum(busy.values()) or 1
  print(
    f"op time of XLA's threads: {sum(total.values()) / 1e3 / steps:.2f} ms per step; of the traced span, "
    + ", ".join(f"{k}{'+' if k == 2 else ''} threads busy {100 * v / span:.0f}%" for k, v in sorted(busy.items()))
  )
  for k, v in by_kind.most_common():
    print(f"  {v / 1e3 / steps:7.2f} ms/step  {k}")
  print(f"top {top} ops (ms per step, HLO):")
  for name, v in total.most_common(top):
    print(f"  {v / 1e3 / steps:7.3f}  {name:28s} {shapes.get(name, '')[:110]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--stage", default="adapt", choices=("pretrain", "adapt"))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--out", default=None, help="trace directory (default: a temporary one)")
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (Python literal)")
  args = parser.parse_args()
  values = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
  cfg = config_lib.with_values(config_lib.load(args.config), values)
  ctx = bench_setup.Context(cfg, bench_setup.Settings.of(bench.defaults()))
  setup = bench_setup.train_setup(ctx, ctx.problem(), args.stage)
  step = bench_setup.compile_step(ctx, setup)[0]
  hlo_text = step.as_text()
  order = data.train_order(setup.windows, setup.batch_size, seed=0, epoch=1)
  batches = [setup.windows.take(idx) for idx in order[:8]]
  state = setup.state
  for i in range(5):
    state, _ = step(state, batches[i % 8], setup.active)
  jax.block_until_ready(state)
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="op_profile_"))
  t0 = time.perf_counter()
  with jax.profiler.trace(str(out)):
    for i in range(args.steps):
      state, _ = step(state, batches[i % 8], setup.active)
    jax.block_until_ready(state)
  print(f"{args.stage} step: {(time.perf_counter() - t0) / args.steps * 1e3:.2f} ms while traced; trace in {out}")
  summarise(next(out.rglob("*.trace.json.gz")), hlo_text, args.steps, args.top)


if __name__ == "__main__":
  main()
