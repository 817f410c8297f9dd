"""Stage-2 options side by side (docs/results.md §15): a baseline reproduction study of mtf and MoLA, and option
studies that reuse its stage 1 and mtf (docs/diagnosis_study.sh). Per horizon the mean over seeds of the chosen
cells' validation MSE, which is what an option is judged on, then their test MSE, which is not; and per study the
mean over the horizons and the horizons where MoLA is at or below its own mtf.

    python -m mola_jax.lab.report.options runs/diag/etth1-cyclenet runs/diag/etth1-cyclenet-heads ...
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

from mola_jax.lab.report.segments import chosen_cells
from mola_jax.lab.stats import table


def means(study: pathlib.Path, method: str, key: str) -> dict[int, float]:
  """{T: mean over seeds of `key` ("val_mse" or "test_mse")} of a study's chosen cells of `method`."""
  horizons = sorted({r["horizon"] for r in table(study) if r["method"] == method})
  return {h: float(np.mean([r[key] for r in chosen_cells(study, method, h).values()])) for h in horizons}


def block(studies: list[pathlib.Path], key: str) -> list[str]:
  """One table (validation or test): a row per horizon, a column per study's MoLA after mtf (the baseline's), the
  lowest MoLA in bold; then the mean over the horizons and the count of horizons at or below mtf."""
  mtf = means(studies[0], "mtf", key)
  cols = [means(s, "mola", key) for s in studies]
  horizons = [h for h in mtf if all(h in c for c in cols)]
  lines = ["| T | mtf | " + " | ".join(s.name for s in studies) + " |", "|---" * (2 + len(studies)) + "|"]
  for h in horizons:
    best = min(c[h] for c in cols)
    cells = [f"**{c[h]:.4f}**" if c[h] == best else f"{c[h]:.4f}" for c in cols]
    lines.append(f"| {h} | {mtf[h]:.4f} | " + " | ".join(cells) + " |")
  lines.append(f"| mean | {np.mean([mtf[h] for h in horizons]):.4f} | "
               + " | ".join(f"{np.mean([c[h] for h in horizons]):.4f}" for c in cols) + " |")  # fmt: skip
  count = lambda c: sum(c[h] <= mtf[h] for h in horizons)
  lines.append("| ≤ mtf | | " + " | ".join(f"{count(c)}/{len(horizons)}" for c in cols) + " |")
  return lines


def main(studies: list[pathlib.Path]) -> None:
  print("Validation MSE, mean over seeds (what an option is judged on)\n")
  print("\n".join(block(studies, "val_mse")))
  print("\nTest MSE, mean over seeds (not used for choosing)\n")
  print("\n".join(block(studies, "test_mse")))


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python -m mola_jax.lab.report.options BASELINE_STUDY [OPTION_STUDY ...]")
  main([pathlib.Path(p) for p in sys.argv[1:]])
