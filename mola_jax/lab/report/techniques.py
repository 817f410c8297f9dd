"""The generalisation table of docs/results.md §8 (docs/tuners_etth1.sh): per horizon, each plain per-segment
technique beside its per-segment mixture (mean test MSE ± Student-t 95% over seeds, MAE) and the paired 95%
interval of mixture − plain over the seeds; then per-segment heads, the official initialisations, unscaled
FourierFT and mtf.

    python -m mola_jax.lab.report.techniques runs/tuners_etth1   # reads zero_init, official_init, fourier_unscaled
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from mola_jax.lab.report.segments import chosen_cells
from mola_jax.lab.stats import ci95 as ci
from mola_jax.lab.stats import table as _table

PAIRS = (("lora", "mola"), ("ia3", "moia3"), ("adapter", "moadapter"), ("fourier", "mofourier"))
SINGLES = (  # (study, method, label)
  ("zero_init", "lora_heads", "per-segment heads + LoRA"),
  ("official_init", "adapter", "adapter, official init"),
  ("official_init", "moadapter", "moadapter, official init"),
  ("official_init", "fourier", "FourierFT as the official code (N(0, 1), no scaling)"),
  ("official_init", "mofourier", "mofourier, official init, no scaling"),
  ("fourier_unscaled", "fourier", "FourierFT, zero init, no scaling"),
  ("fourier_unscaled", "mofourier", "mofourier, zero init, no scaling"),
  ("zero_init", "mtf", "mtf (direct T-step model)"),
)


def cell_text(cells: dict) -> str:
  mse = [r["test_mse"] for r in cells.values()]
  mae = [r["test_mae"] for r in cells.values()]
  return f"{np.mean(mse):.4f} ± {ci(mse):.4f} | {np.mean(mae):.4f}"


def main(root: pathlib.Path) -> None:
  studies = {p.name: p for p in root.iterdir() if (p / "table.csv").is_file()}
  have = {name: {(r["method"], r["horizon"]) for r in _table(p)} for name, p in studies.items()}
  for horizon in sorted({h for _, h in have["zero_init"]}):
    print(f"\nT = {horizon}\n")
    print("| technique | plain: test MSE | MAE | mixture: test MSE | MAE | mixture − plain (paired, 95%) |")
    print("|---|---|---|---|---|---|")
    for plain, mixture in PAIRS:
      a, b = (chosen_cells(studies["zero_init"], m, horizon) for m in (plain, mixture))
      seeds = sorted(set(a) & set(b))
      diff = [b[s]["test_mse"] - a[s]["test_mse"] for s in seeds]
      print(f"| {plain} / {mixture} | {cell_text(a)} | {cell_text(b)} | {np.mean(diff):+.4f} ± {ci(diff):.4f} |")
    for study, method, label in SINGLES:
      if (method, horizon) in have.get(study, ()):
        print(f"| {label} | {cell_text(chosen_cells(studies[study], method, horizon))} | | | |")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tuners_etth1"))
