"""One stage of training: fit a model's trainable group (the backbone in stage 1, the adapters in stage 2) with
per-segment early stopping on validation, resume checkpoints, and the stage's selection rule.

    summary = fit(model, stage, series=series, loop=plan.loop, evaluation=plan.evaluation, workdir=workdir, meta=meta,
                  log=log)

Afterwards `model` holds the selected state. The pieces: stopping.SegmentStopper (when a segment stops),
selection (which state the stage keeps), evaluation (validation), metrics (metrics.jsonl), checkpointing
(best-state and resume checkpoints), and `Progress`, the record of where the loop is, saved with every resume
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from mola_jax import checkpointing, data, metrics, plan, runtime, selection, sharding, steps
from mola_jax.errors import DataError, Diverged
from mola_jax.evaluation import validate
from mola_jax.models import adapters
from mola_jax.stopping import SegmentStopper


@dataclasses.dataclass
class Progress:
  """Where a stage's loop is: saved as JSON with every resume checkpoint, so a rerun continues from there."""

  epoch: int = 1  # the epoch in progress (1-based)
  batch: int = 0  # its batches done
  step: int = 0  # steps done in the stage
  loss_sum: float = 0.0  # this epoch's training loss so far, summed over its steps
  loss_count: int = 0
  best_epoch: int = 0
  best_val: float = math.inf
  stopper: dict | None = None  # SegmentStopper.to_dict()
  epoch_seconds: list = dataclasses.field(default_factory=list)
  finished: bool = False

  @classmethod
  def from_json(cls, record: dict) -> Progress:
    return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})

  def summary(self) -> dict:
    seconds = self.epoch_seconds
    return {
      "best_epoch": self.best_epoch,
      "val_mse": self.best_val,
      "epochs": len(seconds),
      "seconds": float(np.sum(seconds)),
      "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
    }


def fit(model: nnx.Module, stage: plan.Stage, *, series, loop: plan.Loop, evaluation: plan.Evaluation, workdir,
        meta: dict, log: metrics.MetricsLog) -> dict:  # fmt: skip
  """Train `model` for `stage` on its windows of `stage.window` steps, resuming from `workdir`'s resume checkpoint
  if there is one. Returns the stage's summary (best epoch, its validation MSE, epochs, seconds)."""
  run = StageLoop(model, stage, series=series, loop=loop, evaluation=evaluation, workdir=workdir, meta=meta, log=log)
  progress = run.begin()
  while not progress.finished:
    run.train_epoch(progress)
    run.end_epoch(progress)
  run.close(model)
  return progress.summary()


class StageLoop:
  """Everything one stage's epochs share, built once: the split windows on the device, the compiled steps, the
  training state, the checkpoint managers, the stopper and the selection rule."""

  def __init__(self, model, stage: plan.Stage, *, series, loop, evaluation, workdir, meta: dict, log):
    self.stage, self.loop, self.evaluation, self.log, self.recipe = stage, loop, evaluation, log, stage.recipe
    seq_len = evaluation.seq_len
    self.train_src = data.window_source(series, "train", seq_len, stage.window)
    self.train_windows = data.DeviceWindows(self.train_src)
    self.val_windows = data.DeviceWindows(data.window_source(series, "val", seq_len, stage.window))
    self.steps_per_epoch = data.num_train_batches(self.train_src, self.recipe.batch_size)
    if self.steps_per_epoch == 0:
      raise DataError(
        f"{len(self.train_src)} training windows are fewer than one batch of {self.recipe.batch_size}; "
        f"lower --config.{stage.name}.batch_size or use a longer series"
      )
    self.schedule = steps.lr_schedule(self.recipe.lr, self.steps_per_epoch, self.recipe.lr_decay)
    tx = steps.make_tx(self.schedule)
    # Raw key data (not a typed key) so that the rng is an ordinary array in the resume checkpoint.
    key = jax.random.key_data(jax.random.fold_in(jax.random.key(loop.seed), 1 if stage.name == plan.PRETRAIN else 2))
    self.graphdef, self.state, self.frozen = steps.init_state(model, stage.name, tx, key)
    dtype = loop.compute_dtype
    share = stage.name == plan.ADAPT and self.recipe.share_prefix_dropout
    self.train_step = steps.make_train_step(
      self.graphdef, tx, segments=stage.segments, compute_dtype=dtype, share_prefix_dropout=share
    )
    self.eval_step = steps.make_eval_step(self.graphdef, segments=stage.segments, compute_dtype=dtype)
    # Pad the active segments to a multiple of the step's groups (steps.training_segments), except where batch
    # statistics would then see the stopped segments too.
    self.pad_to = 1 if jax.tree.leaves(self.state["stats"]) else steps.default_groups()
    best_dir = checkpointing.stage_dir(workdir, stage.name)
    self.best_mngr = checkpointing.manager(best_dir)
    self.resume_mngr = checkpointing.resume_manager(checkpointing.stage_dir(workdir, stage.name + "_resume"))
    if stage.name == plan.ADAPT and self.recipe.selection == "per_segment":
      deltas = jax.jit(lambda st: adapters.deltas(nnx.merge(self.graphdef, *self._eval_states(st))))
      self.selection = selection.PerSegment(self.best_mngr, best_dir, meta, deltas)
    else:
      self.selection = selection.AnyImproved(self.best_mngr, best_dir, meta)
    self.state |= self.selection.carry(self.state)
    profile_dir = workdir / "profile" / stage.name
    self.profiler = runtime.StepProfiler(profile_dir, loop.profile_steps if sharding.is_lead() else 0)

  def _eval_states(self, state: dict) -> tuple:
    return (*state["params"], state["stats"], self.frozen)

  def _model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, *self._eval_states(self.state))

  def _model_state(self, bake=None) -> nnx.State:
    """The current model's whole state; `bake`: per-segment deltas that replace the adapters first."""
    model = self._model()
    if bake is not None:
      adapters.bake(model, bake)
    return nnx.state(model)

  def validate(self, epoch: int) -> dict:
    """The validation score after `epoch` (0: before training), under the evaluation's protocol."""
    states, segments = self._eval_states(self.state), self.stage.segments
    return validate(
      self.eval_step,
      states,
      self.val_windows,
      self.evaluation,
      segments,
      batch_size=self.recipe.batch_size,
      epoch=epoch,
    )

  def begin(self) -> Progress:
    """The newest resume checkpoint's progress and state, or a fresh start."""
    name = self.stage.name
    restored = checkpointing.restore_resume(self.resume_mngr, self.state)
    if restored is not None:
      self.state, record = restored
      progress = Progress.from_json(record)
      self.log.truncate(name, progress.epoch)  # drop records written after that checkpoint
      if not progress.finished:
        tqdm.write(f"[{name}] resuming at epoch {progress.epoch}, batch {progress.batch} (step {progress.step})")
    else:
      self.log.truncate(name, 0)  # a run killed before its first resume checkpoint left records to redo
      progress = self._fresh()
    progress.finished |= progress.epoch > self.recipe.epochs
    self.stopper = SegmentStopper.from_dict(progress.stopper)
    return progress

  def _fresh(self) -> Progress:
    """A first start. Stage 2 first scores the B = 0 state: the untrained adapters reproduce the frozen backbone,
    so this is the bypassed-adapter baseline, and the state to fall back to if no segment ever improves."""
    if self.stage.name != plan.ADAPT:
      return Progress(stopper=SegmentStopper(np.full(self.stage.segments, np.inf), self.recipe.patience).to_dict())
    val0 = self.validate(0)
    self.selection.baseline(self._model_state(), val0)
    self.log.write(stage=plan.ADAPT, epoch=0, val_mse=val0["mse"], val_mse_per_segment=val0["per_segment_mse"])
    tqdm.write(
      f"[{plan.ADAPT}] before training: val mse {val0['mse']:.4f} per segment "
      f"{np.round(val0['per_segment_mse'], 4).tolist()}"
    )
    return Progress(
      best_val=val0["mse"], stopper=SegmentStopper(val0["per_segment_mse"], self.recipe.patience).to_dict()
    )

  def train_epoch(self, progress: Progress) -> None:
    """The epoch's remaining batches; a resume checkpoint every `checkpoint_every_seconds` (and _steps, if set)."""
    loop, epoch, self.t0 = self.loop, progress.epoch, time.perf_counter()
    skip = self.stage.name != plan.ADAPT or self.recipe.skip_stopped
    segs = steps.training_segments(self.stopper.active, skip, self.pad_to)
    order = data.train_order(self.train_src, self.recipe.batch_size, seed=loop.seed, epoch=epoch)  # [n, B]
    bar = tqdm(
      order[progress.batch :],
      total=self.steps_per_epoch,
      initial=progress.batch,
      leave=False,
      desc=f"[{self.stage.name}] epoch {epoch}/{self.recipe.epochs}",
      disable=None,
      file=sys.stderr,
    )
    losses, saved_at, every = [], time.monotonic(), loop.checkpoint_every_steps
    for idx in bar:
      train_state = {k: self.state[k] for k in ("params", "opt", "stats", "key")}
      new, loss = self.train_step(train_state, self.frozen, self.train_windows.take(idx), segs)
      self.state.update(new)
      losses.append(loss)  # stays on the device; read back at checkpoints and at the epoch's end
      progress.step += 1
      self.profiler.after_step(progress.step, new)
      progress.batch += 1
      due = bool(every) and progress.step % every == 0
      if progress.step % loop.log_every == 0:
        bar.set_postfix(loss=f"{float(loss):.4f}")
        # The clock is read here only, and process 0's reading decides for every process: a resume checkpoint
        # is a collective save that all processes must start at the same step.
        due |= sharding.agree(time.monotonic() - saved_at >= loop.checkpoint_every_seconds)
      if due and progress.batch < self.steps_per_epoch:
        self._fold(losses, progress)
        self._save_resume(progress)
        saved_at = time.monotonic()
    self.profiler.stop(self.state)
    self._fold(losses, progress)

  def end_epoch(self, progress: Progress) -> None:
    """Validation, stopping, selection, the epoch's metrics record and a resume checkpoint."""
    epoch, name, segments = progress.epoch, self.stage.name, self.stage.segments
    lr = float(self.schedule((epoch - 1) * self.steps_per_epoch))  # what the epoch's steps trained with
    train_loss = progress.loss_sum / max(progress.loss_count, 1)
    val = self.validate(epoch)
    active = int(self.stopper.active.sum())  # during this epoch
    improved = self.stopper.update(np.asarray(val["per_segment_mse"]))
    self.selection.update(epoch, self.stopper, val, progress, self.state, self._model_state)
    seconds = time.perf_counter() - self.t0
    progress.epoch_seconds.append(seconds)
    self.log.write(
      stage=name,
      epoch=epoch,
      train_loss=train_loss,
      val_mse=val["mse"],
      val_mae=val["mae"],
      val_mse_per_segment=val["per_segment_mse"],
      lr=lr,
      active_segments=active,
      improved=improved,
      seconds=seconds,
    )
    if name == plan.ADAPT:
      self.log.mixtures(name, epoch, sharding.fetch(adapters.mixture_weights(self._model())))
    note = f" active {int(self.stopper.active.sum())}/{segments}" if segments > 1 else ""
    tqdm.write(
      f"[{name}] epoch {epoch}/{self.recipe.epochs}  train {train_loss:.4f}  val mse {val['mse']:.4f} "
      f"mae {val['mae']:.4f}  lr {lr:.2e}  {seconds:.1f}s{' *' if improved else ''}{note}"
    )
    progress.epoch, progress.batch, progress.loss_sum, progress.loss_count = epoch + 1, 0, 0.0, 0
    progress.finished = epoch == self.recipe.epochs or not self.stopper.active.any()
    if progress.finished:
      self.selection.finish(epoch, progress, self.state, self._model_state)
    self.best_mngr.wait_until_finished()  # the best state is on disk before the resume record points past it
    self._save_resume(progress)

  def close(self, model: nnx.Module) -> None:
    """Wait for the last writes and leave the selected state (reloaded from disk) in `model`."""
    self.resume_mngr.wait_until_finished()
    self.resume_mngr.close()
    self.best_mngr.close()
    self.selection.restore(model)

  def _fold(self, losses: list, progress: Progress) -> None:
    """Move the device losses into the progress record (one host read); stop on a non-finite one, before
    anything computed from it is saved."""
    values = np.asarray(sharding.fetch(losses), np.float64) if losses else np.zeros(0)
    if not np.isfinite(values).all():
      bad = progress.step - len(values) + int(np.flatnonzero(~np.isfinite(values))[0]) + 1
      self.best_mngr.wait_until_finished()
      raise Diverged(
        f"[{self.stage.name}] non-finite training loss at step {bad} (epoch {progress.epoch}); the last "
        f"good checkpoints in {self.selection.directory.parent} are kept; lower "
        f"--config.{self.stage.name}.lr"
      )
    progress.loss_sum += float(values.sum())
    progress.loss_count += len(values)
    losses.clear()

  def _save_resume(self, progress: Progress) -> None:
    progress.stopper = self.stopper.to_dict()
    checkpointing.save_resume(self.resume_mngr, progress.step, self.state, dataclasses.asdict(progress))
