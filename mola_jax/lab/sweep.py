"""Sensitivity sweeps (the paper's Figure 5): config keys x values x seeds, each point an ordinary training run;
a CSV with Student-t 95% intervals and one plot per swept key.

    python -m mola_jax.lab.sweep --config etth1 --workdir runs/sweep_etth1 --study.grid="technique.mola.rank=2,4,8,16;\\
adapt.lr=1e-4,3e-4,1e-3,3e-3,1e-2;technique.mola.num_experts=1,2,3,6,12"

`--study.grid` is KEY=V1,V2,... items separated by ';' (any config key; values are Python literals).
`--study.mode`: one_at_a_time (default: each key varies alone, the others at the config's values, as the paper's
sensitivity study) or grid (every combination). Seeds: cfg.seed, cfg.seed + 1, ... (`--study.num_seeds`); the
horizon and S are the config's. A stage-1 model is trained once per seed and whatever stage-1 settings a point has,
and shared by every point that agrees on them. Layout of DIR:
  pretrain/S{S}-seed{seed}-{id}/     stage-1 runs ({id}: a digest of what stage 1 depends on)
  points/{point}-seed{seed}/         stage-2 (or mtf) runs; results.json marks a finished one
  config.json, study.json, sweep.csv, sweep.md, sweep_{key}.png
Points that come to the same config (a key set to the config's own value) run once. Rerunning skips finished
points and resumes unfinished ones. --study.seeds_in_one_program=True trains a point's seeds side by side in one
program (lab/side_by_side.train_runs). Every stage-1 run and every point (per seed) is a cell of the study's graph
(graph.json): --study.engine=ray runs them as Ray tasks over a cluster (lab/engine.py; reproduce's settings).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import pathlib

import ml_collections
import numpy as np

from mola_jax import config_lib, distributed, plan
from mola_jax import workdir as workdir_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import engine, study
from mola_jax.lab.stats import ci95


def defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.grid = ""  # KEY=V1,V2,... items separated by ';'
  s.mode = "one_at_a_time"  # or "grid": every combination
  s.num_seeds = 3
  s.seeds_in_one_program = False  # the seeds of a point side by side in one program (reproduce's setting)
  return engine.add_settings(s)  # --study.engine, cell_resources, ray_address


def parse_grid(text: str) -> dict[str, tuple]:
  """ "a.b=1,2;c=3e-4,1e-3" -> {"a.b": (1, 2), "c": (3e-4, 1e-3)}."""
  grid = {}
  for item in filter(None, (part.strip() for part in (text or "").split(";"))):
    key, sep, values = item.partition("=")
    if not sep or not values:
      raise ConfigError(f"study.grid item {item!r}: write KEY=V1,V2,... (items separated by ';')")
    try:
      grid[key.strip()] = tuple(ast.literal_eval(v.strip()) for v in values.split(","))
    except (ValueError, SyntaxError):
      raise ConfigError(f"study.grid item {item!r}: values must be Python literals (numbers, strings)") from None
  if not grid:
    raise ConfigError("study.grid is empty; e.g. --study.grid='technique.mola.rank=2,4,8,16;adapt.lr=1e-4,1e-3'")
  return grid


def points(mode: str, grid: dict) -> list[dict]:
  """The points to run: {key: value} each (one key at a time, or every combination)."""
  if mode == "grid":
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
  if mode != "one_at_a_time":
    raise ConfigError(f"unknown study.mode {mode!r}; use one_at_a_time or grid")
  return [{key: value} for key, values in grid.items() for value in values]


def _name(point: dict) -> str:
  text = ",".join(f"{k}={v}" for k, v in point.items())
  return "".join(c if c.isalnum() or c in "=.,-_" else "_" for c in text)


def _stage1_id(cell) -> str:
  """A short digest of what a stage-1 run depends on (reproduce's identity of it)."""
  return hashlib.sha1(
    json.dumps(study.pretrain_identity(json.loads(cell.to_json_best_effort())), sort_keys=True, default=str).encode()
  ).hexdigest()[:8]


def run_point(cfg, point: dict, seeds: list, root: pathlib.Path, *after) -> list[dict]:
  """Train (or reuse) the stage-1 models and the point's runs of `seeds`, side by side -> their results.json.
  `after`: the results of the cells this one waits for (the study engine's dependencies)."""
  cells = [config_lib.with_values(cfg, dict(point, seed=seed)) for seed in seeds]
  outs = [root / "points" / f"{_name(point)}-seed{seed}" for seed in seeds]
  if not plan.make(cells[0]).two_stage:
    return study.run_group(cells, outs)
  pres, stage1 = _stage1(cfg, point, seeds, root)
  study.run_group(pres, stage1)
  s = pres[0].segment_len
  adapts = [
    study.cell_cfg(cell, segment_len=s, stage="adapt", init_from=str(d)) for cell, d in zip(cells, stage1, strict=True)
  ]
  return study.run_group(adapts, outs)


def _stage1(cfg, point: dict, seeds: list, root: pathlib.Path) -> tuple[list, list]:
  """The stage-1 runs a point of a two-stage method adapts: (their configs, their workdirs)."""
  cells = [config_lib.with_values(cfg, dict(point, seed=seed)) for seed in seeds]
  s = plan.make(cells[0]).segment_len
  pres = [study.cell_cfg(cell, horizon=s, segment_len=s, stage="pretrain") for cell in cells]
  dirs = [
    study.locate(None, pre, root, f"pretrain/S{s}-seed{seed}-{_stage1_id(pre)}")
    for pre, seed in zip(pres, seeds, strict=True)
  ]
  return pres, dirs


def stage1_cell(cfg, point: dict, seeds: list, root: pathlib.Path) -> list[dict]:
  """A stage-1 cell: the models the point's runs adapt -> their results."""
  return study.run_group(*_stage1(cfg, point, seeds, root))


def graph(cfg, todo: list, groups: list, root: pathlib.Path) -> tuple[list, dict]:
  """The sweep's cells (a stage-1 cell per distinct stage-1 run and group of seeds, shared by every point that
  adapts it; a cell per distinct point and group) and, per point, the keys of its cells in the order of `groups`."""
  cells, keys, mine, seen = [], set(), {}, {}
  for point in todo:
    same = config_lib.with_values(cfg, point).to_json_best_effort(sort_keys=True)
    if same in seen:  # a point that comes to a config already in the sweep: its runs serve both
      mine[_name(point)] = seen[same]
      continue
    mine[_name(point)] = seen[same] = []
    for group in groups:
      deps, tag = [], "+".join(map(str, group))
      if plan.make(config_lib.with_values(cfg, point)).two_stage:
        dirs = _stage1(cfg, point, group, root)[1]
        deps = [f"pretrain/{'+'.join(d.name for d in dirs)}"]
        if deps[0] not in keys:
          keys.add(deps[0])
          cells.append(engine.Cell(deps[0], stage1_cell, (cfg, point, group, root), (), "pretrain"))
      key = f"points/{_name(point)}-seed{tag}"
      cells.append(engine.Cell(key, run_point, (cfg, point, group, root), tuple(deps), "point"))
      mine[_name(point)].append(key)
  return cells, mine


def run(cfg, settings, workdir) -> list[dict]:
  """Run every missing point, then write sweep.csv, sweep.md and the plots. Returns the table rows."""
  grid, root = parse_grid(settings.grid), pathlib.Path(workdir)
  todo = points(settings.mode, grid)
  seeds = [cfg.seed + i for i in range(settings.num_seeds)]
  for point in todo:  # every point's config must be valid before hours of work, not after
    plan.make(config_lib.with_values(cfg, point))
  engine.check(settings)
  study.save_settings(root, cfg, settings)  # on several processes every point trains on all, process 0 writes
  groups = [seeds] if settings.seeds_in_one_program else [[seed] for seed in seeds]
  cells, mine = graph(cfg, todo, groups, root)
  results = engine.run(cells, settings, root)
  rows = [row(cfg, p, [r for key in mine[_name(p)] for r in results[key]]) for p in todo]
  if distributed.is_lead():
    study.write_csv(root / "sweep.csv", rows)
    workdir_lib.write_text(root / "sweep.md", markdown(rows))
    plot(cfg, settings.mode, rows, grid, root)
  print(markdown(rows))
  return rows


def row(cfg, point: dict, results: list[dict]) -> dict:
  mse, mae = [r["test_mse"] for r in results], [r["test_mae"] for r in results]
  return {
    "key": ";".join(point), "value": ";".join(map(str, point.values())), "method": cfg.method,
    "horizon": cfg.horizon, "segment_len": results[0]["segment_len"], "seeds": len(results),
    "test_mse_mean": float(np.mean(mse)), "test_mse_ci95": ci95(mse), "test_mae_mean": float(np.mean(mae)),
    "test_mae_ci95": ci95(mae), "val_mse_mean": float(np.mean([r["val_mse"] for r in results])),
  }  # fmt: skip


def markdown(rows: list[dict]) -> str:
  lines = ["| key | value | seeds | test MSE (±95% CI) | test MAE (±95% CI) | val MSE |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
      f"| {r['key']} | {r['value']} | {r['seeds']} | {r['test_mse_mean']:.4f} ± {r['test_mse_ci95']:.4f} "
      f"| {r['test_mae_mean']:.4f} ± {r['test_mae_ci95']:.4f} | {r['val_mse_mean']:.4f} |"
    )
  return "\n".join(lines) + "\n"


def plot(cfg, mode: str, rows: list[dict], grid: dict, root: pathlib.Path) -> None:
  """One plot per swept key (one-at-a-time sweeps): test MSE with its 95% interval against the value; the
  config's own value marked."""
  if mode != "one_at_a_time":
    return
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  for key, values in grid.items():
    mine = [r for r in rows if r["key"] == key]
    x = np.arange(len(values))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(x, [r["test_mse_mean"] for r in mine], yerr=[r["test_mse_ci95"] for r in mine], marker="o", capsize=3)
    node = cfg  # the config's own value of the key
    for name in key.split("."):
      node = node[name]
    ax.set_xticks(x, [str(v) for v in values])
    for i, v in enumerate(values):
      if v == node:
        ax.axvline(i, color="gray", ls=":", lw=1, label="config value")
    ax.set(xlabel=key, ylabel="test MSE", title=f"{cfg.data.name} {cfg.method}, T={cfg.horizon}")
    ax.legend(fontsize=8) if any(v == node for v in values) else None
    fig.tight_layout()
    workdir_lib.save_figure(fig, root / f"sweep_{key.replace('.', '_')}.png", dpi=120)
    plt.close(fig)


def command() -> None:
  """`mola-sweep` / `python -m mola_jax.lab.sweep`."""
  study.command(run, defaults(), "Directory of the whole sweep")


if __name__ == "__main__":
  command()
