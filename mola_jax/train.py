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
import math
import os
import pathlib

from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from mola_jax import checkpointing, cli, data, distributed, evaluation, metrics, plan, runtime, sharding, workdir
from mola_jax.errors import CheckpointError, ConfigError
from mola_jax.fit import RunSetup, fit
from mola_jax.models import BACKBONES, build


def train_and_evaluate(cfg, workdir_path, *, data=None, overwrite: bool = False) -> dict:
  """Run what `cfg` asks for in `workdir_path` and return the results dict (also written to results.json).
  Rerunning it on the same workdir resumes where the last attempt stopped. `data`: a pandas DataFrame to train on
  (wide: date + series; or long: unique_id, ds, y), in place of cfg.data's file. With `cfg.mesh.shape` set, the
  whole run happens on that device mesh: state born sharded, programs constrained to its layout (sharding.py)."""
  run_plan, path = plan.make(cfg), pathlib.Path(workdir_path)  # every check that needs no data, first
  runtime.use_compile_cache(cfg.compile_cache)
  with sharding.use(sharding.make_mesh(cfg.mesh), cfg.mesh.rules), runtime.matmul_precision(cfg.matmul_precision):
    series = load_data(cfg, run_plan, path, data)  # bad data fails here, before anything is written
    with opened(cfg, path, overwrite, series) as log:
      state, timings = None, {}
      for stage in run_plan.stages:
        model = stage_model(run_plan, stage, series, init_dir(cfg, path))
        state, timings[stage.name] = fit(model, stage, series=series, run=run_setup(run_plan, stage, series, path, log))
      return test(state, run_plan, path, timings, log, series)


def load_data(cfg, run_plan: plan.Plan, path: pathlib.Path, frame=None):
  """The run's series, checked: every split must hold at least one T-step window, a panel needs a channel-independent
  backbone, and stage 2 needs its stage 1."""
  workdir.check_path(path)
  series = data.load_series(cfg.data, frame, horizon=run_plan.horizon)
  check_panel(cfg, series)
  for split in ("train", "val", "test"):
    data.window_source(series, split, cfg.data.seq_len, run_plan.horizon)
  if run_plan.stages[0].name == plan.ADAPT and not init_dir(cfg, path).is_dir():
    raise CheckpointError(
      f"no stage-1 checkpoint at {init_dir(cfg, path)}; run --config.stage=pretrain (or all) first, or set "
      "--config.init_from to the workdir of a finished stage-1 run"
    )
  return series


def check_panel(cfg, series) -> None:
  """A panel trains the channel-independent backbones only; data.placement=host is for panels."""
  if not isinstance(series, data.Panel):
    if cfg.data.placement == "host":
      raise ConfigError("data.placement=host gathers a panel's windows on the host; this table is one multivariate "
                        "series, which lives on the device: leave data.placement at auto or device")  # fmt: skip
    return
  if cfg.backbone not in data.PANEL_BACKBONES:
    raise ConfigError(f"{series.name} is a panel of {len(series.ids)} series, each its own window: backbone "
                      f"{cfg.backbone} mixes channels; use one of {', '.join(data.PANEL_BACKBONES)}")  # fmt: skip
  skipped = f", {len(series.skipped)} short series skipped" if series.skipped else ""
  tqdm.write(f"{series.name}: a panel of {len(series.ids)} series, {len(series.values)} rows{skipped}")


def init_dir(cfg, path: pathlib.Path) -> pathlib.Path:
  """The stage-1 checkpoint that stage 2 adapts: this run's own, or init_from's."""
  return checkpointing.stage_dir(cfg.init_from or path, plan.PRETRAIN)


@contextlib.contextmanager
def opened(cfg, path: pathlib.Path, overwrite: bool, series):
  """The run's workdir held (locked) and claimed for this config and data, its scaler written -> its log. Only
  process 0 writes logs and results; every process writes its checkpoint shards."""
  lead = distributed.is_lead()
  with workdir.locked(path) if lead else contextlib.nullcontext():
    if lead:
      workdir.claim(cfg, path, overwrite, data.fingerprint(series))
      workdir.write_json(path / "scaler.json", series.record())
    distributed.sync("workdirs claimed")
    tb_dir = path / "tb" if lead and cfg.tensorboard else None
    log = metrics.MetricsLog(path / "metrics.jsonl" if lead else pathlib.Path(os.devnull), tb_dir)
    try:
      yield log
    finally:
      log.close()


def stage_model(run_plan: plan.Plan, stage: plan.Stage, series, init: pathlib.Path):
  """A fresh model for `stage` (born sharded under a mesh): the backbone with its S-step head, and in stage 2 the
  method's banks, over the stage-1 backbone restored from `init`; the parameters it creates are drawn from the
  stage's seed. A backbone's data constants (OLinear's bases) come from the training rows in stage 1 and with the
  backbone in stage 2."""
  adapt = stage.name == plan.ADAPT
  rows = None if adapt or not getattr(BACKBONES[run_plan.model.backbone], "FROM_DATA", False) else train_rows(series)
  # Fresh Rngs inside the builder: sharding.create traces it once for the shapes and once for the values.
  make = lambda: build(run_plan.model, channels=series.values.shape[1], marks=series.marks.shape[1],
                       pred_len=stage.pred_len, segments=stage.segments if adapt else 0, rngs=nnx.Rngs(stage.seed),
                       covariates=len(series.covariates), train_values=rows)  # fmt: skip
  model = sharding.create(make)
  if adapt:  # restored straight into the model's shardings
    checkpointing.load_backbone(model, init, backbone_identity(run_plan, series))
  return model


def train_rows(series) -> object:
  """The training rows [rows, D] a backbone's data constants come from: a panel's every series' training part (a
  copy, so taken only for such a backbone)."""
  return series.train_rows() if isinstance(series, data.Panel) else series.values[slice(*series.borders["train"])]


def backbone_identity(run_plan: plan.Plan, series) -> dict:
  return checkpointing.backbone_identity(run_plan.model, series, run_plan.segment_len)


def run_setup(run_plan: plan.Plan, stage: plan.Stage, series, path: pathlib.Path, log) -> RunSetup:
  meta = dict(backbone_identity(run_plan, series), stage=stage.name, method=run_plan.method, horizon=stage.window)
  return RunSetup(path, meta, log, run_plan.loop, run_plan.evaluation)


def test(state, run_plan: plan.Plan, path: pathlib.Path, timings: dict, log, series) -> dict:
  """The prediction intervals (calibrated on validation), then one pass over every test window for the scores and
  the bands' coverage; results.json and the test record."""
  final, ev = run_plan.final, run_plan.evaluation
  calibration = evaluation.calibrate(state, final, series=series, evaluation=ev) if ev.intervals else None
  scores = evaluation.score_split(state, final, series=series, evaluation=ev, calibration=calibration)
  results = _results(run_plan, series, scores, timings)
  if distributed.is_lead():
    if calibration is not None:
      workdir.write_json(path / "conformal.json", calibration)
    workdir.write_json(path / "results.json", results)
  log.write(stage="test", test_mse=scores["mse"], test_mae=scores["mae"], windows=scores["windows"])
  log.figure("test/per_step_mse", per_step_figure(scores["per_step_mse"], run_plan.method))
  pooled = scores.get("per_series", {}).get("pooled")
  also = f" mase {pooled['mase'] or math.nan:.3f} smape {pooled['smape']:.2f}" if pooled else ""
  tqdm.write(
    f"test mse {scores['mse']:.4f} mae {scores['mae']:.4f}{also} on {scores['windows']} windows "
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
  } | ({"interval_coverage": test["interval_coverage"]} if "interval_coverage" in test else {}) | panel_results(
    series, test)  # fmt: skip


def panel_results(series, test: dict) -> dict:
  """A panel's part of results.json: its series, those skipped as too short, and the per-series and pooled scores
  (evaluation.series_scores)."""
  if not isinstance(series, data.Panel):
    return {}
  per = test["per_series"]
  return {"series": len(series.ids), "skipped_series": len(series.skipped), "skipped": list(series.skipped),
          "test_mase": per["pooled"]["mase"], "test_smape": per["pooled"]["smape"], "per_series": per}  # fmt: skip


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
