"""Median milliseconds per train step of stage 1 and stage 2 (on batches already on the device) and per evaluation
of the whole test split, for whichever mola_jax is first on the path: run it in two checkouts to compare them
(tools/speed_vs_commit.sh does).

    python tools/step_time.py --config configs/etth1.py [--steps 40 --repeats 5] [--set model.itransformer.dropout=0]

It uses only what every version of the benchmark module has (problem, train_setup, compile_step, measure_eval),
so the same file times an old commit and the current tree alike.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import statistics
import time

import jax


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def step_ms(bench, data, prob, stage: str, steps: int, repeats: int) -> float:
  setup = bench.train_setup(prob, stage)
  step = bench.compile_step(setup)[0]
  batches = [
    jax.device_put(b) for b in itertools.islice(data.train_batches(setup.src, setup.batch_size, seed=0, epoch=1), 8)
  ]
  state = setup.state
  for i in range(5):  # warm-up
    state, _ = step(state, setup.frozen, batches[i % 8], setup.active)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps):
      state, _ = step(state, setup.frozen, batches[i % 8], setup.active)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t0) / steps * 1e3)
  return statistics.median(times)


def apply_overrides(cfg, items):
  """KEY=VALUE strings (dotted keys, Python literal values) applied to `cfg`."""
  for item in items:
    key, value = item.split("=", 1)
    *parents, last = key.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[last] = ast.literal_eval(value)
  return cfg


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (Python literal)")
  args = parser.parse_args()
  from mola_jax import bench, data

  cfg = apply_overrides(load_config(args.config), args.set)
  prob = bench.problem(cfg)
  for stage in ("pretrain", "adapt"):
    print(f"{stage} {step_ms(bench, data, prob, stage, args.steps, args.repeats):.2f} ms/step", flush=True)
  settings = bench.Settings.from_cfg(cfg.bench)
  for stage in ("pretrain", "adapt"):  # the whole test split, as the end of a run evaluates it
    seconds = bench.measure_eval(prob, bench.new_model(prob, stage), settings, stage=stage)["seconds"]
    print(f"eval_{stage} {1e3 * seconds:.1f} ms/test-split", flush=True)


if __name__ == "__main__":
  main()
