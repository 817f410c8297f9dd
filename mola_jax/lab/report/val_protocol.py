"""Compare two reproduce studies that differ only in data.val_protocol (docs/val_protocol_etth1.sh): MoLA's
margin over mtf under each protocol, and how often the kept epoch differs between them.

    python -m mola_jax.lab.report.val_protocol runs/val_protocol_etth1    # reads full/ and official/ in it
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np

from mola_jax.lab.stats import ci95 as ci
from mola_jax.lab.stats import run_result, settings


def table(study: pathlib.Path) -> dict:
  with open(study / "table.csv") as f:
    return {(r["method"], int(r["horizon"])): r for r in csv.DictReader(f)}


def used_runs(study: pathlib.Path) -> dict[str, dict]:
  """{name: results} of the runs behind the study's table: every seed's mtf and MoLA cell at the kept S, and the
  stage-1 run each MoLA cell started from."""
  config = json.loads((study / "config.json").read_text())  # read once: the first seed
  roots, first = (study, settings(study).get("reuse_from")), config["seed"]
  out = {}
  for (method, h), row in table(study).items():
    s = int(row["segment_len"])
    for seed in range(first, first + int(row["seeds"])):
      names = [f"cells/{method}-T{h}-S{s}-seed{seed}"] + ([f"pretrain/S{s}-seed{seed}"] if method != "mtf" else [])
      out |= {name: run_result(roots, name) for name in names}
  return out


def margin(runs: dict, horizon: int) -> tuple[float, float]:
  """MoLA's mean test-MSE margin over mtf (mtf - mola, > 0: MoLA better) and its paired 95% half-width."""
  mola = {r["seed"]: r for n, r in runs.items() if n.startswith("cells/mola-") and r["horizon"] == horizon}
  mtf = {r["seed"]: r for n, r in runs.items() if n.startswith("cells/mtf-") and r["horizon"] == horizon}
  d = np.asarray([mtf[s]["test_mse"] - mola[s]["test_mse"] for s in sorted(mola)])
  return float(d.mean()), ci(d)


def kept_epoch(r: dict) -> int:
  return next(iter(r["stages"].values()))["best_epoch"]


def main(root: pathlib.Path) -> None:
  full, official = root / "full", root / "official"
  tf, to = table(full), table(official)
  rf, ro = used_runs(full), used_runs(official)
  print("| T | mtf (full) | mola (full) | margin (full) | mtf (official) | mola (official) | margin (official) |")
  print("|---|---|---|---|---|---|---|")
  for h in sorted({h for _, h in tf} & {h for _, h in to}):
    cells = [f"{float(t[(m, h)]['test_mse_mean']):.4f} ± {float(t[(m, h)]['test_mse_ci95']):.4f}" for t in (tf, to)
             for m in ("mtf", "mola")]  # fmt: skip
    (mf, hf), (mo, ho) = margin(rf, h), margin(ro, h)
    print(f"| {h} | {cells[0]} | {cells[1]} | {mf:+.4f} ± {hf:.4f} | {cells[2]} | {cells[3]} | {mo:+.4f} ± {ho:.4f} |")
  print("\nKept epoch, full vs official protocol (the same run otherwise):\n")
  print("| runs | same epoch | different epoch | largest test-MSE change |")
  print("|---|---|---|---|")
  for kind in ("pretrain/", "cells/mtf-", "cells/mola-"):
    names = sorted(n for n in set(rf) & set(ro) if n.startswith(kind))
    diff = [n for n in names if kept_epoch(rf[n]) != kept_epoch(ro[n])]
    change = max((abs(rf[n]["test_mse"] - ro[n]["test_mse"]) for n in names), default=0.0)
    print(f"| {kind.rstrip('/-')} | {len(names) - len(diff)} | {len(diff)} | {change:.2e} |")
    for n in diff:
      print(f"|  {n} | epoch {kept_epoch(rf[n])} (full) | epoch {kept_epoch(ro[n])} (official) | "
            f"{rf[n]['test_mse']:.4f} → {ro[n]['test_mse']:.4f} |")  # fmt: skip


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/val_protocol_etth1"))
