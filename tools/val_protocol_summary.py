"""Compare two reproduce studies that differ only in data.val_protocol (docs/val_protocol_etth1.sh): MoLA's
margin over mtf under each protocol, and how often the kept epoch differs between them.

    python tools/val_protocol_summary.py runs/val_protocol_etth1    # reads full/ and official/ in it
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

import numpy as np
from scipy import stats


def table(study: pathlib.Path) -> dict:
  with open(study / "table.csv") as f:
    return {(r["method"], int(r["horizon"])): r for r in csv.DictReader(f)}


def runs(study: pathlib.Path) -> dict:
  """{relative run dir: results.json} of every finished stage-1, mtf and stage-2 run."""
  return {str(p.parent.relative_to(study)): json.loads(p.read_text()) for p in study.glob("*/*/results.json")}


def margin(study: pathlib.Path, horizon: int) -> tuple[float, float]:
  """MoLA's mean test-MSE margin over mtf (mtf - mola, > 0: MoLA better) and its paired 95% half-width."""
  res = runs(study)
  diffs = []
  for name, r in res.items():
    if name.startswith("cells/mola-") and r["horizon"] == horizon:
      mtf = res.get(f"cells/mtf-T{horizon}-S{horizon}-seed{r['seed']}")
      if mtf:
        diffs.append(mtf["test_mse"] - r["test_mse"])
  d = np.asarray(diffs)
  half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
  return float(d.mean()), half


def main(root: pathlib.Path) -> None:
  full, official = root / "full", root / "official"
  tf, to = table(full), table(official)
  print("| T | mtf (full) | mola (full) | margin (full) | mtf (official) | mola (official) | margin (official) |")
  print("|---|---|---|---|---|---|---|")
  for h in sorted({h for _, h in tf} & {h for _, h in to}):
    cells = [f"{float(t[(m, h)]['test_mse_mean']):.4f} ± {float(t[(m, h)]['test_mse_ci95']):.4f}" for t in (tf, to)
             for m in ("mtf", "mola")]  # fmt: skip
    (mf, hf), (mo, ho) = margin(full, h), margin(official, h)
    print(f"| {h} | {cells[0]} | {cells[1]} | {mf:+.4f} ± {hf:.4f} | {cells[2]} | {cells[3]} | {mo:+.4f} ± {ho:.4f} |")
  rf, ro = runs(full), runs(official)
  print("\nKept epoch, full vs official protocol (same run otherwise):\n")
  print("| runs | same epoch | different epoch |")
  print("|---|---|---|")
  for kind in ("pretrain/", "cells/mtf-", "cells/mola-"):
    same = diff = 0
    for name in sorted(set(rf) & set(ro)):
      if name.startswith(kind):
        a, b = (next(iter(r["stages"].values()))["best_epoch"] for r in (rf[name], ro[name]))
        same, diff = same + (a == b), diff + (a != b)
    print(f"| {kind.rstrip('/-')} | {same} | {diff} |")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/val_protocol_etth1"))
