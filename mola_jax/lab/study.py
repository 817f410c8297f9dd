"""What the study drivers share: their command line (`--config`, `--workdir`, `--study.*`), a finished run's
reuse (in the study, or in another study that made the very same run), an unfinished run's resume, the identities
that decide "the same run", and their CSV files. How a study's cells run (here, or as Ray tasks): engine.py.

Every study writes its run config (config.json) and its own settings (study.json) into its directory.
"""

from __future__ import annotations

import csv
import json
import pathlib
import shutil

import ml_collections

from mola_jax import cli, distributed
from mola_jax import workdir as workdir_lib
from mola_jax.lab.side_by_side import train_runs


def command(run, defaults: ml_collections.ConfigDict, workdir_help: str, *, multi_process: bool = True) -> None:
  """The entry point of a study: run(cfg, study, workdir), the study's settings overridable as --study.KEY=VALUE
  (the grammar of --config)."""
  from absl import app, flags
  from ml_collections import config_flags

  def main(argv) -> None:
    cli.start(argv, flags.FLAGS.config.distributed, multi_process=multi_process)
    with cli.user_errors():
      run(flags.FLAGS.config, flags.FLAGS.study, flags.FLAGS.workdir)

  config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP, lock_config=True)
  config_flags.DEFINE_config_dict("study", defaults, "The study's own settings (--study.KEY=VALUE)", lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help, required=True)
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=cli.parse_flags)


def save_settings(workdir: pathlib.Path, cfg, study) -> None:
  """The study's run config and its own settings (process 0 only)."""
  if distributed.is_lead():
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_text(workdir / "config.json", cfg.to_json_best_effort(indent=2))
    workdir_lib.write_text(workdir / "study.json", study.to_json_best_effort(indent=2))


def run_once(cfg, workdir: pathlib.Path) -> dict:
  """Results of the run in `workdir`, training it first unless it already finished."""
  return run_group([cfg], [workdir])[0]


def run_group(cfgs: list, workdirs: list, *after) -> list[dict]:
  """Results of the runs in `workdirs` (configs that differ only in seed and init_from), training those that have
  not finished side by side in one program (side_by_side.train_runs: one vmapped program for all). An
  unfinished run goes on from its resume checkpoint (resume_or_start_over). `after`: the results of the cells this
  one waits for (a study engine's dependencies; their runs are on disk)."""
  results, todo = {}, []
  for i, workdir in enumerate(workdirs):
    done = workdir / "results.json"
    if distributed.agree(done.is_file()):  # every process takes process 0's view of the shared directory
      results[i] = json.loads(done.read_text())
      continue
    todo.append(i)
  if todo:
    if distributed.is_lead():
      resume_or_start_over([cfgs[i] for i in todo], [workdirs[i] for i in todo])
    distributed.sync(f"ready {workdirs[todo[0]]}")
    trained = train_runs([cfgs[i] for i in todo], [workdirs[i] for i in todo])
    results.update(zip(todo, trained, strict=True))
  return [results[i] for i in range(len(workdirs))]


GROUP = "study_group.json"  # in a study's run: the names of the runs it trains side by side with (itself alone)


def resume_or_start_over(cfgs: list, workdirs: list) -> None:
  """Unfinished runs about to train together go on where they stopped if every one of them holds a run of its
  config (speed-only keys aside) trained in a group that held all of them: runs side by side save their resume
  checkpoints together, so such a group has a step to resume from. Otherwise all of them start over (a run of
  another config cannot be continued, nor runs that were trained apart). Each notes its group (GROUP) first."""
  names = [w.name for w in workdirs]
  started = [w for w in workdirs if w.exists()]
  if started and not all(_resumable(c, w, names) for c, w in zip(cfgs, workdirs, strict=True)):
    for workdir in started:
      if workdir.is_dir():  # a file there is refused by the run with one line
        print(f"[study] {workdir}: unfinished, of another config or grouping; starting it over", flush=True)
        with workdir_lib.locked(workdir):  # not while a run still holds it (one line: in use by another run)
          shutil.rmtree(workdir)
  for workdir in workdirs:
    if not workdir.exists() or workdir.is_dir():
      workdir.mkdir(parents=True, exist_ok=True)
      workdir_lib.write_json(workdir / GROUP, {"runs": names})


def _resumable(cfg, workdir: pathlib.Path, names: list[str]) -> bool:
  try:
    old = json.loads((workdir / "config.json").read_text())
    group = json.loads((workdir / GROUP).read_text())["runs"]
  except (OSError, ValueError, KeyError, TypeError):
    return False
  return set(names) <= set(group) and not workdir_lib.config_diff(old, json.loads(cfg.to_json_best_effort()))


# What a stage-1 or mtf run depends on; another study's run that agrees on all of it is the same run.
_PRETRAIN_IDENTITY = ("data.", "pretrain.", "backbone", "seed", "horizon", "segment_len", "method", "stage")


def pretrain_identity(cfg_json: dict) -> dict:
  flat = workdir_lib.flat_config(cfg_json)
  own_model = f"model.{cfg_json['backbone']}."  # the other backbones' sizes do not matter
  return {k: v for k, v in flat.items() if k.startswith(_PRETRAIN_IDENTITY + (own_model,))}


def run_identity(cfg_json: dict) -> dict:
  """All a run depends on: every key but those that change speed only (workdir.SPEED_ONLY), the S options (a run
  with its segment_len set never reads them) and the other backbones' and methods' settings."""
  own = (f"model.{cfg_json['backbone']}.", f"technique.{cfg_json['method']}.")
  skip = workdir_lib.SPEED_ONLY + ("segment_options.",)
  return {
    k: v
    for k, v in workdir_lib.flat_config(cfg_json).items()
    if not k.startswith(skip) and (not k.startswith(("model.", "technique.")) or k.startswith(own))
  }


def locate(reuse_from, cell, workdir: pathlib.Path, rel: str, identity=pretrain_identity) -> pathlib.Path:
  """Where the run `rel` lives: in the study `reuse_from` if that study finished the very same run (`identity`:
  for stage 1 and mtf the same data, model, pretrain recipe, seed, S or T; `run_identity` for stage 2), else in
  this study's own workdir. Studies made before the stages had one name keep their stage-1 runs under stage1/
  instead of pretrain/; those are found too."""
  names = [rel, rel.replace("pretrain/", "stage1/", 1)]
  if reuse_from:
    mine = identity(json.loads(cell.to_json_best_effort()))
    for name in names:
      other = pathlib.Path(reuse_from) / name
      if (other / "results.json").is_file() and identity(json.loads((other / "config.json").read_text())) == mine:
        return other
  return next((workdir / name for name in names if (workdir / name / "results.json").is_file()), workdir / rel)


def cell_cfg(cfg, **changes) -> ml_collections.ConfigDict:
  """A copy of `cfg` with top-level keys changed."""
  from mola_jax import config_lib

  return config_lib.with_values(cfg, changes)


def write_csv(path: pathlib.Path, rows: list[dict], columns=()) -> None:
  with workdir_lib.atomic(path) as tmp, tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(columns))
    writer.writeheader()
    writer.writerows(rows)
