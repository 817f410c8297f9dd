"""The diagnosis report (mola_jax/lab/report/diagnosis.py): verdicts on made-up runs whose answers are known, the
validation signal of reproduce's table, and the model-based figures of a tiny real pair of runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import tiny
from flax import nnx

from mola_jax import plan
from mola_jax.lab.report import diagnosis
from mola_jax.models import build
from mola_jax.train import train_and_evaluate

T, S = 8, 4  # two segments of four steps


def fake_pair(root, name, *, curve, val_mtf, test_mtf, test_mola, best_epoch=None, selection="any_improved"):
  """An mtf and a MoLA workdir as a study writes them: results.json, config.json and (MoLA) metrics.jsonl with the
  stage-2 validation `curve` [E + 1, K] (row 0: the copy); test MSE constant over the steps."""
  curve = np.asarray(curve, float)
  best = int(np.argmin(curve.mean(axis=1))) if best_epoch is None else best_epoch
  mtf, mola = root / name / "mtf", root / name / "mola"
  for path, result in (
    (mtf, {"val_mse": val_mtf, "per_step_test_mse": [test_mtf] * T, "horizon": T, "segment_len": T}),
    (mola, {"val_mse": float(curve[best].mean()), "per_step_test_mse": [test_mola] * T, "horizon": T,
            "segment_len": S, "stages": {"adapt": {"best_epoch": best}}}),
  ):  # fmt: skip
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(result | {"seed": 2023, "test_mse": result["per_step_test_mse"][0]}))
    (path / "config.json").write_text(json.dumps({"adapt": {"selection": selection, "patience": 2}}))
  lines = [{"stage": "pretrain", "epoch": 1, "val_mse": 0.1}]
  lines += [{"stage": "adapt", "epoch": e, "val_mse": row.mean(), "val_mse_per_segment": list(row)} for e, row in
            enumerate(curve)]  # fmt: skip
  (mola / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  return mtf, mola


CASES = {  # name: (curve, val_mtf, test_mtf, test_mola, the verdict)
  "wins": ([[1.0, 2.0], [0.9, 1.5]], 1.5, 0.5, 0.4, "wins"),
  "shift": ([[1.0, 2.0], [0.9, 1.5]], 1.3, 0.5, 0.6, "selection and shift"),  # val 1.2 < 1.3, test loses
  "capacity": ([[1.0, 2.0], [0.999, 1.996], [0.998, 1.995]], 1.2, 0.5, 0.6, "capacity"),  # moved 0.2% < 1%
  "optimisation": ([[1.0, 2.0], [0.8, 1.3], [0.79, 1.29]], 0.9, 0.5, 0.6, "optimisation"),  # moved 30%, stopped above
}


@pytest.mark.parametrize("case", CASES)
def test_each_verdict_on_made_up_runs(case, tmp_path):
  curve, val_mtf, test_mtf, test_mola, expected = CASES[case]
  f = diagnosis.diagnose(*fake_pair(tmp_path, case, curve=curve, val_mtf=val_mtf, test_mtf=test_mtf,
                                    test_mola=test_mola), models=False)  # fmt: skip
  assert f["verdict"] == expected
  s = f["summary"]
  np.testing.assert_allclose(s["val_copy"], 1.5)
  if case == "optimisation":
    np.testing.assert_allclose(s["moved"], (1.5 - 1.04) / 1.5)
    np.testing.assert_allclose(s["closed"], 0.46 / 0.6)  # of the copy's gap 1.5 - 0.9
    np.testing.assert_allclose(s["first_share"], 0.45 / 0.46)  # nearly all of it in epoch 1: then it stalls


def test_per_segment_selection_keeps_each_segments_best_while_it_trained():
  curve = np.array([[1.0, 2.0], [0.9, 2.1], [0.95, 2.2], [0.5, 1.0]])  # segment 1 stops after two worse epochs
  np.testing.assert_allclose(diagnosis.selected_per_segment(curve, "any_improved", 1, 2), [0.9, 2.1])
  np.testing.assert_allclose(diagnosis.selected_per_segment(curve, "per_segment", 3, 2), [0.5, 2.0])
  np.testing.assert_array_equal(curve[0], [1.0, 2.0])  # the curve itself is left as it was


def test_a_study_is_read_cell_by_cell_and_counted(tmp_path, capsys):
  """A study folder (table.csv, cells/) with the capacity case at T = 8: found, printed, counted."""
  study = tmp_path / "ETTh1-cyclenet"
  curve, val_mtf, test_mtf, test_mola, _ = CASES["capacity"]
  mtf, mola = fake_pair(tmp_path, "x", curve=curve, val_mtf=val_mtf, test_mtf=test_mtf, test_mola=test_mola)
  (study / "cells").mkdir(parents=True)
  mtf.rename(study / "cells" / f"mtf-T{T}-S{T}-seed2023")
  mola.rename(study / "cells" / f"mola-T{T}-S{S}-seed2023")
  with open(study / "table.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["method", "horizon", "segment_len"])
    w.writeheader()
    w.writerows([{"method": "mtf", "horizon": T, "segment_len": T}, {"method": "mola", "horizon": T, "segment_len": S}])
  (study / "study.json").write_text("{}")
  assert list(diagnosis.study_pairs(study)) == [(T, S)]
  diagnosis.main([str(study), "--files-only"])
  out = capsys.readouterr().out
  assert "| ETTh1-cyclenet T=8 | capacity |" in out and "capacity: 1" in out
  assert "| 1 | 5-8 | 2.0000 → 1.9960 → 1.9950 | — | — | — | +0.1000 |" in out  # segment 1: its curve and test gap


def test_validation_signal_for_the_reproduce_table():
  seeds = (1, 2)
  # (mola, 96, 32): an option the study did not choose, never read
  results = {("mtf", 96, 96, 1): {"val_mse": 1.0}, ("mtf", 96, 96, 2): {"val_mse": 0.8},
             ("mola", 96, 24, 1): {"val_mse": 0.85}, ("mola", 96, 24, 2): {"val_mse": 0.85},
             ("mola", 96, 32, 1): {"val_mse": 0.1}}  # fmt: skip
  marks = diagnosis.validation_vs_mtf(results, {("mtf", 96): 96, ("mola", 96): 24}, seeds)
  assert set(marks) == {("mola", 96)}
  assert marks[("mola", 96)] == {"val_mse": 0.85, "mtf_val_mse": 0.9, "beats_mtf": True}
  assert diagnosis.validation_mark(marks[("mola", 96)]) == "yes (-0.0500)"
  assert diagnosis.validation_mark(None) == "—"


def synthetic(method: str):
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.method, cfg.horizon, cfg.segment_len = method, 48, 16
  cfg.adapt.update(epochs=2, lr=1e-2)
  return cfg


def test_the_figures_of_a_real_pair_agree_with_its_records(tmp_path, monkeypatch):
  """On a tiny real pair: the copy scored on validation is the epoch-0 record, the loaded MoLA its selected epoch's
  record and mtf its own val_mse; the updates are zero at the start and not after training; mixtures are
  distributions."""
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  train_and_evaluate(synthetic("mtf"), tmp_path / "mtf")
  train_and_evaluate(synthetic("mola"), tmp_path / "mola")
  f = diagnosis.diagnose(tmp_path / "mtf", tmp_path / "mola")
  per_segment = lambda steps: np.reshape(steps, (3, 16)).mean(axis=1)
  np.testing.assert_allclose(per_segment(f["val_copy_steps"]), f["curve"][0], rtol=1e-5)
  np.testing.assert_allclose(per_segment(f["val_mola_steps"]), f["val_mola_segments"], rtol=1e-5)
  np.testing.assert_allclose(np.mean(f["val_mtf_steps"]), f["val_mtf"], rtol=1e-5)
  assert f["test_copy"].shape == (48,) and not np.allclose(f["test_copy"], f["test_mola"])
  assert f["verdict"] in diagnosis.VERDICTS
  assert len(f["norms"]) == 2 and all(n.shape == (3,) and (n > 0).all() for n in f["norms"].values())
  for w in f["mixtures"].values():
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
  fresh = build(plan.model_spec(synthetic("mola")), channels=7, marks=4, pred_len=16, segments=3, rngs=nnx.Rngs(0))
  assert all((n == 0).all() for n in diagnosis.update_norms(fresh).values())  # B = 0: the copy itself


def test_the_options_report_judges_on_validation_and_counts_horizons_at_or_below_mtf(tmp_path, capsys):
  """A baseline and an option study (made up as lab/reproduce.py writes them): the option's MoLA is lower on
  validation at every horizon, the baseline's at none."""
  from test_report import make_study

  from mola_jax.lab.report import options

  mtf = [[0.2, 0.2, 0.4, 0.4]] * 3
  base = make_study(tmp_path, "base", "ETTh1", mtf, [[0.2, 0.5]] * 3, {"mtf": 1.0, "mola": 1.1})
  better = make_study(tmp_path, "better", "ETTh1", mtf, [[0.2, 0.3]] * 3, {"mtf": 1.0, "mola": 0.9})
  assert options.means(better, "mola", "val_mse") == {4: 0.9, 8: 0.9, 12: 0.9, 16: 0.9}
  options.main([base, better])
  out = capsys.readouterr().out
  assert "| 4 | 1.0000 | 1.1000 | **0.9000** |" in out and "| ≤ mtf | | 0/4 | 4/4 |" in out
  assert "| mean | 0.3000 | 0.3500 | 0.2500 |" in out  # test: (0.2 + 0.5) / 2 and (0.2 + 0.3) / 2
