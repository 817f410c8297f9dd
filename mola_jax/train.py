"""Train and evaluate: stage 1 (pre-train an S-step forecaster), stage 2 (adapters over K = T/S segments on the
frozen backbone), or mtf (one direct T-step forecaster). One program; the config picks the path.

    python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1 [--config.horizon=192 ...]

The path of a run: config -> data (splits, train-only scaler, windows) -> model -> train step -> per-epoch
validation and early stopping -> best-state checkpoint -> one test pass -> results.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from mola_jax import checkpointing, cli, config_lib, data, runtime, sharding, steps
from mola_jax.models import adapters, build


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping that runs on the host, once per epoch.


@dataclasses.dataclass
class SegmentStopper:
  """Per-segment early stopping exactly as method.md §7: ties count as improvement, a segment stops for good
  after `patience` epochs without one, and the caller saves the whole state whenever ANY segment improved.
  With K = 1 this is ordinary early stopping (stage 1, mtf)."""

  best: np.ndarray  # [K] best validation MSE so far
  patience: int
  count: np.ndarray = None  # [K] epochs since the last improvement
  active: np.ndarray = None  # [K] bool

  def __post_init__(self):
    self.best = np.asarray(self.best, np.float64)
    self.count = np.zeros(self.best.shape, np.int64)
    self.active = np.ones(self.best.shape, bool)

  def update(self, val: np.ndarray) -> bool:
    improved = self.active & (val <= self.best)
    self.improved = improved  # [K] which segments improved in this update
    self.best[improved] = val[improved]
    self.count[improved] = 0
    worse = self.active & ~improved
    self.count[worse] += 1
    self.active[worse & (self.count >= self.patience)] = False
    return bool(improved.any())

  def to_dict(self) -> dict:
    return {"best": self.best.tolist(), "patience": self.patience, "count": self.count.tolist(),
            "active": self.active.tolist()}

  @classmethod
  def from_dict(cls, d: dict) -> "SegmentStopper":
    out = cls(d["best"], d["patience"])
    out.count, out.active = np.asarray(d["count"], np.int64), np.asarray(d["active"], bool)
    return out


class MetricsLog:
  """metrics.jsonl, one record per epoch (and per evaluation), appended and flushed as it happens."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def write(self, **record) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def truncate(self, stage: str, epoch: int) -> None:
    """On resume: keep what was logged before `stage` reached `epoch`, drop the rest (it will be redone)."""
    if not self.path.is_file():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      record = json.loads(line)
      if record["stage"] == stage and record.get("epoch", 0) >= epoch or record["stage"] == "test":
        break
      kept.append(line)
    self.path.write_text("".join(line + "\n" for line in kept))


def summarise(acc: dict, segments: int, channels: int) -> dict:
  """Device sums from the eval step -> metrics; one host read. Global element means (protocol.md §7)."""
  acc = jax.device_get(acc)
  n = int(acc["count"])
  per_step = acc["sq"] / (n * channels)  # [T]
  return {
      "mse": float(acc["sq"].sum() / (n * per_step.size * channels)),
      "mae": float(acc["abs"].sum() / (n * per_step.size * channels)),
      "per_step_mse": per_step.tolist(),
      "per_segment_mse": per_step.reshape(segments, -1).mean(axis=1).tolist(),
      "windows": n,
  }


def evaluate(eval_step, states, windows: data.DeviceWindows, batch_size: int, segments: int) -> dict:
  """Every window of a split once, in order (the last batch padded and masked): one host read at the end."""
  acc = steps.empty_acc(windows.pred_len)
  for idx, mask in zip(*data.eval_order(windows, batch_size)):
    acc = eval_step(acc, states, windows.take(idx, mask))
  return summarise(acc, segments, windows.values.shape[-1])


# ---------------------------------------------------------------------------------------------------------------
# One stage: fit the trainable group of `model` with early stopping; leave the best state in `model`.


class Diverged(FloatingPointError):
  """A non-finite training loss; the last good checkpoints are left in place."""


def fit(model: nnx.Module, *, stage: str, series, cfg, recipe, segments: int, horizon: int, seed: int,
        workdir: pathlib.Path, meta: dict, log: MetricsLog, name: str) -> dict:
  """Train `model` on windows of `horizon` steps split into `segments` segments, with per-segment early
  stopping on validation. Resumes from `workdir`'s resume checkpoint if one exists. Afterwards `model` holds
  the selected state: the last one in which any segment improved (method.md §7), reloaded from disk."""
  train_src = data.window_source(series, "train", cfg.data.seq_len, horizon)
  train_windows = data.DeviceWindows(train_src)
  val_windows = data.DeviceWindows(data.window_source(series, "val", cfg.data.seq_len, horizon))
  steps_per_epoch = data.num_train_batches(train_src, recipe.batch_size)
  if steps_per_epoch == 0:
    raise data.DataError(f"{len(train_src)} training windows are fewer than one batch of {recipe.batch_size}; "
                         f"lower --config.{stage}.batch_size or use a longer series")
  tx = steps.make_tx(recipe.lr, steps_per_epoch)
  graphdef, params, stats, frozen = steps.split(model, stage)
  # Pad the active segments to a multiple of the step's groups (steps.training_segments), except where batch
  # statistics would then see the stopped segments too.
  pad_to = 1 if jax.tree.leaves(stats) else steps.default_groups()
  # Raw key data (not a typed key) so that the rng is an ordinary array in the resume checkpoint.
  key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1 if stage == "pretrain" else 2))
  state = {"params": params, "opt": tx.init(params), "stats": stats, "key": key}
  share = cfg.mola.share_prefix_dropout
  dtype = cfg.get("compute_dtype")  # float32 (None in configs from before the key existed) or bfloat16
  train_step = steps.make_train_step(graphdef, tx, segments=segments, share_prefix_dropout=share, compute_dtype=dtype)
  eval_step = steps.make_eval_step(graphdef, segments=segments, compute_dtype=dtype)
  eval_states = lambda st: (*st["params"], st["stats"], frozen)
  train_state = lambda st: {k: st[k] for k in ("params", "opt", "stats", "key")}
  # Per-segment selection (stage 2): each segment keeps the deltas of its own best epoch; the official rule
  # keeps the whole state of the last epoch in which any segment improved.
  per_segment = stage == "adapt" and cfg.adapt.selection == "per_segment"
  if per_segment:
    current_deltas = jax.jit(lambda st: adapters.deltas(nnx.merge(graphdef, *eval_states(st))))
    state["selected"] = current_deltas(state)  # B = 0: the frozen backbone's output for every segment
  best_dir = checkpointing.stage_dir(workdir, stage)
  best_mngr = checkpointing.manager(best_dir)
  resume_mngr = checkpointing.resume_manager(checkpointing.stage_dir(workdir, stage + "_resume"))

  restored = checkpointing.restore_resume(resume_mngr, state)
  if restored is not None:
    state, loop = restored
    log.truncate(name, loop["epoch"])  # drop records written after that checkpoint
    if not loop["finished"]:
      tqdm.write(f"[{name}] resuming at epoch {loop['epoch']}, batch {loop['batch']} (step {loop['step']})")
  else:
    loop = {"epoch": 1, "batch": 0, "step": 0, "loss_sum": 0.0, "loss_count": 0, "best_epoch": 0,
            "best_val": float("inf"), "stopper": None, "epoch_seconds": [], "finished": False}
    if stage == "adapt":
      # B = 0: the untrained adapters reproduce the frozen backbone, so this is the bypassed-adapter baseline,
      # and the state to fall back to if no segment ever improves.
      val0 = evaluate(eval_step, eval_states(state), val_windows, cfg.data.eval_batch_size, segments)
      loop["stopper"] = SegmentStopper(val0["per_segment_mse"], recipe.patience).to_dict()
      loop["best_val"] = val0["mse"]
      checkpointing.save(best_mngr, 0, nnx.state(model), dict(meta, epoch=0, val_mse=val0["mse"]))
      log.write(stage=name, epoch=0, val_mse=val0["mse"], val_mse_per_segment=val0["per_segment_mse"])
      tqdm.write(f"[{name}] before training: val mse {val0['mse']:.4f} "
                 f"per segment {np.round(val0['per_segment_mse'], 4).tolist()}")
    else:
      loop["stopper"] = SegmentStopper(np.full(segments, np.inf), recipe.patience).to_dict()
  stopper = SegmentStopper.from_dict(loop["stopper"])

  def fold(losses) -> None:
    """Move the device losses into the loop record (one host read); stop on a non-finite one, before
    anything computed from it is saved."""
    values = np.asarray(jax.device_get(losses), np.float64) if losses else np.zeros(0)
    if not np.isfinite(values).all():
      bad = loop["step"] - len(values) + int(np.flatnonzero(~np.isfinite(values))[0]) + 1
      best_mngr.wait_until_finished()
      raise Diverged(f"[{name}] non-finite training loss at step {bad} (epoch {loop['epoch']}); the last good "
                     f"checkpoints in {best_dir.parent} are kept; lower --config.{stage}.lr")
    loop["loss_sum"] += float(values.sum())
    loop["loss_count"] += len(values)
    losses.clear()

  def save_resume() -> None:
    loop["stopper"] = stopper.to_dict()
    checkpointing.save_resume(resume_mngr, loop["step"], state, loop)

  saved_at = time.monotonic()
  while not loop["finished"] and loop["epoch"] <= recipe.epochs:
    epoch, t0 = loop["epoch"], time.perf_counter()
    lr = float(steps.current_lr(state["opt"]))  # the lr this epoch trains with
    segs = steps.training_segments(stopper.active, cfg.adapt.skip_stopped, pad_to)
    losses = []
    order = data.train_order(train_src, recipe.batch_size, seed=seed, epoch=epoch)[loop["batch"]:]  # [n, B]
    bar = tqdm(order, total=steps_per_epoch, initial=loop["batch"], desc=f"[{name}] epoch {epoch}/{recipe.epochs}",
               leave=False, disable=None, file=sys.stderr)
    for idx in bar:
      new, loss = train_step(train_state(state), frozen, train_windows.take(idx), segs)
      state.update(new)
      losses.append(loss)  # stays on device; read back at checkpoints and at the epoch's end
      loop["step"] += 1
      loop["batch"] += 1
      if loop["step"] % cfg.log_every == 0:
        bar.set_postfix(loss=f"{float(loss):.4f}")
      every = cfg.get("checkpoint_every_steps", 0)
      due = (every and loop["step"] % every == 0) or time.monotonic() - saved_at >= cfg.checkpoint_every_seconds
      if due and loop["batch"] < steps_per_epoch:
        fold(losses)
        save_resume()
        saved_at = time.monotonic()
    fold(losses)
    train_loss = loop["loss_sum"] / max(loop["loss_count"], 1)
    val = evaluate(eval_step, eval_states(state), val_windows, cfg.data.eval_batch_size, segments)
    was_active = stopper.active.copy()
    improved = stopper.update(np.asarray(val["per_segment_mse"]))
    if per_segment:
      chosen = jnp.asarray(stopper.improved)[:, None, None]
      state["selected"] = jax.tree.map(lambda new, old: jnp.where(chosen, new, old), current_deltas(state),
                                       state["selected"])
      loop["best_epoch"], loop["best_val"] = epoch, float(np.mean(stopper.best))
    elif improved:
      loop["best_epoch"], loop["best_val"] = epoch, val["mse"]
      merged = nnx.merge(graphdef, *eval_states(state))
      checkpointing.save(best_mngr, epoch, nnx.state(merged), dict(meta, epoch=epoch, val_mse=val["mse"]))
    seconds = time.perf_counter() - t0
    loop["epoch_seconds"].append(seconds)
    log.write(stage=name, epoch=epoch, train_loss=train_loss, val_mse=val["mse"], val_mae=val["mae"],
              val_mse_per_segment=val["per_segment_mse"], lr=lr, active_segments=int(was_active.sum()),
              improved=improved, seconds=seconds)
    seg_note = f" active {int(stopper.active.sum())}/{segments}" if segments > 1 else ""
    tqdm.write(f"[{name}] epoch {epoch}/{recipe.epochs}  train {train_loss:.4f}  val mse {val['mse']:.4f} "
               f"mae {val['mae']:.4f}  lr {lr:.2e}  {seconds:.1f}s{' *' if improved else ''}{seg_note}")
    loop.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_count=0,
                finished=epoch == recipe.epochs or not stopper.active.any())
    if per_segment and loop["finished"]:  # the selected deltas become the stage's final state
      selected = nnx.merge(graphdef, *eval_states(state))
      adapters.bake(selected, state["selected"])
      checkpointing.save(best_mngr, epoch + 1, nnx.state(selected),
                         dict(meta, epoch=epoch, selection="per_segment", val_mse=loop["best_val"]))
    best_mngr.wait_until_finished()  # the best state is on disk before the resume record points past it
    save_resume()

  resume_mngr.wait_until_finished()
  resume_mngr.close()
  best_mngr.close()
  if per_segment:
    adapters.bake(model)  # the structure the selected state was saved in
  checkpointing.restore_into(model, best_dir)
  seconds = loop["epoch_seconds"]
  return {"best_epoch": loop["best_epoch"], "val_mse": loop["best_val"], "epochs": len(seconds),
          "seconds": float(np.sum(seconds)), "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0}


def test(model: nnx.Module, *, series, cfg, horizon: int, segments: int, split: str = "test") -> dict:
  """One pass over every window of `split`, in order: the test split once, after training (never used for
  selection)."""
  graphdef, *states = nnx.split(model)
  windows = data.DeviceWindows(data.window_source(series, split, cfg.data.seq_len, horizon))
  return evaluate(steps.make_eval_step(graphdef, segments=segments, compute_dtype=cfg.get("compute_dtype")),
                  tuple(states), windows, cfg.data.eval_batch_size, segments)


# ---------------------------------------------------------------------------------------------------------------
# The run.


def identity(cfg, series, segment_len: int) -> dict:
  """What a stage-1 checkpoint must agree on to be adapted (checkpointing.BACKBONE_IDENTITY)."""
  return {"dataset": series.name, "backbone": cfg.backbone, "model": cfg.model[cfg.backbone].to_dict(),
          "seq_len": cfg.data.seq_len, "segment_len": segment_len, "channels": int(series.values.shape[1]),
          "marks": int(series.marks.shape[1])}


def default_workdir(cfg) -> str:
  return f"runs/{cfg.data.name}-{cfg.backbone}-{cfg.method}-T{cfg.horizon}-seed{cfg.seed}"


def _flat(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out |= _flat(value, f"{prefix}{key}.")
    else:
      out[prefix + key] = value
  return out


def claim_workdir(cfg, workdir: pathlib.Path, overwrite: bool) -> None:
  """Refuse a workdir that holds a run of another config (unless overwriting); a run of the same config is
  resumed. Called only after everything that can be checked without writing has passed."""
  path = workdir / "config.json"
  new = json.loads(cfg.to_json_best_effort())
  if path.is_file() and not overwrite:
    old = _flat(json.loads(path.read_text()))
    # Where and how it runs is not what it computes: a run may resume under another mesh or process count,
    # and with other logging, checkpoint or benchmark settings. A key the old run predates counts as its default.
    ignored = ("mesh.", "distributed", "bench.", "reproduce.", "log_every", "checkpoint_every_", "compile_cache")
    defaults, now = _flat(json.loads(config_lib.default().to_json_best_effort())), _flat(new)
    diff = sorted(k for k in set(old) | set(now)
                  if old.get(k, defaults.get(k)) != now.get(k) and not k.startswith(ignored))
    if diff:
      raise checkpointing.CheckpointError(
          f"{workdir} holds a run of a different config (differs in {', '.join(diff[:5])}); use another "
          "--workdir, or --overwrite to replace it")
  elif overwrite and workdir.exists():
    for item in ("checkpoints", "metrics.jsonl", "results.json", "config.json"):
      target = workdir / item
      shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(new, indent=2))


def train_and_evaluate(cfg, workdir, *, overwrite: bool = False) -> dict:
  """Run what `cfg` asks for in `workdir` and return the results dict (also written to results.json).
  Rerunning it on the same workdir resumes where the last attempt stopped. With `cfg.mesh.shape` set, the whole
  run happens on that device mesh: state born sharded, steps jitted with explicit shardings (sharding.py)."""
  config_lib.validate(cfg)
  runtime.use_compile_cache(cfg.get("compile_cache", True))
  with sharding.use(sharding.make_mesh(cfg.mesh), cfg.mesh.rules):  # no mesh configured: does nothing
    return _train_and_evaluate(cfg, workdir, overwrite=overwrite)


def _train_and_evaluate(cfg, workdir, *, overwrite: bool) -> dict:
  s = config_lib.segment_len(cfg)
  t_len, k = cfg.horizon, cfg.horizon // s
  series = data.load_series(cfg.data)  # bad data fails here, before anything is written
  for split in ("train", "val", "test"):  # every split must hold at least one T-step window
    data.window_source(series, split, cfg.data.seq_len, t_len)
  channels, marks = series.values.shape[1], series.marks.shape[1]
  two_stage = cfg.method != "mtf"
  init_dir = checkpointing.stage_dir(cfg.init_from or workdir, "pretrain")
  if two_stage and cfg.stage == "adapt" and not init_dir.is_dir():
    raise checkpointing.CheckpointError(
        f"no stage-1 checkpoint at {init_dir}; run --config.stage=pretrain (or all) first, "
        "or set --config.init_from to the workdir of a finished stage-1 run")

  workdir = pathlib.Path(workdir)
  lead = sharding.is_lead()  # only process 0 writes logs and results; every process writes its checkpoint shards
  if lead:
    claim_workdir(cfg, workdir, overwrite)
    # The training scaler travels with the run, so forecasting new data needs neither the training file nor a refit.
    (workdir / "scaler.json").write_text(json.dumps({
        "dataset": series.name, "columns": list(series.columns), "mean": series.mean.tolist(),
        "std": series.std.tolist(), "freq": series.freq, "marks": int(series.marks.shape[1])}, indent=2))
  sharding.sync("workdir claimed")
  log = MetricsLog(workdir / "metrics.jsonl" if lead else pathlib.Path(os.devnull))
  ident = identity(cfg, series, s)
  timings: dict = {}

  if not two_stage or cfg.stage in ("all", "pretrain"):
    pred_len = s if two_stage else t_len
    model = sharding.create(lambda: build(cfg, channels=channels, marks=marks, pred_len=pred_len, segments=0,
                                          rngs=nnx.Rngs(cfg.seed)))  # born sharded under a mesh
    name = "stage1" if two_stage else "mtf"
    summary = fit(model, stage="pretrain", series=series, cfg=cfg, recipe=cfg.pretrain, segments=1,
                  horizon=pred_len, seed=cfg.seed, workdir=workdir,
                  meta=dict(ident, stage="pretrain"), log=log, name=name)
    sharding.place_model(model)  # the selected state comes back from disk as host arrays
    timings["stage1"] = summary
    final, final_h, final_k = model, pred_len, 1

  if two_stage and cfg.stage in ("all", "adapt"):
    model = sharding.create(lambda: build(cfg, channels=channels, marks=marks, pred_len=s, segments=k,
                                          rngs=nnx.Rngs(cfg.seed + 1)))
    checkpointing.load_backbone(model, init_dir, ident)
    sharding.place_model(model)  # the loaded backbone arrives as host arrays
    summary = fit(model, stage="adapt", series=series, cfg=cfg, recipe=cfg.adapt, segments=k, horizon=t_len,
                  seed=cfg.seed, workdir=workdir,
                  meta=dict(ident, stage="adapt", method=cfg.method, horizon=t_len), log=log, name="stage2")
    sharding.place_model(model)
    timings["stage2"] = summary
    final, final_h, final_k = model, t_len, k

  train_seconds = sum(summary["seconds"] for summary in timings.values())  # excludes time lost to restarts
  metrics = test(final, series=series, cfg=cfg, horizon=final_h, segments=final_k)
  last = timings.get("stage2") or timings.get("stage1")
  results = {
      "dataset": series.name, "backbone": cfg.backbone, "method": cfg.method, "stage": cfg.stage,
      "horizon": final_h, "segment_len": s if two_stage else t_len, "segments": final_k, "seed": cfg.seed,
      "test_mse": metrics["mse"], "test_mae": metrics["mae"], "val_mse": last["val_mse"],
      "num_test_windows": metrics["windows"], "train_seconds": train_seconds,
      "per_step_test_mse": metrics["per_step_mse"], "per_segment_test_mse": metrics["per_segment_mse"],
      "stages": timings, "device": jax.devices()[0].device_kind,
  }
  if lead:
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
  log.write(stage="test", test_mse=metrics["mse"], test_mae=metrics["mae"], windows=metrics["windows"])
  tqdm.write(f"test mse {metrics['mse']:.4f} mae {metrics['mae']:.4f} on {metrics['windows']} windows "
             f"({cfg.method}, T={final_h}); results in {workdir / 'results.json'}")
  return results


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.horizon=192")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  cfg = flags.FLAGS.config
  # Multi-host (cfg.distributed or MOLA_DISTRIBUTED=1): before anything touches a device. Only process 0 reports.
  if sharding.initialize_distributed(cfg.distributed) and not sharding.is_lead():
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process); errors still reach stderr
  try:
    with cli.user_errors():
      train_and_evaluate(cfg, flags.FLAGS.workdir or default_workdir(cfg), overwrite=flags.FLAGS.overwrite)
  except Diverged as e:
    cli.fail(str(e), code=3)


if __name__ == "__main__":  # flags live here so that importing this module (tests, reproduce) defines none
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/etth1.py", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: runs/<dataset>-<backbone>-<method>-...)")
  flags.DEFINE_bool("overwrite", False, "Replace a run of a different config in --workdir instead of refusing")
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=cli.parse_flags)
