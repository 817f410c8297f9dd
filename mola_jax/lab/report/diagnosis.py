"""Why MoLA loses to the direct model it competes with, cell by cell (docs/results.md §15). For a finished mtf/MoLA
pair of runs, or every chosen cell of a reproduction study (lab/reproduce.py):

* where the gap is: MoLA's MSE minus mtf's per segment and per step, on validation and on test;
* how far stage 2 moved from where it starts, the stage-1 forecast copied to every segment: validation before
  (the epoch-0 record of stage "adapt" in metrics.jsonl), after the first epoch and at the selected state, and on
  test the copy's error (the stage-2 model scored with its adapters at zero);
* the adapters' updates, ||delta_k||_F / ||W||_F per adapted layer and segment (W: the frozen kernel they adapt),
  and how each segment mixes the shared experts (softmax(logits[k]));
* a verdict.

    python -m mola_jax.lab.report.diagnosis runs/cyclenet/ETTh1-cyclenet [MORE_STUDIES] [--files-only]
    python -m mola_jax.lab.report.diagnosis --pair MTF_WORKDIR MOLA_WORKDIR

Verdicts, per seed and per cell (on the means over its seeds), with their thresholds:
  wins           MoLA's test MSE is at or below mtf's.
  selection      MoLA loses on test, though validation preferred it (its validation MSE below mtf's): the
  and shift      choice rested on a signal the test split does not share.
  capacity       MoLA loses on validation too, and stage 2 hardly moved validation from the copy:
                 |copy - MoLA| < MOVED (1%) of the copy's validation MSE. Nothing moves.
  optimisation   MoLA loses on validation too, though stage 2 moved it by at least MOVED: it moves, then stops
                 above mtf ("closed": the share of the copy's validation gap to mtf that stage 2 closed).

With --files-only only results.json, metrics.jsonl and config.json are read (no jax): the verdicts, the test gaps
and MoLA's validation curve. Otherwise every run is also loaded and scored: validation per step for both methods
(mtf's metrics.jsonl has no per-step validation), the copy on both splits, the update norms and the mixtures.
`validation_vs_mtf` gives reproduce's table the signal its choices rest on: whether MoLA beat its own mtf on
validation.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from mola_jax.lab.stats import roots, run_dir, table
from mola_jax.stopping import SegmentStopper

MOVED = 0.01  # stage 2 "moved" when validation changed by at least 1% of the copy's validation MSE
VERDICTS = ("wins", "selection and shift", "capacity", "optimisation")


def verdict(val_copy: float, val_mola: float, val_mtf: float, test_mola: float, test_mtf: float) -> str:
  """One of VERDICTS (module docstring) from the copy's, MoLA's and mtf's validation MSE and the two test MSEs."""
  if test_mola <= test_mtf:
    return "wins"
  if val_mola < val_mtf:
    return "selection and shift"
  return "capacity" if abs(val_copy - val_mola) < MOVED * val_copy else "optimisation"


# ---------------------------------------------------------------------------------------------------------------
# What the files say (no jax).


def records(workdir: pathlib.Path, stage: str = "adapt") -> list[dict]:
  """A run's metrics.jsonl records of `stage`, in order."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["stage"] == stage]


def selected_per_segment(curve: np.ndarray, selection: str, best_epoch: int, patience: int) -> np.ndarray:
  """curve [E + 1, K] (row 0: the copy) -> the selected state's validation MSE per segment [K]: the best epoch's
  row (any_improved), or each segment's own best while it trained (per_segment: the stopper replayed)."""
  if selection != "per_segment":
    return curve[best_epoch]
  stopper = SegmentStopper(curve[0].copy(), patience)  # it keeps its best in the array it is given
  for row in curve[1:]:
    stopper.update(row)
  return stopper.best


def file_figures(mtf_dir, mola_dir) -> dict:
  """The pair's figures from its files: test per step [T] of both, validation of mtf, MoLA's stage-2 validation
  curve per segment [E + 1, K] (row 0: the copy) and its selected state per segment [K]."""
  mtf, mola = (json.loads((pathlib.Path(d) / "results.json").read_text()) for d in (mtf_dir, mola_dir))
  cfg = json.loads((pathlib.Path(mola_dir) / "config.json").read_text())
  curve = np.array([r["val_mse_per_segment"] for r in records(mola_dir)], np.float64)  # [E + 1, K]
  adapt = cfg.get("adapt", {})
  best = mola["stages"]["adapt"]["best_epoch"]
  chosen = selected_per_segment(curve, adapt.get("selection", "any_improved"), best, adapt.get("patience", 3))
  return {
    "horizon": mola["horizon"], "S": mola["segment_len"], "K": curve.shape[1], "seed": mola["seed"],
    "test_mtf": np.asarray(mtf["per_step_test_mse"]), "test_mola": np.asarray(mola["per_step_test_mse"]),
    "val_mtf": mtf["val_mse"], "val_mola": mola["val_mse"], "curve": curve, "val_mola_segments": chosen,
    "best_epoch": best,
  }  # fmt: skip


def summary(f: dict) -> dict:
  """The scalars a verdict reads, from a pair's figures (file_figures, optionally with model_figures')."""
  curve = f["curve"]
  copy, first, mola, mtf = curve[0].mean(), curve[min(1, len(curve) - 1)].mean(), f["val_mola"], f["val_mtf"]
  moved = copy - mola
  return {
    "val_copy": copy, "val_first": first, "val_mola": mola, "val_mtf": mtf,
    "test_mola": f["test_mola"].mean(), "test_mtf": f["test_mtf"].mean(),
    "test_copy": np.mean(f["test_copy"]) if "test_copy" in f else np.nan,
    "moved": moved / copy,  # > 0: validation fell from the copy
    "closed": moved / (copy - mtf) if copy > mtf else np.nan,  # share of the copy's gap to mtf that was closed
    # the share of that movement made in epoch 1 (undefined for a move under a tenth of MOVED)
    "first_share": (copy - first) / moved if abs(moved) >= 0.1 * MOVED * copy else np.nan,
  }  # fmt: skip


def pair_verdict(s: dict) -> str:
  return verdict(s["val_copy"], s["val_mola"], s["val_mtf"], s["test_mola"], s["test_mtf"])


# ---------------------------------------------------------------------------------------------------------------
# What the runs themselves say: loaded and scored (jax).


def update_norms(model) -> dict[str, np.ndarray]:
  """path -> ||delta_k||_F / ||W||_F [K] of every adapted layer whose change is a weight delta."""
  from mola_jax.models import adapters, techniques

  out = {}
  for path, layer in adapters.adapted_layers(model).items():
    if techniques.has_delta(layer.adapter):
      delta = np.asarray(layer.adapter.delta(), np.float64)  # [K, d_in, d_out]
      out[path] = np.sqrt((delta**2).sum(axis=(1, 2))) / np.linalg.norm(np.asarray(layer.kernel[...], np.float64))
  return out


def zero_adapters(model) -> bool:
  """Replace every adapter by zero per-segment deltas (the copied stage-1 forecast); False, and `model` unchanged,
  if some adapter's change is not a weight delta."""
  from mola_jax.models import adapters, techniques

  layers = adapters.adapted_layers(model).values()
  if not all(techniques.has_delta(layer.adapter) for layer in layers):
    return False
  adapters.bake(model)
  return True


def model_figures(mtf_dir, mola_dir) -> dict:
  """The pair loaded and scored: validation per step [T] of mtf, MoLA and the copy, the copy's test per step,
  the update norms and the mixture weights [K, P] per layer (none after per-segment selection, which bakes the
  deltas)."""
  from mola_jax import data, evaluation, plan, runtime
  from mola_jax.inference import load_run
  from mola_jax.models import adapters
  from mola_jax.state import TrainState

  mtf, mola = load_run(mtf_dir), load_run(mola_dir)
  series = data.load_series(mola.cfg.data)

  def score(run, split: str, model=None) -> np.ndarray:  # model: another model in place of the run's own
    p, state = plan.make(run.cfg), run.state if model is None else TrainState.create(model, run.stage)
    with runtime.matmul_precision(run.cfg.matmul_precision):
      scores = evaluation.score_split(state, p.final, series=series, evaluation=p.evaluation, split=split)
    return np.asarray(scores["per_step_mse"])

  out = {"val_mtf_steps": score(mtf, "val"), "val_mola_steps": score(mola, "val"), "norms": update_norms(mola.model)}
  out["mixtures"] = {k: np.asarray(v) for k, v in adapters.mixture_weights(mola.model).items()}
  copy = mola.model
  if zero_adapters(copy):
    out["val_copy_steps"], out["test_copy"] = score(mola, "val", copy), score(mola, "test", copy)
  return out


def diagnose(mtf_dir, mola_dir, *, models: bool = True) -> dict:
  """Every figure of one mtf/MoLA pair of finished runs, its summary and its verdict."""
  f = file_figures(mtf_dir, mola_dir)
  if models:
    f |= model_figures(mtf_dir, mola_dir)
  f["summary"] = summary(f)
  f["verdict"] = pair_verdict(f["summary"])
  return f


# ---------------------------------------------------------------------------------------------------------------
# A reproduction study's cells, and the table's validation signal.


def study_pairs(study: pathlib.Path) -> dict[tuple[int, int], list[tuple]]:
  """{(T, S): [(seed, mtf workdir, MoLA workdir)]} of the cells a study's table reports (the S it kept)."""
  rows = {(r["method"], r["horizon"]): r for r in table(study)}
  where, out = roots(study), {}
  for (method, h), row in sorted(rows.items()):
    if method != "mola" or ("mtf", h) not in rows:
      continue
    s = row["segment_len"]
    seeds = sorted(
      int(p.parent.name.rsplit("seed", 1)[1])
      for root in filter(None, where)
      for p in pathlib.Path(root).glob(f"cells/mola-T{h}-S{s}-seed*/results.json")
    )
    pairs = [
      (seed, run_dir(where, f"cells/mtf-T{h}-S{h}-seed{seed}"), run_dir(where, f"cells/mola-T{h}-S{s}-seed{seed}"))
      for seed in dict.fromkeys(seeds)
    ]
    out[(h, s)] = [p for p in pairs if p[1] is not None]
  return out


def validation_vs_mtf(results: dict, chosen: dict, seeds) -> dict[tuple[str, int], dict]:
  """reproduce's results {(method, T, S, seed): results.json} and chosen S {(method, T): S} -> {(method, T):
  {"val_mse", "mtf_val_mse", "beats_mtf"}} for every method other than mtf that has an mtf cell at that T: the
  means over `seeds` of the chosen cells' validation MSE, and whether MoLA's is at or below its own mtf's."""
  out = {}
  for (method, h), s in chosen.items():
    if method == "mtf" or ("mtf", h) not in chosen:
      continue
    mine = np.mean([results[(method, h, s, seed)]["val_mse"] for seed in seeds])
    mtf = np.mean([results[("mtf", h, chosen[("mtf", h)], seed)]["val_mse"] for seed in seeds])
    out[(method, h)] = {"val_mse": float(mine), "mtf_val_mse": float(mtf), "beats_mtf": bool(mine <= mtf)}
  return out


def validation_mark(entry: dict | None) -> str:
  """A table cell for validation_vs_mtf's entry: "yes (-0.0075)" (MoLA − mtf on validation), "—" for mtf."""
  if entry is None:
    return "—"
  return f"{'yes' if entry['beats_mtf'] else 'no'} ({entry['val_mse'] - entry['mtf_val_mse']:+.4f})"


# ---------------------------------------------------------------------------------------------------------------
# Printing.


def segment_rows(figs: list[dict]) -> list[str]:
  """Per segment, means over the seeds' figures: MoLA's validation path from the copy to the selected state, the
  copy's and MoLA's gaps to mtf on validation and test, and MoLA's test gap at the segment's first and last step."""
  k, s = figs[0]["K"], figs[0]["S"]
  mean = lambda key: np.mean([f[key] for f in figs], axis=0) if all(key in f for f in figs) else None

  def gap(key: str, split: str):  # [K, S] of key − mtf on the split, or None where the figures lack it
    mine, mtf = mean(key), mean(f"{split}_mtf_steps" if split == "val" else "test_mtf")
    return None if mine is None or mtf is None else np.reshape(mine - mtf, (k, s))

  gaps = [gap("val_copy_steps", "val"), gap("val_mola_steps", "val"), gap("test_copy", "test")]
  test = gap("test_mola", "test")
  path = np.mean([[f["curve"][0], f["curve"][min(1, len(f["curve"]) - 1)], f["val_mola_segments"]] for f in figs], 0)
  fmt = lambda a, i: "—" if a is None else f"{a[i].mean():+.4f}"
  return [
    f"| {i} | {i * s + 1}-{(i + 1) * s} | {path[0, i]:.4f} → {path[1, i]:.4f} → {path[2, i]:.4f} | "
    + " | ".join(fmt(g, i) for g in gaps)
    + f" | {test[i].mean():+.4f} | {test[i, 0]:+.4f} / {test[i, -1]:+.4f} |"
    for i in range(k)
  ]


SEGMENT_HEADER = [
  "| segment | steps | val MoLA: copy → epoch 1 → selected | val copy − mtf | val MoLA − mtf | test copy − mtf "
  "| test MoLA − mtf | its first / last step |",
  "|---|---|---|---|---|---|---|---|",
]


def layer_lines(figs: list[dict]) -> list[str]:
  """Per adapted layer, the mean over seeds of its update norms per segment, and how the segments mix the experts:
  the largest weight (1/P: a uniform mix) and the mean total-variation distance between two segments' mixtures."""
  lines = []
  for path in figs[0].get("norms", {}):
    norms = np.mean([f["norms"][path] for f in figs], axis=0)
    line = f"- `{path}`: ||delta_k|| / ||W|| = " + " ".join(f"{x:.3g}" for x in norms)
    mix = [w for f in figs for key, w in f.get("mixtures", {}).items() if key.startswith(f"{path}/adapter")]
    if mix:
      w = np.mean(mix, axis=0)  # [K, P]
      apart = [0.5 * np.abs(a - b).sum() for i, a in enumerate(w) for b in w[i + 1 :]]
      line += (f"; mixtures: largest weight {w.max(axis=1).mean():.2f} (uniform {1 / w.shape[1]:.2f}), "
               f"segments apart {np.mean(apart) if apart else 0.0:.2f}")  # fmt: skip
    lines.append(line)
  return lines


def cell_lines(name: str, figs: list[dict]) -> list[str]:
  """The diagnosis of one cell (its seeds' figures) as markdown lines."""
  m = cell_summary(figs)
  head = (
    f"**{name}**: {pair_verdict(m)} (per seed: {', '.join(f['verdict'] for f in figs)}). "
    f"Validation: copy {m['val_copy']:.4f} → epoch 1 {m['val_first']:.4f} → MoLA {m['val_mola']:.4f}; mtf "
    f"{m['val_mtf']:.4f} (moved {100 * m['moved']:+.2f}% of the copy, closed {_pct(m['closed'])} of its gap to mtf, "
    f"{_first(m['first_share'])}). Test: MoLA {m['test_mola']:.4f}, mtf {m['test_mtf']:.4f}, "
    f"copy {_num(m['test_copy'])}."
  )
  return [head, "", *SEGMENT_HEADER, *segment_rows(figs), "", *layer_lines(figs)]


def cell_summary(figs: list[dict]) -> dict:
  """A cell's summary: each of its seeds' summary scalars averaged (over the seeds that have it)."""
  return {key: _nanmean([f["summary"][key] for f in figs]) for key in figs[0]["summary"]}


def _nanmean(values) -> float:
  finite = [v for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else np.nan


def _first(share: float) -> str:
  if not np.isfinite(share):
    return "too small a move to split by epoch"
  return "epoch 1 moved it the other way" if share < 0 else f"{100 * share:.0f}% of the move in epoch 1"


def _pct(x: float) -> str:
  return "—" if not np.isfinite(x) else f"{100 * x:.0f}%"


def _num(x: float) -> str:
  return "—" if not np.isfinite(x) else f"{x:.4f}"


def report_study(study: pathlib.Path, *, models: bool) -> list[tuple[str, str]]:
  """Print the diagnosis of every cell of a study -> [(cell name, its verdict)]."""
  name = pathlib.Path(study).name
  print(f"\n### {name}\n")
  verdicts = []
  for (h, s), pairs in study_pairs(pathlib.Path(study)).items():
    figs = [diagnose(mtf, mola, models=models) for _, mtf, mola in pairs]
    cell = f"T = {h}, S = {s}, {len(figs)} seed{'s' * (len(figs) > 1)}"
    print("\n".join(cell_lines(cell, figs)) + "\n")
    verdicts.append((f"{name} T={h}", pair_verdict(cell_summary(figs))))
  return verdicts


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m mola_jax.lab.report.diagnosis", description=__doc__.split("\n")[0])
  parser.add_argument("studies", nargs="*", type=pathlib.Path, help="reproduction studies (lab/reproduce.py)")
  parser.add_argument("--pair", nargs=2, type=pathlib.Path, metavar=("MTF", "MOLA"), help="one pair of workdirs")
  parser.add_argument("--files-only", action="store_true", help="read the runs' files alone; load no model")
  args = parser.parse_args(argv)
  if not args.studies and not args.pair:
    parser.error("give reproduction studies, or --pair MTF_WORKDIR MOLA_WORKDIR")
  if args.pair:
    f = diagnose(*args.pair, models=not args.files_only)
    print("\n".join(cell_lines(f"T = {f['horizon']}, S = {f['S']}, seed {f['seed']}", [f])))
    for path, w in f.get("mixtures", {}).items():
      print(f"\nmixture weights of `{path}` (a row per segment):\n" + np.array2string(w, precision=2))
  verdicts = [v for study in args.studies for v in report_study(study, models=not args.files_only)]
  if verdicts:
    print("| cell | verdict |\n|---|---|\n" + "\n".join(f"| {c} | {v} |" for c, v in verdicts))
    counts = {v: sum(x == v for _, x in verdicts) for v in VERDICTS}
    print("\n" + ", ".join(f"{v}: {n}" for v, n in counts.items()))


if __name__ == "__main__":
  main(sys.argv[1:])
