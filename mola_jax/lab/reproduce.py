"""The evidence in one command: horizons x methods x seeds, S chosen on validation, a table with 95% CIs.

    python -m mola_jax.lab.reproduce --config etth1 --workdir runs/repro_etth1
    python -m mola_jax.lab.reproduce --config etth1 --workdir DIR \
        --study.horizons='(96,)' --study.methods='("mtf","mola")' --study.num_seeds=1

Layout of DIR (every cell is an ordinary training workdir, so every tool that reads one works here too):
  pretrain/S{S}-seed{seed}/        one stage-1 model per (S, seed), shared by every method at every horizon
  cells/{method}-T{T}-S{S}-seed{seed}/   stage 2 (or mtf) runs; results.json marks a finished cell
  config.json, study.json          the run config and the study's settings
  selection.csv                    validation MSE of each S option (first seed) and the S chosen
  table.csv, table.md              the result table; per_step_T{T}.png, windows_T{T}.png

Runs of stage 1 and mtf do not depend on the stage-2 recipe: with --study.reuse_from=OTHER_STUDY those that
OTHER_STUDY finished with the same data, model, pretrain recipe and seed are used from there, and so is any
stage-2 run it finished with the very same config.

Segment length: for each (method, horizon) every option is trained with the first seed and the one with the
lower validation MSE is kept; the other seeds run the chosen S only. The test split never influences it. The
options are the config's segment_options, and with --study.segment_options=auto also whole multiples of the
series' dominant period, detected on the training split (lab/periods.py; periods.json). Rerunning the command
skips finished cells and resumes unfinished ones from their resume checkpoints (one of another config starts
over). With --study.seeds_in_one_program=True the seeds of a cell train side by side in one program
(lab/side_by_side.train_runs), every seed on every S option (the first seed's validation still alone picks S),
each in the workdir a serial run writes. On several processes (jax.distributed) every cell trains on all of
them and process 0 writes.

The cells form a graph (graph(); graph.json in DIR): stage 1 per (S, seed) feeds stage 2 per (method, T, S,
seed); mtf per (T, seed) stands alone; a later seed's cells wait on the first seed's option cells, whose
validation MSE chooses their S. --study.engine=ray runs it over a Ray cluster, one cell per task (lab/engine.py):

    python -m mola_jax.lab.reproduce --config etth1 --workdir DIR --study.engine=ray \
        --study.cell_resources='{"GPU": 1}'    # joins $RAY_ADDRESS, or starts Ray on this machine
"""

from __future__ import annotations

import dataclasses
import pathlib

import ml_collections
import numpy as np
from ml_collections import config_dict

from mola_jax import data, distributed, plan
from mola_jax import workdir as workdir_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import engine, periods, study
from mola_jax.lab.report import diagnosis
from mola_jax.lab.stats import ci95
from mola_jax.models.techniques import TECHNIQUES


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.horizons = config_dict.placeholder(tuple)  # unset: every horizon the config has segment options for
  s.methods = ("mtf", "lora", "mola")
  s.num_seeds = 3  # seeds cfg.seed, cfg.seed + 1, ...
  # Another study's workdir whose finished runs (stage 1, mtf, stage 2) are reused when they are the same runs.
  s.reuse_from = config_dict.placeholder(str)
  # The segment lengths each horizon tries (chosen on validation): "auto", the config's segment_options plus up
  # to two whole multiples of the series' dominant period found on the training split (lab/periods.py), with
  # at most max_segments segments; "config", the config's options alone (the paper's). auto is the default
  # because on ETTh1 it was no worse at any horizon and better on average (docs/results.md §11); where the data
  # has no usable period it proposes nothing new.
  s.segment_options = "auto"
  s.max_segments = 8
  # Train the seeds of a cell side by side in one program (stacked states, each seed its own orders, stopping
  # and selection; the files of serial runs). Off by default: on a 2-core CPU it does not pay (docs/performance.md);
  # on an accelerator a step of one seed leaves the device mostly idle.
  s.seeds_in_one_program = False
  return engine.add_settings(s)  # --study.engine, cell_resources, ray_address


@dataclasses.dataclass
class Book:
  """What the study has found so far."""

  results: dict = dataclasses.field(default_factory=dict)  # (method, T, S, seed) -> results.json
  dirs: dict = dataclasses.field(default_factory=dict)  # (method, T, S, seed) -> the run's workdir
  chosen: dict = dataclasses.field(default_factory=dict)  # (method, T) -> S
  selection: list = dataclasses.field(default_factory=list)  # rows of selection.csv


def horizons_of(cfg, settings) -> list[int]:
  if settings.horizons is not None:
    return [int(h) for h in settings.horizons]
  return sorted(int(h) for h in cfg.segment_options)


def segment_options(cfg, method: str, horizon: int, found, max_segments: int) -> tuple[int, ...]:
  """The S options of a cell: T for mtf; cfg.segment_len if set; else the config's options for T, and with
  detected periods `found` (segment_options="auto") whole multiples of them (periods.candidates)."""
  if not TECHNIQUES[method].two_stage:
    return (horizon,)
  if cfg.segment_len is not None:
    return (cfg.segment_len,)
  options = tuple(cfg.segment_options.get(str(horizon), ()))
  if not options:
    raise ConfigError(f"no segment_options for horizon {horizon}; add them to the config")
  if found is None:
    return options
  return periods.candidates(horizon, found, paper=options, max_segments=max_segments)


def detect_periods(cfg, settings, horizons: list[int], workdir: pathlib.Path) -> list[int] | None:
  """segment_options="auto": the dominant periods of the training split (written to periods.json); else None."""
  if settings.segment_options not in ("config", "auto"):
    raise ConfigError(f"unknown study.segment_options {settings.segment_options!r}; use config or auto")
  if settings.segment_options == "config":
    return None
  series = data.load_series(cfg.data)
  train = series.values[slice(*series.borders["train"])]  # the training split only: nothing of val or test
  found = periods.dominant_periods(train, max_period=max(horizons) // 2)
  if distributed.is_lead():
    workdir_lib.write_json(workdir / "periods.json", {"periods": found, "rows": len(train)})
  print(f"[reproduce] periods of the training split: {found or 'none'}", flush=True)
  return found


def run_cells(cfg, settings, workdir: pathlib.Path, method: str, horizon: int, s: int, seeds: list, *after) -> list:
  """The cell (method, T, S) of each seed in `seeds`, trained side by side (their stage-1 models first, for a
  two-stage method, unless done) -> [(results, its workdir)] in the order of `seeds`. `after`: the results of
  the cells this one waits for (the study engine's dependencies)."""
  rel = [f"cells/{method}-T{horizon}-S{s}-seed{seed}" for seed in seeds]
  if not TECHNIQUES[method].two_stage:
    cells = [
      study.cell_cfg(cfg, method=method, horizon=horizon, segment_len=None, seed=seed, stage="all") for seed in seeds
    ]
    dirs = [study.locate(settings.reuse_from, c, workdir, r) for c, r in zip(cells, rel, strict=True)]
    return list(zip(study.run_group(cells, dirs), dirs, strict=True))
  stage1 = run_stage1(cfg, settings, workdir, s, seeds)[1]
  cells = [
    study.cell_cfg(cfg, method=method, horizon=horizon, segment_len=s, seed=seed, stage="adapt", init_from=str(d))
    for seed, d in zip(seeds, stage1, strict=True)
  ]
  dirs = [
    study.locate(settings.reuse_from, c, workdir, r, identity=study.run_identity)
    for c, r in zip(cells, rel, strict=True)
  ]
  return list(zip(study.run_group(cells, dirs), dirs, strict=True))


def run_stage1(cfg, settings, workdir: pathlib.Path, s: int, seeds: list) -> tuple[list, list]:
  """The stage-1 models of S for `seeds`, trained side by side unless done -> (their results, their workdirs).
  Stage 1 is the backbone alone, whatever the method: one run (made as mola's) serves every method and horizon."""
  pres = [study.cell_cfg(cfg, method="mola", horizon=s, segment_len=s, seed=seed, stage="pretrain") for seed in seeds]
  dirs = [
    study.locate(settings.reuse_from, p, workdir, f"pretrain/S{s}-seed{seed}")
    for p, seed in zip(pres, seeds, strict=True)
  ]
  return study.run_group(pres, dirs), dirs


def pick(options, runs: list) -> int:
  """The option with the lower validation MSE of the first seed; `runs`: each option's [(results, workdir)]."""
  vals = {s: cell[0][0]["val_mse"] for s, cell in zip(options, runs, strict=True)}
  return min(vals, key=vals.get)


def stage1_if_chosen(cfg, settings, workdir: pathlib.Path, s: int, seeds: list, choosers: list, *runs) -> list | None:
  """The stage-1 models of S for later seeds, trained if the first seed's validation chose S for any (method, T)
  of `choosers` (each its S options; `runs`: their option cells' runs, in that order), else None."""
  chosen, i = set(), 0
  for options in choosers:
    chosen.add(pick(options, runs[i : i + len(options)]))
    i += len(options)
  return run_stage1(cfg, settings, workdir, s, seeds)[0] if s in chosen else None


def run_chosen(cfg, settings, workdir: pathlib.Path, method: str, horizon: int, seeds: list, options, *runs) -> tuple:
  """The cell (method, T) of later seeds on the S the first seed's validation chose -> (S, run_cells' list).
  `runs`: the first seed's option cells (then the stage-1 cells this one waits for)."""
  s = pick(options, runs[: len(options)])
  return s, run_cells(cfg, settings, workdir, method, horizon, s, seeds)


def tag(group: list) -> str:
  """The seeds of a cell's key: seed2023, or seed2023+2024+2025 for seeds side by side."""
  return "seed" + "+".join(map(str, group))


def graph(cfg, settings, workdir: pathlib.Path, options: dict, groups: list) -> list[engine.Cell]:
  """The study's cells. The first group of seeds trains every S option; a later group trains the S the first seed
  chose: its stage-2 cells and the stage-1 models only a choice can ask for wait on the option cells they choose
  from (an (m, T) with one option waits on nothing)."""
  first, cells, keys = groups[0], [], set()

  def add(key, fn, args, deps=(), kind=""):
    if key not in keys:
      keys.add(key)
      cells.append(engine.Cell(key, fn, args, tuple(deps), kind))

  def stage2(method, horizon, s, group):
    two = TECHNIQUES[method].two_stage
    if two:
      add(f"pretrain/S{s}-{tag(group)}", stage1_cell, (cfg, settings, workdir, s, group), kind=f"pretrain S={s}")
    deps = [f"pretrain/S{s}-{tag(group)}"] if two else []
    key = f"cells/{method}-T{horizon}-S{s}-{tag(group)}"
    add(key, run_cells, (cfg, settings, workdir, method, horizon, s, group), deps, f"{method} T={horizon}")
    return key

  choosers = {}  # S -> the (method, T) with several options that may choose it
  for (method, horizon), opts in options.items():
    for s in opts:
      stage2(method, horizon, s, first)
      if len(opts) > 1:
        choosers.setdefault(s, []).append((method, horizon))
  # S that a (method, T) with one option needs whatever the choices: stage 1 of later seeds trains it unasked.
  needed = {o[0] for (m, _), o in options.items() if len(o) == 1 and TECHNIQUES[m].two_stage}
  for group in groups[1:]:
    for (method, horizon), opts in options.items():
      if len(opts) == 1:
        stage2(method, horizon, opts[0], group)
        continue
      runs = [f"cells/{method}-T{horizon}-S{s}-{tag(first)}" for s in opts]
      pres = []
      for s in opts:
        pres.append(f"pretrain/S{s}-{tag(group)}")
        if s in needed:
          add(pres[-1], stage1_cell, (cfg, settings, workdir, s, group), kind=f"pretrain S={s}")
        need = choosers[s]
        deps = [f"cells/{m}-T{h}-S{o}-{tag(first)}" for m, h in need for o in options[(m, h)]]
        args = (cfg, settings, workdir, s, group, [options[c] for c in need])
        add(pres[-1], stage1_if_chosen, args, deps, f"pretrain S={s}")
      add(f"cells/{method}-T{horizon}-chosen-{tag(group)}", run_chosen,
          (cfg, settings, workdir, method, horizon, group, opts), runs + pres, f"{method} T={horizon}")  # fmt: skip
  return cells


def stage1_cell(cfg, settings, workdir: pathlib.Path, s: int, seeds: list) -> list:
  """A stage-1 cell: the models of S for `seeds` -> their results."""
  return run_stage1(cfg, settings, workdir, s, seeds)[0]


def run(cfg, settings, workdir) -> list[dict]:
  """Run every missing cell and write the table, the selection and the plots. Returns the table rows."""
  workdir = pathlib.Path(workdir)
  seeds = [cfg.seed + i for i in range(settings.num_seeds)]
  horizons, methods = horizons_of(cfg, settings), list(settings.methods)
  for method in methods:  # fail on a bad request before hours of work, not after
    plan.make(study.cell_cfg(cfg, method=method, horizon=horizons[0]))
  engine.check(settings)
  study.save_settings(workdir, cfg, settings)
  found = detect_periods(cfg, settings, horizons, workdir)
  options = {(m, h): segment_options(cfg, m, h, found, settings.max_segments) for h in horizons for m in methods}
  # Seeds in one program: every seed of a cell trains with the first on each S option (the first seed's
  # validation still alone picks S); else the first seed tries the options and the others run the chosen S.
  groups = [seeds] if settings.seeds_in_one_program else [[seed] for seed in seeds]
  results = engine.run(graph(cfg, settings, workdir, options, groups), settings, workdir)
  book = collect(results, options, groups)
  rows = table_rows(cfg, book, seeds, horizons, methods)
  write(workdir, book, rows, seeds, horizons, methods)
  print(table_markdown(rows))
  return rows


def collect(results: dict, options: dict, groups: list) -> Book:
  """The book of a finished graph: every run's results and workdir, the S chosen, the selection rows."""
  book, first = Book(), groups[0]

  def note(method, horizon, s, group, runs):
    for seed, (r, d) in zip(group, runs, strict=True):
      book.results[(method, horizon, s, seed)], book.dirs[(method, horizon, s, seed)] = r, d

  for (method, horizon), opts in options.items():
    for s in opts:
      note(method, horizon, s, first, results[f"cells/{method}-T{horizon}-S{s}-{tag(first)}"])
    choose(book, method, horizon, opts, first[0])
    for group in groups[1:]:
      if len(opts) == 1:
        note(method, horizon, opts[0], group, results[f"cells/{method}-T{horizon}-S{opts[0]}-{tag(group)}"])
      else:
        s, runs = results[f"cells/{method}-T{horizon}-chosen-{tag(group)}"]
        note(method, horizon, s, group, runs)
  return book


def choose(book: Book, method: str, horizon: int, options, seed: int) -> None:
  """The option with the lower validation MSE of the first seed, and its selection.csv rows."""
  vals = {s: book.results[(method, horizon, s, seed)]["val_mse"] for s in options}
  book.chosen[(method, horizon)] = min(vals, key=vals.get)
  for s in options:
    book.selection.append({
      "method": method, "horizon": horizon, "segment_len": s, "seed": seed, "val_mse": vals[s],
      "test_mse": book.results[(method, horizon, s, seed)]["test_mse"], "chosen": s == book.chosen[(method, horizon)],
    })  # fmt: skip


def write(workdir: pathlib.Path, book: Book, rows: list[dict], seeds, horizons, methods) -> None:
  lead = distributed.is_lead()
  if lead:
    study.write_csv(workdir / "selection.csv", book.selection)
    study.write_csv(workdir / "table.csv", rows)
    workdir_lib.write_text(workdir / "table.md", table_markdown(rows))
  # Every process: the plots load runs, and a restore on several processes is a collective. Process 0 saves.
  plot(workdir, book, seeds, horizons, methods, save=lead)


def table_rows(cfg, book: Book, seeds, horizons, methods) -> list[dict]:
  rows = []
  for horizon in horizons:
    block = []
    for method in methods:
      s = book.chosen[(method, horizon)]
      runs = [book.results[(method, horizon, s, seed)] for seed in seeds]
      mse, mae = [r["test_mse"] for r in runs], [r["test_mae"] for r in runs]
      block.append({
        "dataset": runs[0]["dataset"], "backbone": cfg.backbone, "method": method, "horizon": horizon,
        "segment_len": s, "seeds": len(seeds), "test_mse_mean": float(np.mean(mse)), "test_mse_ci95": ci95(mse),
        "test_mae_mean": float(np.mean(mae)), "test_mae_ci95": ci95(mae), "winner": False, **panel_scores(runs),
        "val_mse_mean": float(np.mean([r["val_mse"] for r in runs])),
      })  # fmt: skip
    min(block, key=lambda r: r["test_mse_mean"])["winner"] = True
    rows += block
  # The signal every choice here rests on, beside the test figures it must not be confused with: did the method
  # beat its own mtf on validation (means over the seeds)?
  versus = diagnosis.validation_vs_mtf(book.results, book.chosen, seeds)
  for r in rows:
    r["val_vs_mtf"] = diagnosis.validation_mark(versus.get((r["method"], r["horizon"])))
  return rows


def panel_scores(runs: list[dict]) -> dict:
  """A panel's runs (data/panel.py) also report M4's scale-free scores, pooled over series: their mean and 95% CI
  over seeds (a run without a MASE, every series' training part constant, is left out of it)."""
  if "test_smape" not in runs[0]:
    return {}
  mase = [r["test_mase"] for r in runs if r.get("test_mase") is not None]
  smape = [r["test_smape"] for r in runs]
  return {"test_mase_mean": float(np.mean(mase)) if mase else None, "test_mase_ci95": ci95(mase) if mase else None,
          "test_smape_mean": float(np.mean(smape)), "test_smape_ci95": ci95(smape)}  # fmt: skip


def table_markdown(rows: list[dict]) -> str:
  panel = any("test_smape_mean" in r for r in rows)  # a panel's study: MASE and sMAPE columns too
  extra = " test MASE (±95% CI) | test sMAPE (±95% CI) |" if panel else ""
  lines = [
    f"| dataset | backbone | method | T | S | seeds | test MSE (±95% CI) | test MAE (±95% CI) |{extra} val MSE "
    "| ≤ own mtf on val |",
    "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if panel else ""),
  ]
  for r in rows:
    mse = f"{r['test_mse_mean']:.4f} ± {r['test_mse_ci95']:.4f}"
    mae = f"{r['test_mae_mean']:.4f} ± {r['test_mae_ci95']:.4f}"
    mse = f"**{mse}**" if r["winner"] else mse
    scale_free = ""
    if panel:
      mase = "n/a" if r.get("test_mase_mean") is None else f"{r['test_mase_mean']:.3f} ± {r['test_mase_ci95']:.3f}"
      scale_free = f" {mase} | {r['test_smape_mean']:.2f} ± {r['test_smape_ci95']:.2f} |"
    lines.append(
      f"| {r['dataset']} | {r['backbone']} | {r['method']} | {r['horizon']} | {r['segment_len']} | "
      f"{r['seeds']} | {mse} | {mae} |{scale_free} {r['val_mse_mean']:.4f} | {r['val_vs_mtf']} |"
    )
  return "\n".join(lines) + (
    "\n\nBold: the lowest mean test MSE at that horizon. Last column: whether the method's mean validation MSE is at"
    " or below its own mtf's (the difference in brackets), the signal S and the stage-2 recipe are chosen on.\n"
  )


def plot(workdir: pathlib.Path, book: Book, seeds, horizons, methods, save: bool = True) -> None:
  """Per-step test MSE (mean over seeds) of every method, and a few test windows of the target channel; written
  if `save`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  for horizon in horizons:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for method in methods:
      s = book.chosen[(method, horizon)]
      curve = np.mean([book.results[(method, horizon, s, seed)]["per_step_test_mse"] for seed in seeds], axis=0)
      ax.plot(np.arange(1, horizon + 1), curve, label=f"{method} (S={s})" if TECHNIQUES[method].two_stage else method)
    ax.set(xlabel="forecast step", ylabel="test MSE", title=f"Test MSE per forecast step, T={horizon}")
    ax.legend()
    fig.tight_layout()
    if save:
      workdir_lib.save_figure(fig, workdir / f"per_step_T{horizon}.png", dpi=120)
    plt.close(fig)
    runs = {m: book.dirs[(m, horizon, book.chosen[(m, horizon)], seeds[0])] for m in methods}
    plot_windows(workdir / f"windows_T{horizon}.png", runs, horizon, save)


def plot_windows(path: pathlib.Path, run_dirs: dict, horizon: int, save: bool) -> None:
  """Three test windows of the target channel: history, truth and every method's forecast."""
  import matplotlib.pyplot as plt

  from mola_jax.inference import load_run

  runs = {m: load_run(d) for m, d in run_dirs.items()}
  first = next(iter(runs.values()))
  series = data.load_series(first.cfg.data)
  src = data.window_source(series, "test", first.cfg.data.seq_len, horizon)
  picks = np.linspace(0, len(src) - 1, 3).astype(int)
  batch = data.host_batch(src, picks)
  fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.6 * len(picks)), squeeze=False)
  ch, seq_len = -1, batch["x"].shape[1]  # the target channel (OT), last by construction
  future = np.arange(seq_len, seq_len + horizon)
  for row, ax in enumerate(axes[:, 0]):
    ax.plot(np.arange(seq_len), batch["x"][row, :, ch], color="gray", lw=1, label="history")
    ax.plot(future, batch["y"][row, :, ch], color="black", lw=1.2, label="truth")
    for method, run_ in runs.items():
      ax.plot(future, run_.forecast(batch)[row, :, ch], lw=1, label=method)
    ax.set_title(f"test window {picks[row]}, channel {series.columns[ch]} (standardised)", fontsize=9)
  fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(runs) + 2, fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.96))
  if save:
    workdir_lib.save_figure(fig, path, dpi=110)
  plt.close(fig)


def command() -> None:
  """`mola-reproduce` / `python -m mola_jax.lab.reproduce`."""
  study.command(run, defaults(), "Directory of the whole study")


if __name__ == "__main__":
  command()
