"""Train and evaluate: stage 1 (pre-train an S-step forecaster), stage 2 (adapters over K = T/S segments on the
frozen backbone), or mtf (one direct T-step forecaster). One program; the config picks the path.

    python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1 [--config.horizon=192 ...]

The path of a run, in the order `train_and_evaluate` reads, and where each part lives:
  config (config_lib) -> plan (plan: the stages and every module's settings) -> data (data: splits, train-only
  scaler, windows on the device) -> per stage: model (models) -> fit (fit: steps, epochs, early stopping,
  selection, checkpoints) -> the test pass and the prediction intervals (evaluation) -> results.json (workdir),
  metrics.jsonl and TensorBoard (metrics).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from mola_jax import checkpointing, cli, data, evaluation, metrics, plan, runtime, sharding, workdir
from mola_jax.errors import CheckpointError, ConfigError
from mola_jax.fit import fit
from mola_jax.models import build


def train_and_evaluate(cfg, workdir_path, *, data=None, overwrite: bool = False) -> dict:
  """Run what `cfg` asks for in `workdir_path` and return the results dict (also written to results.json).
  Rerunning it on the same workdir resumes where the last attempt stopped. `data`: a pandas DataFrame to train on
  (wide: date + series; or long: unique_id, ds, y), in place of cfg.data's file. With `cfg.mesh.shape` set, the
  whole run happens on that device mesh: state born sharded, steps jitted with explicit shardings (sharding.py)."""
  return train_runs([cfg], [workdir_path], data=data, overwrite=overwrite)[0]


def train_runs(cfgs: list, workdir_paths: list, *, data=None, overwrite: bool = False) -> list[dict]:
  """Runs that differ only in their seed (and the stage-1 run they adapt, init_from) trained side by side in one
  program (seeds in one program: their states stacked, each with its own orders, dropout, early stopping and
  selection), each in its own workdir with the files a run of its own writes. -> each run's results. `data`: as
  train_and_evaluate's."""
  run_plans = [plan.make(cfg) for cfg in cfgs]  # every check that needs no data
  _check_side_by_side(cfgs)
  cfg = cfgs[0]
  runtime.use_compile_cache(cfg.compile_cache)
  mesh = sharding.make_mesh(cfg.mesh)  # None: no mesh configured, and `use` does nothing
  with sharding.use(mesh, cfg.mesh.rules), runtime.matmul_precision(cfg.matmul_precision):
    return _run(cfgs, run_plans, [pathlib.Path(p) for p in workdir_paths], overwrite, data)


def _check_side_by_side(cfgs: list) -> None:
  first = json.loads(cfgs[0].to_json_best_effort())
  for cfg in cfgs[1:]:
    diff = [
      k for k in workdir.config_diff(first, json.loads(cfg.to_json_best_effort())) if k not in ("seed", "init_from")
    ]
    if diff:
      raise ConfigError(f"runs trained side by side may differ only in seed and init_from; these differ in {diff[:5]}")


def _run(cfgs: list, run_plans: list, paths: list, overwrite: bool, frame) -> list[dict]:
  for path in paths:
    workdir.check_path(path)
  series = data.load_series(cfgs[0].data, frame)  # bad data fails here, before anything is written
  for split in ("train", "val", "test"):  # every split must hold at least one T-step window
    data.window_source(series, split, cfgs[0].data.seq_len, run_plans[0].horizon)
  init_dirs = [
    checkpointing.stage_dir(cfg.init_from or path, plan.PRETRAIN) for cfg, path in zip(cfgs, paths, strict=True)
  ]
  for init_dir in init_dirs:
    if run_plans[0].stages[0].name == plan.ADAPT and not init_dir.is_dir():
      raise CheckpointError(
        f"no stage-1 checkpoint at {init_dir}; run --config.stage=pretrain (or all) first, or set "
        "--config.init_from to the workdir of a finished stage-1 run"
      )
  lead = sharding.is_lead()  # only process 0 writes logs and results; every process writes its checkpoint shards
  with contextlib.ExitStack() as stack:
    for cfg, path in zip(cfgs, paths, strict=True):
      if lead:
        stack.enter_context(workdir.locked(path))
        workdir.claim(cfg, path, overwrite, data.fingerprint(series))
        workdir.write_scaler(path, series)
    sharding.sync("workdirs claimed")
    logs = [_log(cfg, path, lead) for cfg, path in zip(cfgs, paths, strict=True)]
    models, timings = train_stages(run_plans, series, paths, init_dirs, logs)
    results = [test(*each, series) for each in zip(models, run_plans, paths, timings, logs, strict=True)]
    for log in logs:
      log.close()
  return results


def _log(cfg, path: pathlib.Path, lead: bool) -> metrics.MetricsLog:
  tb_dir = path / "tb" if lead and cfg.tensorboard else None
  return metrics.MetricsLog(path / "metrics.jsonl" if lead else pathlib.Path(os.devnull), tb_dir)


def stage_model(spec, stage: plan.Stage, *, channels: int, marks: int, covariates: int = 0, train_values=None):
  """A fresh model for `stage` (born sharded under a mesh): the backbone with its S-step head, and in stage 2 the
  method's banks; the parameters it creates are drawn from the stage's seed. `train_values`: the training rows a
  backbone's data constants come from, in stage 1 (stage 2 restores them with the backbone)."""
  segments = stage.segments if stage.name == plan.ADAPT else 0  # 0: no adapters
  rows = train_values if stage.name == plan.PRETRAIN else None
  # Fresh Rngs inside the builder: sharding.create traces it once for the shapes and once for the values.
  make = lambda: build(spec, channels=channels, marks=marks, pred_len=stage.pred_len, segments=segments,
                       rngs=nnx.Rngs(stage.seed), covariates=covariates, train_values=rows)  # fmt: skip
  return sharding.create(make)


def train_stages(run_plans: list, series, paths: list, init_dirs: list, logs: list) -> tuple[list, list]:
  """Every stage of the plans in turn, the runs side by side -> (each run's last-stage model, holding its selected
  state; each run's per-stage summary)."""
  first = run_plans[0]
  idents = [checkpointing.backbone_identity(p.model, series, p.segment_len) for p in run_plans]
  timings, models = [{} for _ in run_plans], None
  shape = {"channels": series.values.shape[1], "marks": series.marks.shape[1], "covariates": len(series.covariates),
           "train_values": series.values[slice(*series.borders["train"])]}  # fmt: skip
  for j, stage in enumerate(first.stages):
    models = [stage_model(p.model, p.stages[j], **shape) for p in run_plans]
    if stage.name == plan.ADAPT:
      for model, init_dir, ident in zip(models, init_dirs, idents, strict=True):
        checkpointing.load_backbone(model, init_dir, ident)  # restored straight into the model's shardings
    metas = [dict(ident, stage=stage.name, method=first.method, horizon=stage.window) for ident in idents]
    summaries = fit(
      models, stage, series=series, loops=[p.loop for p in run_plans], evaluations=[p.evaluation for p in run_plans],
      workdirs=paths, metas=metas, logs=logs,
    )  # fmt: skip
    for t, summary in zip(timings, summaries, strict=True):
      t[stage.name] = summary
  return models, timings


def test(model: nnx.Module, run_plan: plan.Plan, path: pathlib.Path, timings: dict, log, series) -> dict:
  """The test pass over every test window, the prediction intervals (calibrated on validation, their coverage on
  test), results.json and the test record."""
  final, ev = run_plan.final, run_plan.evaluation
  scores = evaluation.evaluate_split(model, final, series=series, evaluation=ev)
  results = _results(run_plan, series, scores, timings)
  if ev.intervals:
    calibration = evaluation.calibrate(model, final, series=series, evaluation=ev)
    results["interval_coverage"] = evaluation.coverage(model, final, calibration, series=series, evaluation=ev)
    if sharding.is_lead():
      workdir.write_json(path / "conformal.json", calibration)
  if sharding.is_lead():
    workdir.write_json(path / "results.json", results)
  log.write(stage="test", test_mse=scores["mse"], test_mae=scores["mae"], windows=scores["windows"])
  log.figure("test/per_step_mse", per_step_figure(scores["per_step_mse"], run_plan.method))
  tqdm.write(
    f"test mse {scores['mse']:.4f} mae {scores['mae']:.4f} on {scores['windows']} windows "
    f"({run_plan.method}, T={final.window}); results in {path / 'results.json'}"
  )
  return results


def per_step_figure(per_step_mse: list, label: str):
  """Test MSE against the forecast step (matplotlib figure)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.plot(range(1, len(per_step_mse) + 1), per_step_mse, label=label)
  ax.set(xlabel="forecast step", ylabel="test MSE", title="Test MSE per forecast step")
  ax.legend()
  fig.tight_layout()
  return fig


def _results(run_plan: plan.Plan, series, test: dict, timings: dict) -> dict:
  final, spec = run_plan.final, run_plan.model
  return {
    "dataset": series.name, "backbone": spec.backbone, "method": run_plan.method,
    "stage": run_plan.stage,
    "horizon": final.window, "segment_len": run_plan.segment_len, "segments": final.segments, "seed": run_plan.seed,
    "test_mse": test["mse"], "test_mae": test["mae"], "val_mse": timings[final.name]["val_mse"],
    "num_test_windows": test["windows"],
    "train_seconds": sum(t["seconds"] for t in timings.values()),  # excludes time lost to restarts
    "per_step_test_mse": test["per_step_mse"], "per_segment_test_mse": test["per_segment_mse"],
    "stages": timings, "matmul_precision": run_plan.matmul_precision, **runtime.environment(),
  }  # fmt: skip


def main(argv) -> None:
  cfg = flags.FLAGS.config
  cli.start(argv, cfg.distributed)  # multi-host: jax.distributed first; only process 0 reports
  with cli.user_errors():
    train_and_evaluate(cfg, flags.FLAGS.workdir or workdir.default(cfg), overwrite=flags.FLAGS.overwrite)


def command() -> None:
  """`mola-train` / `python -m mola_jax.train`. The flags are defined here, not at import, so that importing this
  module (tests, the studies, the Python API) defines none."""
  config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP, lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: runs/<dataset>-<backbone>-<method>-...)")
  flags.DEFINE_bool("overwrite", False, "Replace a run of a different config in --workdir instead of refusing")
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  command()
