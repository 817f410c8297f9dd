"""The evidence in one command: horizons x methods x seeds, S chosen on validation, a table with 95% CIs.

    python -m mola_jax.reproduce --config configs/etth1.py --workdir runs/repro_etth1
    python -m mola_jax.reproduce --config configs/etth1.py --workdir DIR \
        --config.reproduce.horizons='(96,)' --config.reproduce.methods='("mtf","mola")' --config.reproduce.num_seeds=1

Layout of DIR (every cell is an ordinary training workdir, so every tool that reads one works here too):
  pretrain/S{S}-seed{seed}/        one stage-1 model per (S, seed), shared by lora and mola at every horizon
  cells/{method}-T{T}-S{S}-seed{seed}/   stage 2 (or mtf) runs; results.json marks a finished cell
  selection.csv                    validation MSE of each S option (first seed) and the S chosen
  table.csv, table.md              the result table; per_step_T{T}.png, windows_T{T}.png

Runs of stage 1 and mtf do not depend on the stage-2 recipe: with --config.reproduce.reuse_from=OTHER_STUDY
those that OTHER_STUDY finished with the same data, model, pretrain recipe and seed are used from there, and so
is any stage-2 run it finished with the very same config.

Segment length: for each (method, horizon) every option is trained with the first seed and the one with the
lower validation MSE is kept; the other seeds run the chosen S only. The test split never influences it. The
options are the config's segment_options, and with --config.reproduce.segment_options=auto also whole
multiples of the series' dominant period, detected on the training split (mola_jax/periods.py; periods.json).
Rerunning the command skips finished cells and redoes unfinished ones from scratch.
"""

from __future__ import annotations

import copy
import csv
import json
import pathlib
import shutil
import time

import numpy as np
from scipy import stats

from mola_jax import cli, config_lib, data, periods, plan, sharding
from mola_jax import workdir as workdir_lib
from mola_jax.train import train_and_evaluate

TABLE_COLUMNS = (
  "dataset",
  "backbone",
  "method",
  "horizon",
  "segment_len",
  "seeds",
  "test_mse_mean",
  "test_mse_ci95",
  "test_mae_mean",
  "test_mae_ci95",
  "winner",
)


def run_once(cfg, workdir: pathlib.Path) -> dict:
  """Results of the run in `workdir`, training it first unless it already finished."""
  done = workdir / "results.json"
  if sharding.agree(done.is_file()):  # every process takes process 0's view of the shared directory
    return json.loads(done.read_text())
  if workdir.exists() and sharding.is_lead():  # killed part-way: start the cell over, not mix two partial runs
    shutil.rmtree(workdir)
  sharding.sync(f"fresh {workdir}")
  return train_and_evaluate(cfg, workdir)


# What a stage-1 or mtf run depends on; another study's run that agrees on all of it is the same run.
_PRETRAIN_IDENTITY = ("data.", "pretrain.", "backbone", "seed", "horizon", "segment_len", "method", "stage")


def pretrain_identity(cfg_json: dict) -> dict:
  flat = workdir_lib.flat_config(cfg_json)
  own_model = f"model.{cfg_json['backbone']}."  # the other backbones' sizes do not matter
  return {k: v for k, v in flat.items() if k.startswith(_PRETRAIN_IDENTITY + (own_model,))}


def run_identity(cfg_json: dict) -> dict:
  """All a run depends on: every key but those that change speed only (workdir.SPEED_ONLY, the study's own among
  them) and the S options, which a run with its segment_len set never reads."""
  skip = workdir_lib.SPEED_ONLY + ("segment_options.",)
  return {k: v for k, v in workdir_lib.flat_config(cfg_json).items() if not k.startswith(skip)}


def locate(cfg, cell, workdir: pathlib.Path, rel: str, identity=pretrain_identity) -> pathlib.Path:
  """Where the run `rel` lives: in `reproduce.reuse_from` if that study finished the very same run (`identity`:
  for stage 1 and mtf the same data, model, pretrain recipe, seed, S or T; `run_identity` for stage 2), else in
  this study's own workdir. Studies made before the stages had one name keep their stage-1 runs under stage1/
  instead of pretrain/; those are found too."""
  names = [rel, rel.replace("pretrain/", "stage1/", 1)]
  if cfg.reproduce.reuse_from:
    for name in names:
      other = pathlib.Path(cfg.reproduce.reuse_from) / name
      mine = identity(json.loads(cell.to_json_best_effort()))
      if (other / "results.json").is_file() and identity(json.loads((other / "config.json").read_text())) == mine:
        return other
  return next((workdir / name for name in names if (workdir / name / "results.json").is_file()), workdir / rel)


def cell_cfg(cfg, **changes):
  out = copy.deepcopy(cfg)
  with out.unlocked():
    for key, value in changes.items():
      out[key] = value
  return out


def ci95(values) -> float:
  """Half-width of the two-sided 95% Student-t interval of the mean; 0 for a single seed."""
  v = np.asarray(values, np.float64)
  if v.size < 2:
    return 0.0
  return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def segment_options(cfg, method: str, horizon: int, found: list[int] | None = None) -> tuple[int, ...]:
  """The S options of a cell: T for mtf; cfg.segment_len if set; else the config's options for T, and with
  detected periods `found` (segment_options="auto") whole multiples of them (periods.candidates)."""
  if method == "mtf":
    return (horizon,)
  if cfg.segment_len is not None:
    return (cfg.segment_len,)
  options = tuple(cfg.segment_options.get(str(horizon), ()))
  if not options:
    raise config_lib.ConfigError(f"no segment_options for horizon {horizon}; add them to the config")
  if found is None:
    return options
  return periods.candidates(horizon, found, paper=options, max_segments=cfg.reproduce.max_segments)


def detect_periods(cfg, horizons: list[int], workdir: pathlib.Path) -> list[int] | None:
  """segment_options="auto": the dominant periods of the training split (written to periods.json); else None."""
  mode = cfg.reproduce.get("segment_options", "config")
  if mode not in ("config", "auto"):
    raise config_lib.ConfigError(f"unknown reproduce.segment_options {mode!r}; use config or auto")
  if mode == "config":
    return None
  series = data.load_series(cfg.data)
  train = series.values[slice(*series.borders["train"])]  # the training split only: nothing of val or test
  found = periods.dominant_periods(train, max_period=max(horizons) // 2)
  if sharding.is_lead():
    workdir_lib.write_json(workdir / "periods.json", {"periods": found, "rows": len(train)})
  print(f"[reproduce] periods of the training split: {found or 'none'}", flush=True)
  return found


def run(cfg, workdir) -> list[dict]:
  """Run every missing cell and write the table, the selection and the plots. Returns the table rows."""
  rep = cfg.reproduce
  workdir = pathlib.Path(workdir)
  seeds = [cfg.seed + i for i in range(rep.num_seeds)]
  horizons, methods = [int(h) for h in rep.horizons], list(rep.methods)
  for method in methods:  # fail on a bad request before hours of work, not after
    plan.make(cell_cfg(cfg, method=method, horizon=horizons[0]))
  cells = [(seed, h, m) for seed in seeds for h in horizons for m in methods]
  lead = sharding.is_lead()  # on several processes (jax.distributed) every cell trains on all, process 0 writes
  if lead:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
  found = detect_periods(cfg, horizons, workdir)

  results: dict[tuple, dict] = {}  # (method, horizon, S, seed) -> results.json
  cell_dirs: dict[tuple, pathlib.Path] = {}
  chosen: dict[tuple, int] = {}  # (method, horizon) -> S
  selection_rows = []
  t0 = time.perf_counter()
  for i, (seed, horizon, method) in enumerate(cells, 1):
    options = segment_options(cfg, method, horizon, found)
    if seed != seeds[0] and (method, horizon) in chosen:
      options = (chosen[(method, horizon)],)
    for s in options:
      print(
        f"[reproduce {i}/{len(cells)}] {method} T={horizon} S={s} seed={seed} "
        f"({time.perf_counter() - t0:.0f}s elapsed)",
        flush=True,
      )
      rel = f"cells/{method}-T{horizon}-S{s}-seed{seed}"
      if method == "mtf":
        cell = cell_cfg(cfg, method="mtf", horizon=horizon, segment_len=None, seed=seed, stage="all")
        cell_dir = locate(cfg, cell, workdir, rel)
      else:
        pre = cell_cfg(cfg, method="mola", horizon=s, segment_len=s, seed=seed, stage="pretrain")
        stage1 = locate(cfg, pre, workdir, f"pretrain/S{s}-seed{seed}")
        run_once(pre, stage1)
        cell = cell_cfg(
          cfg, method=method, horizon=horizon, segment_len=s, seed=seed, stage="adapt", init_from=str(stage1)
        )
        cell_dir = locate(cfg, cell, workdir, rel, identity=run_identity)
      results[(method, horizon, s, seed)] = run_once(cell, cell_dir)
      cell_dirs[(method, horizon, s, seed)] = cell_dir
    if seed == seeds[0]:
      vals = {s: results[(method, horizon, s, seed)]["val_mse"] for s in options}
      chosen[(method, horizon)] = min(vals, key=vals.get)
      for s in options:
        selection_rows.append(
          {
            "method": method,
            "horizon": horizon,
            "segment_len": s,
            "seed": seed,
            "val_mse": vals[s],
            "test_mse": results[(method, horizon, s, seed)]["test_mse"],
            "chosen": s == chosen[(method, horizon)],
          }
        )

  rows = table_rows(cfg, results, chosen, seeds, horizons, methods)
  if lead:
    write_csv(workdir / "selection.csv", selection_rows)
    write_csv(workdir / "table.csv", rows)
    workdir_lib.write_text(workdir / "table.md", table_markdown(rows))
  # Every process: the plots load runs, and a restore on several processes is a collective. Process 0 saves.
  plot(workdir, results, cell_dirs, chosen, seeds, horizons, methods, save=lead)
  print(table_markdown(rows))
  return rows


def table_rows(cfg, results, chosen, seeds, horizons, methods) -> list[dict]:
  rows = []
  for horizon in horizons:
    block = []
    for method in methods:
      s = chosen[(method, horizon)]
      runs = [results[(method, horizon, s, seed)] for seed in seeds]
      mse, mae = [r["test_mse"] for r in runs], [r["test_mae"] for r in runs]
      block.append(
        {
          "dataset": runs[0]["dataset"],
          "backbone": cfg.backbone,
          "method": method,
          "horizon": horizon,
          "segment_len": s,
          "seeds": len(seeds),
          "test_mse_mean": float(np.mean(mse)),
          "test_mse_ci95": ci95(mse),
          "test_mae_mean": float(np.mean(mae)),
          "test_mae_ci95": ci95(mae),
          "winner": False,
        }
      )
    min(block, key=lambda r: r["test_mse_mean"])["winner"] = True
    rows += block
  return rows


def table_markdown(rows: list[dict]) -> str:
  lines = [
    "| dataset | backbone | method | T | S | seeds | test MSE (±95% CI) | test MAE (±95% CI) |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    mse = f"{r['test_mse_mean']:.4f} ± {r['test_mse_ci95']:.4f}"
    mae = f"{r['test_mae_mean']:.4f} ± {r['test_mae_ci95']:.4f}"
    if r["winner"]:
      mse = f"**{mse}**"
    lines.append(
      f"| {r['dataset']} | {r['backbone']} | {r['method']} | {r['horizon']} | {r['segment_len']} | "
      f"{r['seeds']} | {mse} | {mae} |"
    )
  return "\n".join(lines) + "\n\nBold: the lowest mean test MSE at that horizon.\n"


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  with workdir_lib.atomic(path) as tmp, tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def plot(workdir: pathlib.Path, results, cell_dirs, chosen, seeds, horizons, methods, save: bool = True) -> None:
  """Per-step test MSE (mean over seeds) of every method, and a few test windows of the target channel; written
  if `save`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from mola_jax.inference import load_run

  for horizon in horizons:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for method in methods:
      s = chosen[(method, horizon)]
      curve = np.mean([results[(method, horizon, s, seed)]["per_step_test_mse"] for seed in seeds], axis=0)
      ax.plot(np.arange(1, horizon + 1), curve, label=f"{method} (S={s})" if method != "mtf" else method)
    ax.set(xlabel="forecast step", ylabel="test MSE", title=f"Test MSE per forecast step, T={horizon}")
    ax.legend()
    fig.tight_layout()
    if save:
      workdir_lib.save_figure(fig, workdir / f"per_step_T{horizon}.png", dpi=120)
    plt.close(fig)

    runs = {m: load_run(cell_dirs[(m, horizon, chosen[(m, horizon)], seeds[0])]) for m in methods}
    first = next(iter(runs.values()))
    series = data.load_series(first.cfg.data)
    src = data.window_source(series, "test", first.cfg.data.seq_len, horizon)
    picks = np.linspace(0, len(src) - 1, 3).astype(int)
    batch = {k: np.stack([src[int(i)][k] for i in picks]) for k in src[0]}
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.6 * len(picks)), squeeze=False)
    ch = -1  # the target channel (OT), last by construction
    for row, ax in zip(range(len(picks)), axes[:, 0], strict=True):
      seq_len = batch["x"].shape[1]
      ax.plot(np.arange(seq_len), batch["x"][row, :, ch], color="gray", lw=1, label="history")
      ax.plot(np.arange(seq_len, seq_len + horizon), batch["y"][row, :, ch], color="black", lw=1.2, label="truth")
      for method, run_ in runs.items():
        ax.plot(np.arange(seq_len, seq_len + horizon), run_.forecast(batch)[row, :, ch], lw=1, label=method)
      ax.set_title(f"test window {picks[row]}, channel {series.columns[ch]} (standardised)", fontsize=9)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(runs) + 2, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    if save:
      workdir_lib.save_figure(fig, workdir / f"windows_T{horizon}.png", dpi=110)
    plt.close(fig)


def command() -> None:
  """`mola-reproduce` / `python -m mola_jax.reproduce`."""
  cli.config_command(run, "Directory of the whole study")


if __name__ == "__main__":
  command()
