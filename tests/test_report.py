"""The backbones report (docs/results.md §13) on small made-up studies with known answers: the paired verdict,
MoLA's per-segment gap against the direct model over the same steps, and the configuration validation picks."""

import csv
import itertools
import json

import numpy as np

from mola_jax.lab.report import backbones

SEEDS = (2023, 2024, 2025)


def make_study(root, name, dataset, mtf, mola, val, horizons=(4, 8, 12, 16)):
  """A study folder as lab/reproduce.py writes it, the same numbers at every horizon T: mtf at S = T and mola
  at S = T / 2 (K = 2). mtf / mola: per seed, 4 per-step or 2 per-segment test MSEs (a step stands for T / 4 steps);
  val: {method: validation MSE}."""
  study = root / name
  rows = []
  for h, (method, per_seed) in itertools.product(horizons, (("mtf", mtf), ("mola", mola))):
    s = h if method == "mtf" else h // 2
    rows.append({"dataset": dataset, "backbone": "cyclenet", "method": method, "horizon": h, "segment_len": s})
    for seed, values in zip(SEEDS, per_seed, strict=True):
      cell = study / "cells" / f"{method}-T{h}-S{s}-seed{seed}"
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

  row = backbones.compare(tmp_path / "ETTh1-cyclenet")[0]
  assert row["horizon"] == 4 and row["S"] == 2 and row["seeds"] == 3
  np.testing.assert_allclose(row["mtf"][0], 0.25)  # mean over seeds of (0.2, 0.3, 0.25)
  np.testing.assert_allclose(row["diff"], (-0.05, 0.0), atol=1e-12)  # the same gain on every seed: no spread
  np.testing.assert_allclose(row["segments"], [0.0, -0.1], atol=1e-12)
  assert backbones.verdict(row) == "wins, outside the spread"

  worse = backbones.compare(tmp_path / "ETTh1-cyclenet_mlp")[-1]
  assert backbones.verdict(worse) == "loses, outside the spread"

  backbones.main([tmp_path])
  summary = capsys.readouterr().out.strip().splitlines()[-1]
  # validation prefers cyclenet's mola (0.9, the lowest of the four), whose mean test MSE 0.25 - 0.05 is below
  # every published ETTh1 mean (0.424 the lowest)
  assert summary.startswith("| ETTh1 | cyclenet mola (mean val MSE 0.9000, 4 horizons) | 0.2000 |")
  assert summary.endswith("| yes |")

  # a study with fewer horizons is weighed on the horizons all share, and not against four-horizon means
  other = tmp_path / "other"
  make_study(other, "ETTh1-olinear", "ETTh1", mtf, mola, {"mtf": 0.5, "mola": 0.6}, horizons=(4, 8, 12))
  backbones.main([tmp_path, other])
  summary = capsys.readouterr().out.strip().splitlines()[-1]
  assert summary.startswith("| ETTh1 | olinear mtf (mean val MSE 0.5000, T = 4, 8, 12) | 0.2500 |")
  assert summary.endswith("| not comparable (3 of 4 horizons) |")


def mtf_as_segments(mtf, offset):
  """Per seed, the mean of each half of mtf's steps plus `offset`: a mola that loses by `offset` everywhere."""
  return [[np.mean(v[:2]) + offset, np.mean(v[2:]) + offset] for v in mtf]
