"""The table of docs/performance.md ("Compiled for TPU slices") from the aot.csv files of docs/aot_study.sh:
per (dataset, T, topology, rules), the per-chip memory of the largest program of each stage against the chip's
HBM, the train steps' FLOPs per chip and the compute floor of a step: those FLOPs at the chip's nominal bf16 peak
(lab/bench.py's NOMINAL_PEAK). XLA's own estimate (`estimated_seconds` in aot.csv) leaves out the body of a loop,
and fit's programs are loops, so it is not shown.

    python -m mola_jax.lab.report.aot runs/aot
"""

from __future__ import annotations

import csv
import pathlib
import sys

from mola_jax.lab.bench import NOMINAL_PEAK


def peak(kind: str) -> float | None:
  return next((p["bfloat16"] for name, p in NOMINAL_PEAK.items() if name in kind), None)


def rows(root: pathlib.Path) -> list[dict]:
  return [row for path in sorted(root.glob("*/aot.csv")) for row in csv.DictReader(path.open())]


def table(all_rows: list[dict]) -> str:
  """One line per (dataset, T, chips, rules); a program the study has not compiled (yet) shows as "—"."""
  mib = lambda r: "—" if r is None else f"{int(r['total_bytes']) / 2**20:,.1f}"
  gflop = lambda r: "—" if r is None else f"{float(r['flops_per_chip']) / 1e9:.2f}"
  floor = lambda r: (
    "—"
    if r is None or not peak(r["device_kind"])
    else f"{float(r['flops_per_chip']) / peak(r['device_kind']) * 1e3:.3g}"
  )
  cells: dict = {}
  for r in all_rows:
    cells.setdefault((r["dataset"], int(r["horizon"]), int(r["chips"]), r["rules"]), {})[(r["stage"], r["program"])] = r
  out = [
    "| dataset | T | chips | rules (mesh) | global batch (train) | stage 1: train / eval MiB per chip | stage 2: train"
    " / eval MiB per chip | fits 16 GiB | stage 1 / stage 2 train GFLOP per chip | train step floor ms at bf16 peak"
    " (stage 1 / 2) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (dataset, horizon, chips, rules), p in sorted(cells.items()):
    s1t, s1e, s2t, s2e = (p.get((s, g)) for s in ("pretrain", "adapt") for g in ("train", "eval"))
    first = next(iter(p.values()))
    fits = "yes" if all(r["fits"] == "True" for r in p.values()) else "**no**"
    fits += "" if len(p) == 4 else f" ({len(p)} of 4 programs)"
    out.append(
      f"| {dataset} | {horizon} | {chips} | {rules} ({first['mesh']}) | {first['global_batch']} | {mib(s1t)} / "
      f"{mib(s1e)} | {mib(s2t)} / {mib(s2e)} | {fits} | {gflop(s1t)} / {gflop(s2t)} | {floor(s1t)} / {floor(s2t)} |"
    )
  return "\n".join(out)


if __name__ == "__main__":
  print(table(rows(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/aot"))))
