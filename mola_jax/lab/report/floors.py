"""The step tables and projections of docs/performance.md ("What a step is made of, and its floor") from the aot.csv
files of docs/floor_study.sh (lab/aot.py rows: lab/hlo.py's counts, lab/targets.py's floors).
Every floor and every time projected from it is a projection from the compiled program, never a measurement.

    python -m mola_jax.lab.report.floors steps DIR                # one line per compiled setting
    python -m mola_jax.lab.report.floors bounds DIR               # which term dominates, per backbone, T and device
    python -m mola_jax.lab.report.floors project DIR RESULTS_JSON # the README run and the full ETTh1 table

`project` takes the epochs each stage trained from a run's results.json (the README run's) and the steps and eval
batches from the data registry: a stage costs epochs x (steps x the train step's floor + one validation pass) plus
one validation before training; a run ends with a test pass. The full ETTh1 table (docs/results.md): 4 horizons x
mtf / lora / mola x 3 seeds at each horizon's default segment length, stage 1 shared by lora and mola (as
lab/reproduce.py shares it), every stage training the epochs its README-run counterpart trained (mtf: stage 1's).
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import sys

from mola_jax import config_lib, data, steps

STAGES = (("pretrain", "train"), ("pretrain", "eval"), ("adapt", "train"), ("adapt", "eval"))


def rows(root: pathlib.Path) -> list[dict]:
  return [row for path in sorted(root.glob("**/aot.csv")) for row in csv.DictReader(path.open())]


def settings(all_rows: list[dict]) -> dict:
  """(dataset, backbone, method, T, topology, rules) -> {(stage, program): row}."""
  out: dict = {}
  for r in all_rows:
    key = (r["dataset"], r["backbone"], r["method"], int(r["horizon"]), r["topology"], r["rules"])
    out.setdefault(key, {})[(r["stage"], r["program"])] = r
  return out


def _f(row: dict | None, key: str, scale: float = 1.0, fmt: str = ".3g") -> str:
  if row is None or row.get(key) in (None, ""):
    return "—"
  return format(float(row[key]) * scale, fmt)


def step_table(all_rows: list[dict]) -> str:
  """One line per setting: memory per device, fits, compile time, and the train steps' kernels, GFLOP, MB and floor
  (stage 1 / stage 2; mtf has stage 1 alone), the eval batch's floor. † : compiled with cuBLAS GEMMs only."""
  out = [
    "| backbone | method | T | device (topology) | rules (mesh) | MiB per device: stage 1 train / eval, stage 2 train /"
    " eval | fits | compile s | kernels per train step (stage 1 / 2) | GFLOP per train step | MB per train step |"
    " train step floor µs (bound) | eval batch floor µs |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (_, backbone, method, horizon, topology, rules), p in sorted(settings(all_rows).items()):
    s1t, s1e, s2t, s2e = (p.get(k) for k in STAGES)
    first = next(iter(p.values()))
    fits = "yes" if all(r["fits"] == "True" for r in p.values()) else "**no**"
    compile_s = sum(float(r["compile_seconds"]) for r in p.values())
    cublas = "†" if any(r.get("xla_options") for r in p.values()) else ""
    pair = lambda a, b, key, scale=1.0, fmt=".3g": f"{_f(a, key, scale, fmt)} / {_f(b, key, scale, fmt)}"
    bound = lambda r: "" if r is None or not r.get("bound") else f" ({r['bound']})"
    mib = lambda r: _f(r, "total_bytes", 2**-20, ",.1f")
    out.append(
      f"| {backbone} | {method} | {horizon} | {first['device_kind']} ({topology}) | {rules} ({first['mesh']}) | "
      f"{mib(s1t)} / {mib(s1e)}, {mib(s2t)} / {mib(s2e)} | {fits} | {compile_s:.1f}{cublas} | "
      f"{pair(s1t, s2t, 'kernels_per_step', fmt='g')} | {pair(s1t, s2t, 'hlo_flops_per_step', 1e-9)} | "
      f"{pair(s1t, s2t, 'bytes_per_step', 1e-6)} | {_f(s1t, 'floor_s', 1e6)}{bound(s1t)} / "
      f"{_f(s2t, 'floor_s', 1e6)}{bound(s2t)} | {pair(s1e, s2e, 'floor_s', 1e6)} |"
    )
  return "\n".join(out)


def bound_table(all_rows: list[dict]) -> str:
  """Per backbone, T and device: the three terms of each train step's floor in µs and the one that dominates."""
  out = [
    "| backbone | method | T | device | stage 1 train step: compute / memory / launch µs (bound) | stage 2 train step:"
    " compute / memory / launch µs (bound) | kernels per step (stage 1 / 2) |",
    "|---|---|---|---|---|---|---|",
  ]
  for (_, backbone, method, horizon, topology, _), p in sorted(settings(all_rows).items()):
    s1, s2 = p.get(("pretrain", "train")), p.get(("adapt", "train"))
    terms = lambda r: (
      "—"
      if r is None or not r.get("bound")
      else " / ".join(_f(r, k, 1e6) for k in ("compute_s", "memory_s", "launch_s")) + f" (**{r['bound']}**)"
    )
    device = next(iter(p.values()))["device_kind"]
    kernels = f"{_f(s1, 'kernels_per_step', fmt='g')} / {_f(s2, 'kernels_per_step', fmt='g')}"
    out.append(f"| {backbone} | {method} | {horizon} | {device} ({topology}) | {terms(s1)} | {terms(s2)} | {kernels} |")
  return "\n".join(out)


def windows(dataset: str, seq_len: int, window: int) -> dict[str, int]:
  """Windows per split of a registry dataset for a look-back and a target length."""
  info = data.DATASETS[dataset]
  borders = data.split_borders(info.split, info.rows, seq_len)
  return {split: (end - start) - seq_len - window + 1 for split, (start, end) in borders.items()}


def _outside(r: dict) -> float:
  """A call's own launches outside its loop, at the chip's launch cost (the row's launch_s over its kernels)."""
  return float(r["kernels_per_call_outside"]) * float(r["launch_s"]) / max(float(r["kernels_per_step"]), 1.0)


def stage_seconds(p: dict, stage: str, epochs: int, counts: dict, batch: int, eval_batch: int) -> float:
  """A stage's projected seconds: epochs x (train steps x the step's floor + a validation pass) + one validation
  before training, with each call's launches outside its loop (a chunk of train steps, EVAL_CHUNK eval batches)."""
  train, evaluate = p[(stage, "train")], p[(stage, "eval")]
  step_count = counts["train"] // batch  # the incomplete last batch is dropped
  val_batches = math.ceil(counts["val"] / eval_batch)
  chunks = math.ceil(step_count / int(train["steps_per_call"]))
  train_s = step_count * float(train["floor_s"]) + chunks * _outside(train)
  val_s = val_batches * float(evaluate["floor_s"]) + math.ceil(val_batches / steps.EVAL_CHUNK) * _outside(evaluate)
  return epochs * (train_s + val_s) + val_s


def test_seconds(p: dict, stage: str, counts: dict, eval_batch: int) -> float:
  return math.ceil(counts["test"] / eval_batch) * float(p[(stage, "eval")]["floor_s"])


def device_projection(get, results: dict) -> tuple[float | None, float | None, list[str]]:
  """-> (README run seconds, full table seconds, horizons missing) on one device; get(method, T) -> a setting's rows
  (or None where it was not compiled)."""
  cfg = config_lib.default()
  seq_len, batch, eval_batch = cfg.data.seq_len, cfg.pretrain.batch_size, cfg.data.eval_batch_size
  e1, e2 = (results["stages"][stage]["epochs"] for stage in ("pretrain", "adapt"))
  count = lambda window: windows(results["dataset"], seq_len, window)
  stage1 = lambda p, s: stage_seconds(p, "pretrain", e1, count(s), batch, eval_batch)
  last = lambda p, stage, epochs, t: (
    stage_seconds(p, stage, epochs, count(t), batch, eval_batch) + test_seconds(p, stage, count(t), eval_batch)
  )
  readme = get(results["method"], results["horizon"])
  one = (
    None if readme is None else stage1(readme, results["segment_len"]) + last(readme, "adapt", e2, results["horizon"])
  )
  table, missing = 0.0, []
  for t, options in config_lib.SEGMENT_OPTIONS.items():
    t, s = int(t), options[0]
    mtf, lora, mola = get("mtf", t), get("lora", t), get("mola", t)
    if None in (mtf, lora, mola):
      missing.append(str(t))
      continue
    # stage 1 once for lora and mola (shared), the two stage 2s, mtf's one stage; each with its test pass; 3 seeds
    table += 3 * (
      stage1(mola, s) + last(lora, "adapt", e2, t) + last(mola, "adapt", e2, t) + last(mtf, "pretrain", e1, t)
    )
  return one, (None if missing else table), missing


def projection(all_rows: list[dict], results: dict) -> str:
  """The README run and the full ETTh1 table on each compiled device (module docstring)."""
  cfg = config_lib.default()
  e1, e2 = (results["stages"][stage]["epochs"] for stage in ("pretrain", "adapt"))
  by = settings(all_rows)
  out = [
    f"Epochs (the README run's): stage 1 {e1}, stage 2 {e2}; train batch {cfg.pretrain.batch_size}, eval batch "
    f"{cfg.data.eval_batch_size}. Projected from the floors, not measured.",
    "",
    "| device (topology, rules) | README run (T = 96, mola) s | full ETTh1 table (4 T x mtf/lora/mola x 3 seeds) s |",
    "|---|---|---|",
  ]
  prefix = (results["dataset"], results["backbone"])
  for topology, rules in sorted({(k[4], k[5]) for k in by if k[:2] == prefix}):
    where = (topology, rules)
    one, table, missing = device_projection(lambda method, t, w=where: by.get((*prefix, method, t, *w)), results)
    if one is None:
      continue
    device = next(r["device_kind"] for r in all_rows if (r["topology"], r["rules"]) == where)
    cell = f"{table:,.0f}" if table is not None else f"— (T = {', '.join(missing)} not compiled)"
    out.append(f"| {device} ({topology}, {rules}) | {one:,.1f} | {cell} |")
  return "\n".join(out)


def main(argv: list[str]) -> None:
  usage = "usage: python -m mola_jax.lab.report.floors steps|bounds DIR, or project DIR RESULTS_JSON"
  if len(argv) < 3 or argv[1] not in ("steps", "bounds", "project") or (argv[1] == "project") != (len(argv) == 4):
    sys.exit(usage)
  found = rows(pathlib.Path(argv[2]))
  if argv[1] == "steps":
    print(step_table(found))
  elif argv[1] == "bounds":
    print(bound_table(found))
  else:
    print(projection(found, json.loads(pathlib.Path(argv[3]).read_text())))


if __name__ == "__main__":
  main(sys.argv)
