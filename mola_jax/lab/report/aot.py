"""The table of docs/performance.md ("Compiled for TPU slices") from the aot.csv files of docs/aot_study.sh:
per (dataset, T, topology, rules), the per-chip memory of the largest program of each stage against the chip's
HBM, the train steps' FLOPs per chip and XLA's estimated step times.

    python -m mola_jax.lab.report.aot runs/aot
"""

from __future__ import annotations

import csv
import pathlib
import sys


def rows(root: pathlib.Path) -> list[dict]:
  return [row for path in sorted(root.glob("*/aot.csv")) for row in csv.DictReader(path.open())]


def table(all_rows: list[dict]) -> str:
  mib = lambda b: f"{int(b) / 2**20:,.1f}"
  ms = lambda s: "—" if s in ("", "nan") else f"{float(s) * 1e3:.3f}"
  cells: dict = {}
  for r in all_rows:
    cells.setdefault((r["dataset"], int(r["horizon"]), int(r["chips"]), r["rules"]), {})[(r["stage"], r["program"])] = r
  out = [
    "| dataset | T | chips | rules (mesh) | global batch (train) | stage 1: train / eval MiB per chip | stage 2: train"
    " / eval MiB per chip | fits 16 GiB | stage 1 / stage 2 train GFLOP per chip | est. train step ms (stage 1 / 2) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (dataset, horizon, chips, rules), p in sorted(cells.items()):
    s1t, s1e, s2t, s2e = (p[(s, g)] for s in ("pretrain", "adapt") for g in ("train", "eval"))
    fits = all(r["fits"] == "True" for r in p.values())
    out.append(
      f"| {dataset} | {horizon} | {chips} | {rules} ({s1t['mesh']}) | {s1t['global_batch']} | "
      f"{mib(s1t['total_bytes'])} / {mib(s1e['total_bytes'])} | {mib(s2t['total_bytes'])} / {mib(s2e['total_bytes'])}"
      f" | {'yes' if fits else '**no**'} | {float(s1t['flops_per_chip']) / 1e9:.2f} / "
      f"{float(s2t['flops_per_chip']) / 1e9:.2f} | {ms(s1t['estimated_seconds'])} / {ms(s2t['estimated_seconds'])} |"
    )
  return "\n".join(out)


if __name__ == "__main__":
  print(table(rows(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/aot"))))
