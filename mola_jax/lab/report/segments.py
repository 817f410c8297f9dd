"""The multi-dataset table and its summary (docs/datasets_study.sh): per dataset and horizon, mtf, MoLA with the
paper's segment options and MoLA with data-driven ones (auto), each the mean test MSE over seeds with its
Student-t 95% interval, the published iTransformer figure beside them, and whether MoLA (auto) beats mtf outside
the seed spread (the paired 95% interval of the per-seed differences excludes 0), inside it, or loses.

    python -m mola_jax.lab.report.segments runs/datasets   # reads <dataset>/paper and, where run, <dataset>/auto
    python -m mola_jax.lab.report.segments runs/datasets per_segment   # adds <dataset>/per_segment, where run

With further study names, each adds a column of MoLA from <dataset>/<name> and its own verdict against mtf.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from mola_jax.lab.stats import ci95 as ci
from mola_jax.lab.stats import roots, run_result
from mola_jax.lab.stats import table as _table

# Published iTransformer test MSE at look-back 96 (Liu et al., ICLR 2024, full-results table). Not produced here.
PUBLISHED = {
  "ETTh1": {96: 0.386, 192: 0.441, 336: 0.487, 720: 0.503},
  "ETTm2": {96: 0.180, 192: 0.250, 336: 0.311, 720: 0.412},
  "exchange_rate": {96: 0.086, 192: 0.177, 336: 0.331, 720: 0.847},
}


def chosen_cells(study: pathlib.Path, method: str, horizon: int) -> dict[int, dict]:
  """{seed: results} of the S the study kept for (method, horizon): the S its table reports."""
  table = {(r["method"], r["horizon"]): r for r in _table(study)}
  s = table[(method, horizon)]["segment_len"]
  where = roots(study)
  found = {
    p.parent.name
    for root in filter(None, where)
    for p in pathlib.Path(root).glob(f"cells/{method}-T{horizon}-S{s}-seed*/results.json")
  }
  results = (run_result(where, f"cells/{name}") for name in sorted(found))
  return {r["seed"]: r for r in results}


def verdict(mtf: dict, mola: dict) -> str:
  seeds = sorted(set(mtf) & set(mola))
  diff = np.array([mtf[s]["test_mse"] - mola[s]["test_mse"] for s in seeds])  # > 0: MoLA better
  half = ci(diff)
  if diff.size < 2:
    return f"{'wins' if diff.mean() > 0 else 'loses'} ({diff.size} seed: no spread)"
  if diff.mean() > 0:
    return "wins, outside the spread" if diff.mean() - half > 0 else "wins, inside the spread"
  return "loses, outside the spread" if diff.mean() + half < 0 else "loses, inside the spread"


def dataset_block(folder: pathlib.Path, names: list[str], extra: list[str]) -> tuple[list[str], list[str], str]:
  """One dataset's rows: the test table, the validation table, and the line of the MoLA study (auto or an
  extra one run at every horizon) with the lowest validation MSE averaged over the horizons."""
  studies = {n: folder / n for n in names if (folder / n / "table.csv").is_file()}
  rows = _table(studies["paper"])
  name, horizons = rows[0]["dataset"], sorted({r["horizon"] for r in rows})
  ran = {n: {r["horizon"] for r in _table(study) if r["method"] == "mola"} for n, study in studies.items()}
  means, vals, verdicts, test_rows, val_rows = {}, {}, {}, [], []
  for h in horizons:  # a study run at some horizons only (selection_study.sh HORIZONS=...) shows "—" elsewhere
    cells = {"mtf": chosen_cells(studies["paper"], "mtf", h)}
    cells |= {n: chosen_cells(study, "mola", h) for n, study in studies.items() if h in ran[n]}
    text = {}
    for key, c in cells.items():
      mse = [r["test_mse"] for r in c.values()]
      means.setdefault(key, []).append(np.mean(mse))
      vals.setdefault(key, []).append(np.mean([r["val_mse"] for r in c.values()]))
      s = next(iter(c.values()))["segment_len"]
      text[key] = f"{np.mean(mse):.4f} ± {ci(mse):.4f}" + (f" (S={s})" if key != "mtf" else "")
    for n in cells.keys() - {"mtf"}:
      verdicts.setdefault(n, []).append(verdict(cells["mtf"], cells[n]))
    pub = PUBLISHED.get(name, {}).get(h)
    cols = [text.get(n, "—") for n in names] + [f"{pub:.3f} (published)" if pub else "—"]
    cols += [verdicts[n][-1] if n in cells else "—" for n in ["auto"] + extra]
    test_rows.append(f"| {name} | {h} | {text['mtf']} | " + " | ".join(cols) + " |")
    val_rows.append(
      f"| {name} | {h} | " + " | ".join(f"{vals[k][-1]:.4f}" if k in cells else "—" for k in ["mtf"] + names) + " |"
    )
  avg = [f"{np.mean(means[k]):.4f}" if len(means.get(k, ())) == len(horizons) else "—" for k in ["mtf"] + names]
  test_rows.append(f"| {name} | average | " + " | ".join(avg) + " |" + " |" * (1 + len(extra) + 1))
  full = [n for n in ["auto"] + extra if len(vals.get(n, ())) == len(horizons)]
  pick = min(full, key=lambda n: np.mean(vals[n]))
  choice = (
    f"| {name} | {pick} | "
    + " | ".join(verdicts[pick])
    + f" | {np.mean(means['mtf']):.4f} / {np.mean(means[pick]):.4f} |"
  )
  return test_rows, val_rows, choice


def main(root: pathlib.Path, extra: list[str]) -> None:
  names = ["paper", "auto"] + extra
  heads = [f"MoLA, {n} S" if n in ("paper", "auto") else f"MoLA, {n}" for n in names] + ["published iTransformer"]
  heads += [f"MoLA ({n}) vs mtf" for n in ["auto"] + extra]
  print("| dataset | T | mtf | " + " | ".join(heads) + " |")
  print("|---" * (4 + 2 * len(names) - 1) + "|")
  val_rows, choices = [], []
  for folder in sorted(p for p in root.iterdir() if (p / "paper" / "table.csv").is_file()):
    test, val, choice = dataset_block(folder, names, extra)
    print("\n".join(test))
    val_rows += val
    choices.append(choice)
  if extra:  # the options are judged on validation: the same cells' mean validation MSE, and the choice it makes
    print("\nValidation MSE, mean over seeds (what the options are judged on)\n")
    print("| dataset | T | mtf | " + " | ".join(f"MoLA, {n}" for n in names) + " |")
    print("|---" * (3 + len(names)) + "|")
    print("\n".join(val_rows))
    print("\nPer dataset, the MoLA study with the lowest validation MSE over the horizons, against mtf\n")
    print("| dataset | chosen on validation | T = 96 (ILI 24) | 192 (36) | 336 (48) | 720 (60) | mean mtf / chosen |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(choices))
  periods = {p.parent.parent.name: json.loads(p.read_text())["periods"] for p in root.glob("*/auto/periods.json")}
  print(f"\nPeriods detected on the training splits: {periods}")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/datasets"), sys.argv[2:])
