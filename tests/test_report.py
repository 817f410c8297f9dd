"""The backbones report (docs/results.md §13) on small made-up studies with known answers: the paired verdict,
MoLA's per-segment gap against the direct model over the same steps, and the configuration validation picks."""

import csv
import json

import numpy as np

from mola_jax.lab.report import backbones

SEEDS = (2023, 2024, 2025)


def make_study(root, name, dataset, mtf, mola, val):
  """A study folder as lab/reproduce.py writes it: mtf at S = T = 4 and mola at S = 2 (K = 2), horizon 4.
  mtf / mola: per seed, the per-step (4) or per-segment (2) test MSE; val: {method: validation MSE}."""
  study = root / name
  rows = []
  for method, per_seed, s in (("mtf", mtf, 4), ("mola", mola, 2)):
    rows.append({"dataset": dataset, "backbone": "cyclenet", "method": method, "horizon": 4, "segment_len": s})
    for seed, values in zip(SEEDS, per_seed, strict=True):
      cell = study / "cells" / f"{method}-T4-S{s}-seed{seed}"
      cell.mkdir(parents=True)
      result = {"seed": seed, "segment_len": s, "test_mse": float(np.mean(values)), "val_mse": val[method]}
      result["per_step_test_mse" if method == "mtf" else "per_segment_test_mse"] = list(values)
      (cell / "results.json").write_text(json.dumps(result))
  with open(study / "table.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (study / "study.json").write_text("{}")
  return study


def test_the_report_pairs_seeds_reads_segments_and_lets_validation_choose(tmp_path, capsys):
  mtf = [[0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.4, 0.4]]  # per segment: 0.1 and 0.3/0.5/0.4
  mola = [[0.1, 0.2], [0.1, 0.4], [0.1, 0.3]]  # the second segment 0.1 lower on every seed
  make_study(tmp_path, "ETTh1-cyclenet", "ETTh1", mtf, mola, {"mtf": 1.0, "mola": 0.9})
  make_study(tmp_path, "ETTh1-cyclenet_mlp", "ETTh1", mtf, mtf_as_segments(mtf, 0.01), {"mtf": 1.1, "mola": 1.2})

  (row,) = backbones.compare(tmp_path / "ETTh1-cyclenet")
  assert row["S"] == 2 and row["seeds"] == 3
  np.testing.assert_allclose(row["mtf"][0], 0.25)  # mean over seeds of (0.2, 0.3, 0.25)
  np.testing.assert_allclose(row["diff"], (-0.05, 0.0), atol=1e-12)  # the same gain on every seed: no spread
  np.testing.assert_allclose(row["segments"], [0.0, -0.1], atol=1e-12)
  assert backbones.verdict(row) == "wins, outside the spread"

  (worse,) = backbones.compare(tmp_path / "ETTh1-cyclenet_mlp")
  assert backbones.verdict(worse) == "loses, outside the spread"

  backbones.main([tmp_path])
  summary = capsys.readouterr().out.strip().splitlines()[-1]
  # validation prefers cyclenet's mola (0.9, the lowest of the four), whose mean test MSE 0.25 - 0.05 is below
  # every published ETTh1 mean (0.424 the lowest)
  assert summary.startswith("| ETTh1 | cyclenet mola (mean val MSE 0.9000, 1 horizons) | 0.2000 |")
  assert summary.endswith("| yes |")


def mtf_as_segments(mtf, offset):
  """Per seed, the mean of each half of mtf's steps plus `offset`: a mola that loses by `offset` everywhere."""
  return [[np.mean(v[:2]) + offset, np.mean(v[2:]) + offset] for v in mtf]
