"""Train and evaluate: stage 1 (pre-train an S-step forecaster), stage 2 (adapters over K = T/S segments on the
frozen backbone), or mtf (one direct T-step forecaster). One program; the config picks the path.

    python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1 [--config.horizon=192 ...]

The path of a run, and where each part lives:
  config (config_lib) -> plan (plan: the stages) -> data (data: splits, train-only scaler, windows on the device)
  -> model (models) -> train/eval steps (steps) -> per stage: fit (fit: epochs, early stopping, selection,
  checkpoints) -> one test pass -> metrics (metrics) -> results.json.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from mola_jax import checkpointing, cli, data, intervals, metrics, plan, runtime, sharding, steps, workdir
from mola_jax.errors import CheckpointError
from mola_jax.fit import fit
from mola_jax.models import build


def evaluate_split(model: nnx.Module, *, series, cfg, stage: plan.Stage, split: str = "test") -> dict:
  """One pass over every window of `split`, in order: the test split once, after training (never used for
  selection)."""
  graphdef, states = steps.eval_states(model, stage.name)
  windows = data.DeviceWindows(data.window_source(series, split, cfg.data.seq_len, stage.window))
  step = steps.make_eval_step(graphdef, segments=stage.segments, compute_dtype=cfg.get("compute_dtype"))
  return metrics.evaluate(step, states, windows, cfg.data.eval_batch_size, stage.segments)


def stage_model(cfg, stage: plan.Stage, *, channels: int, marks: int) -> nnx.Module:
  """A fresh model for `stage` (born sharded under a mesh): the backbone with its S-step head, and in stage 2 the
  adapter banks; the parameters it creates are drawn from the stage's seed."""
  segments = stage.segments if stage.name == plan.ADAPT else 0  # 0: no adapters
  return sharding.create(
    lambda: build(
      cfg, channels=channels, marks=marks, pred_len=stage.pred_len, segments=segments, rngs=nnx.Rngs(stage.seed)
    )
  )


def train_and_evaluate(cfg, workdir_path, *, overwrite: bool = False) -> dict:
  """Run what `cfg` asks for in `workdir_path` and return the results dict (also written to results.json).
  Rerunning it on the same workdir resumes where the last attempt stopped. With `cfg.mesh.shape` set, the whole
  run happens on that device mesh: state born sharded, steps jitted with explicit shardings (sharding.py)."""
  run_plan = plan.make(cfg)  # every check that needs no data
  runtime.use_compile_cache(cfg.get("compile_cache", True))
  mesh = sharding.make_mesh(cfg.mesh)  # None: no mesh configured, and `use` does nothing
  with sharding.use(mesh, cfg.mesh.rules), runtime.matmul_precision(cfg.get("matmul_precision")):
    return _run(cfg, run_plan, pathlib.Path(workdir_path), overwrite)


def _run(cfg, run_plan: plan.Plan, path: pathlib.Path, overwrite: bool) -> dict:
  workdir.check_path(path)
  series = data.load_series(cfg.data)  # bad data fails here, before anything is written
  for split in ("train", "val", "test"):  # every split must hold at least one T-step window
    data.window_source(series, split, cfg.data.seq_len, run_plan.horizon)
  init_dir = checkpointing.stage_dir(cfg.init_from or path, plan.PRETRAIN)
  if run_plan.stages[0].name == plan.ADAPT and not init_dir.is_dir():
    raise CheckpointError(
      f"no stage-1 checkpoint at {init_dir}; run --config.stage=pretrain (or all) first, or set "
      "--config.init_from to the workdir of a finished stage-1 run"
    )
  lead = sharding.is_lead()  # only process 0 writes logs and results; every process writes its checkpoint shards
  with workdir.locked(path) if lead else contextlib.nullcontext():
    if lead:
      workdir.claim(cfg, path, overwrite)
      workdir.write_scaler(path, series)
    sharding.sync("workdir claimed")
    tb_dir = path / "tb" if lead and cfg.get("tensorboard", True) else None
    log = metrics.MetricsLog(path / "metrics.jsonl" if lead else pathlib.Path(os.devnull), tb_dir)
    model, timings = _train_stages(cfg, run_plan, series, path, init_dir, log)
    test = evaluate_split(model, series=series, cfg=cfg, stage=run_plan.final)
    results = _results(cfg, run_plan, series, test, timings)
    if cfg.get("intervals"):
      calibration = intervals.calibrate(model, run_plan.final, series=series, cfg=cfg)
      results["interval_coverage"] = intervals.coverage(model, run_plan.final, calibration, series=series, cfg=cfg)
      if lead:
        workdir.write_json(path / "conformal.json", calibration)
    if lead:
      workdir.write_json(path / "results.json", results)
    log.write(stage="test", test_mse=test["mse"], test_mae=test["mae"], windows=test["windows"])
    log.figure("test/per_step_mse", per_step_figure(test["per_step_mse"], cfg.method))
    log.close()
  tqdm.write(
    f"test mse {test['mse']:.4f} mae {test['mae']:.4f} on {test['windows']} windows "
    f"({cfg.method}, T={run_plan.final.window}); results in {path / 'results.json'}"
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


def _train_stages(cfg, run_plan: plan.Plan, series, path: pathlib.Path, init_dir, log) -> tuple[nnx.Module, dict]:
  """Every stage of the plan in turn -> (the last stage's model, holding its selected state; per-stage summary)."""
  ident = checkpointing.backbone_identity(cfg, series, run_plan.segment_len)
  timings, model = {}, None
  for stage in run_plan.stages:
    model = stage_model(cfg, stage, channels=series.values.shape[1], marks=series.marks.shape[1])
    if stage.name == plan.ADAPT:
      checkpointing.load_backbone(model, init_dir, ident)  # restored straight into the model's shardings
    meta = dict(ident, stage=stage.name, method=cfg.method, horizon=stage.window)
    timings[stage.name] = fit(model, stage, series=series, cfg=cfg, workdir=path, meta=meta, log=log)
  return model, timings


def _results(cfg, run_plan: plan.Plan, series, test: dict, timings: dict) -> dict:
  final = run_plan.final
  return {
    "dataset": series.name, "backbone": cfg.backbone, "method": cfg.method, "stage": cfg.stage,
    "horizon": final.window, "segment_len": run_plan.segment_len, "segments": final.segments, "seed": cfg.seed,
    "test_mse": test["mse"], "test_mae": test["mae"], "val_mse": timings[final.name]["val_mse"],
    "num_test_windows": test["windows"],
    "train_seconds": sum(t["seconds"] for t in timings.values()),  # excludes time lost to restarts
    "per_step_test_mse": test["per_step_mse"], "per_segment_test_mse": test["per_segment_mse"],
    "stages": timings, "matmul_precision": cfg.get("matmul_precision", "float32"), **runtime.environment(),
  }  # fmt: skip


def main(argv) -> None:
  cfg = flags.FLAGS.config
  cli.start(argv, cfg.distributed)  # multi-host: jax.distributed first; only process 0 reports
  with cli.user_errors():
    train_and_evaluate(cfg, flags.FLAGS.workdir or workdir.default(cfg), overwrite=flags.FLAGS.overwrite)


def command() -> None:
  """`mola-train` / `python -m mola_jax.train`. The flags are defined here, not at import, so that importing this
  module (tests, reproduce, the Python API) defines none."""
  config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP, lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: runs/<dataset>-<backbone>-<method>-...)")
  flags.DEFINE_bool("overwrite", False, "Replace a run of a different config in --workdir instead of refusing")
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  command()
