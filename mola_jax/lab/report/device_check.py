"""The one table of launch/device_check.sh, from what its commands wrote into DIR: the device, each stage's train
step (in fit's chunks and alone) with its compile time and, beside it, the step's floor on this device (a
projection from the program compiled here: lab/aot.py --study.topology=local, lab/targets.py) and how far the
measured step is from it, the host's time per step, and every command's wall time.

    python -m mola_jax.lab.report.device_check runs/device_check
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys


def _json(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def table(root: pathlib.Path) -> str:
  readme = _json(root / "readme" / "results.json")
  warm = _json(root / "readme_warm" / "results.json")
  bench = _json(root / "bench" / "bench.json")
  host = _json(root / "host" / "scaling.json")["rows"][0]
  walls = dict(line.split("\t") for line in (root / "wall.tsv").read_text().splitlines())
  rows = {r["name"]: r for r in bench["rows"]}
  with (root / "aot" / "aot.csv").open() as f:
    floors = {r["stage"]: r for r in csv.DictReader(f) if r["program"] == "train"}
  out = [
    f"Device: {readme['devices']} x {readme['device']} ({readme['platform']}), jax {readme['jax']}, "
    f"{readme['processes']} process(es).",
    "",
    "| what | figure |",
    "|---|---|",
  ]
  for stage, name in (("stage1", "pretrain"), ("stage2", "adapt")):
    chunk, alone = rows[f"{stage}_batched_chunk"], rows[f"{stage}_batched_device"]
    out.append(
      f"| {stage} train step, in fit's chunks / alone | {chunk['step_ms']:.3f} / {alone['step_ms']:.3f} ms "
      f"({chunk['windows_per_s']:,.0f} windows/s in chunks); compile {chunk['compile_seconds']:.1f} s; "
      f"{floor_text(floors.get(name), chunk['step_ms'])} |"
    )
  cold, warm_compile = bench["stage2_compile_cold_seconds"], bench["stage2_compile_warm_seconds"]
  out += [
    f"| stage-2 step compile, cold / from the cache | {cold:.1f} / {warm_compile:.1f} s |",
    f"| compile of the four programs (train and eval, both stages) | {bench['compile_seconds']:.1f} s |",
    f"| host time per step, chunks of {host['chunk_steps']} / one step a call | {host['host_ms_per_step']:.3f} / "
    f"{host['host_ms_per_step_unchunked']:.3f} ms |",
    f"| README run: wall, cold / warm cache | {float(walls['readme']):.1f} / {float(walls['readme_warm']):.1f} s "
    f"(training {readme['train_seconds']:.1f} / {warm['train_seconds']:.1f} s; test MSE {readme['test_mse']:.4f}) |",
    f"| bench, wall | {float(walls['bench']):.1f} s |",
    f"| host-time study, wall | {float(walls['host']):.1f} s |",
  ]
  with (root / "reproduce" / "table.csv").open() as f:
    cells = list(csv.DictReader(f))
  seeds = cells[0]["seeds"] if cells else "?"
  means = ", ".join(f"{c['method']} {float(c['test_mse_mean']):.4f}" for c in cells)
  out.append(
    f"| reproduce, one horizon, {len(cells)} methods x {seeds} seeds in one program, wall | "
    f"{float(walls['reproduce']):.1f} s (test MSE {means}) |"
  )
  return "\n".join(out)


def floor_text(row: dict | None, step_ms: float) -> str:
  """The floor of the step's program on this device beside the measured step (lab/targets.py), or why none."""
  if row is None or not row.get("floor_s"):
    return f"floor: none ({row['device_kind'] if row else 'no aot row'} has no chip figures in lab/targets.py)"
  floor_ms = float(row["floor_s"]) * 1e3
  return (
    f"floor {floor_ms:.3f} ms ({row['bound']}-bound: {float(row['kernels_per_step']):g} kernels, "
    f"{float(row['hlo_flops_per_step']) / 1e9:.3g} GFLOP, {float(row['bytes_per_step']) / 1e6:.3g} MB), "
    f"measured in chunks = {step_ms / floor_ms:.1f}x the floor"
  )


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    sys.exit("usage: python -m mola_jax.lab.report.device_check DIR (the directory of launch/device_check.sh)")
  print(table(pathlib.Path(argv[1])))


if __name__ == "__main__":
  main(sys.argv)
