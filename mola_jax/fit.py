"""One stage of one run: train the state's trainable part (the backbone in stage 1, the adapters in stage 2) with
per-segment early stopping on validation, resume checkpoints, and the stage's selection rule.

    selected, summary = fit(state, stage, series=series, run=run)

`epochs` below is the loop, top to bottom. An epoch runs on the device in chunks of `loop.chunk_steps` steps,
each one jitted, donated lax.scan that gathers its batches on the device (steps.make_train_chunk): the host
dispatches one program per chunk and reads the chunk's losses back one chunk later (the NaN guard, the progress
bar and the epoch's mean loss), so it never waits for the device in between. Resume points fall on chunk ends.
Which windows each chunk trains on comes from the stage's order (data/feeds.py): the hand-written one of a wide
table, or grain's for a panel, whose chunks under data.placement=host are batches a grain pipeline gathered on the
host; the order's own state is saved in the resume record.
The best state so far lives on the device (selection.py) and is written when the stage ends and at resume
points, never per improvement.

The loop asks for its device work by yielding it (`Train`, `Evaluate`) and gets the results back: `fit` runs the
requests of one run with that run's programs; mola_jax/lab/side_by_side.py runs several runs' requests as one
vmapped program (seeds in one program). The loop itself knows of one run only.
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

from mola_jax import checkpointing, data, distributed, evaluation, metrics, plan, runtime, selection, sharding, steps
from mola_jax.errors import DataError, Diverged
from mola_jax.models import adapters
from mola_jax.state import TrainState
from mola_jax.stopping import SegmentStopper


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What one run brings to a stage: where it saves and reports, its loop and evaluation settings."""

  workdir: object
  meta: dict
  log: metrics.MetricsLog
  loop: plan.Loop
  evaluation: plan.Evaluation


@dataclasses.dataclass
class Train:
  """A request of the loop: C train steps (steps.train_chunk_fn) -> (state, losses [C])."""

  state: TrainState
  idx: np.ndarray | None  # int32 [C, B]: the windows to gather on the device
  segs: tuple  # (ids int32 [K_a], active bool [K_a])
  valid: np.ndarray  # bool [C]
  at: tuple  # (epoch, first batch): where the loop is
  batch: dict | None = None  # or the batches gathered on the host {"x": [C, B, L, D], ...} (data.PanelOrder)


@dataclasses.dataclass
class Evaluate:
  """A request of the loop: the validation batches -> their sums on the device (evaluation.batch_sums)."""

  state: TrainState  # state.forecaster()
  idx: np.ndarray  # int32 [n, B]
  mask: np.ndarray  # bool [n, B]
  at: tuple  # (epoch, inf): after the epoch's batches (epoch 0: before training)


@dataclasses.dataclass
class Progress:
  """Where a run's loop is: saved as JSON with every resume checkpoint, so a rerun continues from there."""

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
  best_written: int = -1  # the best epoch whose state is in the best-state checkpoint
  order: dict | None = None  # the epoch's window order's state (grain's iterator, data.PanelOrder); None: at its start

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


@dataclasses.dataclass(frozen=True)
class Windows:
  """A stage's splits and its epoch's shape: validation on the device, training on the device or (a panel under
  data.placement=host) gathered on the host from `source`, the training split's windows."""

  train: data.DeviceWindows | None  # None: gathered on the host
  val: data.DeviceWindows
  steps_per_epoch: int
  source: data.WindowSource | data.PanelSplit

  @classmethod
  def of(cls, series, stage: plan.Stage, seq_len: int, placement: str = "device") -> Windows:
    src = data.window_source(series, "train", seq_len, stage.window)
    steps_per_epoch = data.num_train_batches(src, stage.recipe.batch_size)
    if steps_per_epoch == 0:
      raise DataError(
        f"{len(src)} training windows are fewer than one batch of {stage.recipe.batch_size}; "
        f"lower --config.{stage.name}.batch_size or use a longer series"
      )
    val = data.DeviceWindows(data.window_source(series, "val", seq_len, stage.window))
    host = isinstance(src, data.PanelSplit) and data.placement(placement, src.values.nbytes) == "host"
    return cls(None if host else data.DeviceWindows(src), val, steps_per_epoch, src)

  def order(self, seed: int, batch_size: int, chunk: int):
    """The run's window order (data/feeds.py): grain's for a panel, the hand-written one for a wide table."""
    if isinstance(self.source, data.PanelSplit):
      return data.PanelOrder(self.source, batch_size, seed=seed, chunk=chunk, host=self.train is None)
    return data.HandOrder(self.train, batch_size, seed=seed, chunk=chunk)

  def inputs(self, request: Train) -> tuple:
    """A Train request's arguments of the stage's train chunk, on the devices (steps.make_train_chunk)."""
    if request.batch is not None:
      return data.place_chunk(request.batch), *sharding.replicate((request.segs, request.valid))
    return self.train.arrays, *sharding.replicate((request.idx, request.segs, request.valid))


def new_state(model, stage: plan.Stage, loop: plan.Loop, tx) -> TrainState:
  """The stage's state of `model`: its optimizer `tx` (stage_tx), the run's own dropout stream (raw key data)."""
  tag = 1 if stage.name == plan.PRETRAIN else 2
  key = jax.random.key_data(jax.random.fold_in(jax.random.key(loop.seed), tag))
  return sharding.commit(TrainState.create(model, stage.name, tx, key))


def stage_tx(stage: plan.Stage, steps_per_epoch: int):
  """Adam on the stage's schedule."""
  r = stage.recipe
  return steps.make_tx(steps.lr_schedule(r.lr, steps_per_epoch, r.lr_decay, r.lr_decay_from))


def fit(model, stage: plan.Stage, *, series, run: RunSetup) -> tuple[TrainState, dict]:
  """Train `model` for `stage` on windows of `stage.window` steps, resuming from the run's resume checkpoint if
  there is one -> (the selected state, the summary: best epoch, its validation MSE, epochs, seconds)."""
  windows = Windows.of(series, stage, run.evaluation.seq_len, run.loop.placement)
  state = new_state(model, stage, run.loop, stage_tx(stage, windows.steps_per_epoch))
  loop = epochs(state, stage, windows, run)
  train, evaluate = programs(stage, run, windows)
  profile = run.loop.profile_steps if distributed.is_lead() else 0
  profiler, done = runtime.StepProfiler(run.workdir / "profile" / stage.name, profile), 0
  result = None
  while True:
    try:
      request = loop.send(result)  # the first send(None) starts the loop
    except StopIteration as finished:
      return finished.value
    if isinstance(request, Train):
      result = train(request.state, *windows.inputs(request))
      done += int(request.valid.sum())
      profiler.after_step(done, result)
    else:
      profiler.stop(request.state)  # at an epoch's end
      result = evaluation.batch_sums(evaluate, request.state, windows.val.arrays, request.idx, request.mask)


def programs(stage: plan.Stage, run: RunSetup, windows: Windows):
  """The stage's train chunk and eval chunk (at most three programs a stage: two segment buckets and one eval)."""
  w, layout = windows.source, sharding.current()
  train = steps.make_train_chunk(plan.step_options(stage, run.loop), seq_len=w.seq_len, pred_len=w.pred_len,
                                 layout=layout, host=windows.train is None)  # fmt: skip
  opts = plan.eval_options(stage, run.evaluation)
  return train, steps.make_eval_chunk(opts, seq_len=w.seq_len, pred_len=w.pred_len, layout=layout)


def epochs(state: TrainState, stage: plan.Stage, windows: Windows, run: RunSetup):
  """The stage's loop (a generator: it yields its device work and is sent the results) -> (selected, summary)."""
  recipe, k, c, b = stage.recipe, stage.segments, run.loop.chunk_steps, stage.recipe.batch_size
  ckpt = Checkpoints(run, stage, rule=recipe.get("selection", "any_improved"))
  state, best, p = ckpt.restore(state)
  if p is None:  # a first start: stage 2 scores the B = 0 state first (the bypassed-adapter baseline)
    val0 = (yield from validate(state, stage, windows, run, 0)) if stage.name == plan.ADAPT else None
    p = start(val0, k, recipe.patience, run.log)
  stopper, sizes = SegmentStopper.from_dict(p.stopper), steps.segment_buckets(k, steps.default_groups())
  order = windows.order(run.loop.seed, b, c)
  try:
    while not p.finished:
      t0 = time.perf_counter()
      segs = steps.training_segments(stopper.active, stage.name != plan.ADAPT or recipe.skip_stopped, sizes)
      losses, bar = LossFold(p, stage, run), progress_bar(p, stage, windows.steps_per_epoch)
      for chunk in order.chunks(p.epoch, p.batch, p.order):  # from the resume point, if the epoch has one
        state, out = yield Train(state, chunk.idx, segs, chunk.valid, (p.epoch, chunk.first), chunk.batch)
        p.batch, p.step, p.order = chunk.first + chunk.n, p.step + chunk.n, order.state()
        losses.add(out, chunk.n)  # reads the chunk before: the host never waits long
        bar.update(chunk.n)
        if p.batch < windows.steps_per_epoch and ckpt.due(p.step):
          losses.flush()
          ckpt.save(state, best, p)
      bar.close()
      losses.flush()
      val = yield from validate(state, stage, windows, run, p.epoch)
      best = end_epoch(state, best, p, stopper, val, stage, run, windows.steps_per_epoch, time.perf_counter() - t0)
      if p.finished or ckpt.due(p.step):
        ckpt.save(state, best, p)
  finally:
    ckpt.close()  # the checkpoints written so far are complete, also when the run stops on an error
  return selection.selected(best, state), p.summary()


def validate(state: TrainState, stage: plan.Stage, windows: Windows, run: RunSetup, epoch: int):
  """The run's validation score after `epoch` (0: before training), under its evaluation's protocol."""
  ev = run.evaluation
  idx, mask = evaluation.val_batches(windows.val, ev, stage.recipe.batch_size, epoch)
  sums = yield Evaluate(state.forecaster(), idx, mask, (epoch, math.inf))
  channels = evaluation.scored_channels(windows.val, ev.target_only)
  return evaluation.scores(sums, ev, segments=stage.segments, channels=channels)


def start(val0: dict | None, k: int, patience: int, log) -> Progress:
  """A first start's progress: stage 2 starts from the copy's validation scores (and may fall back to it)."""
  p = Progress()
  if val0 is None:
    p.stopper = SegmentStopper(np.full(k, np.inf), patience).to_dict()
    return p
  log.write(stage=plan.ADAPT, epoch=0, val_mse=val0["mse"], val_mse_per_segment=val0["per_segment_mse"])
  tqdm.write(f"[{plan.ADAPT}] before training: val mse {val0['mse']:.4f} per segment "
             f"{np.round(val0['per_segment_mse'], 4).tolist()}")  # fmt: skip
  p.best_val, p.stopper = val0["mse"], SegmentStopper(val0["per_segment_mse"], patience).to_dict()
  return p


def progress_bar(p: Progress, stage: plan.Stage, total: int):
  return tqdm(total=total, initial=p.batch, leave=False, disable=None, file=sys.stderr,
              desc=f"[{stage.name}] epoch {p.epoch}/{stage.recipe.epochs}")  # fmt: skip


class LossFold:
  """The chunks' device losses into the progress record, one chunk late (one host read each); a non-finite loss
  stops the run before anything computed from it is saved."""

  def __init__(self, p: Progress, stage: plan.Stage, run: RunSetup):
    self.p, self.stage, self.run, self.pending = p, stage, run, []

  def add(self, losses, n: int) -> None:
    self.pending.append((losses, n, self.p.step))
    self._fold(self.pending[:-1])
    del self.pending[:-1]

  def flush(self) -> None:
    self._fold(self.pending)
    self.pending.clear()

  def _fold(self, pending: list) -> None:
    for losses, n, step_after in pending:
      values = np.asarray(distributed.fetch(losses), np.float64)[:n]  # [n]
      bad = np.flatnonzero(~np.isfinite(values))
      if bad.size:
        step = step_after - n + int(bad[0]) + 1
        raise Diverged(
          f"[{self.stage.name}] non-finite training loss at step {step} (epoch {self.p.epoch}) of "
          f"{self.run.workdir}; the last good checkpoints are kept; lower --config.{self.stage.name}.lr"
        )
      self.p.loss_sum += float(values.sum())
      self.p.loss_count += n


def end_epoch(state, best, p: Progress, stopper, val: dict, stage: plan.Stage, run: RunSetup, steps_per_epoch: int,
              seconds: float):  # fmt: skip
  """Stopping, selection and the epoch's record (metrics.jsonl, TensorBoard, a line) -> the best state."""
  name, epoch, k, r = stage.name, p.epoch, stage.segments, stage.recipe
  lr = float(steps.lr_schedule(r.lr, steps_per_epoch, r.lr_decay, r.lr_decay_from)((epoch - 1) * steps_per_epoch))
  train_loss, active = p.loss_sum / max(p.loss_count, 1), int(stopper.active.sum())
  improved = stopper.update(np.asarray(val["per_segment_mse"]))
  best = selection.update(best, state, stopper.improved)
  selection.record(best, p, epoch, stopper, val)
  p.epoch_seconds.append(seconds)
  run.log.write(stage=name, epoch=epoch, train_loss=train_loss, val_mse=val["mse"], val_mae=val["mae"],
                val_mse_per_segment=val["per_segment_mse"], lr=lr, active_segments=active, improved=improved,
                seconds=seconds)  # fmt: skip
  if name == plan.ADAPT:
    run.log.mixtures(name, epoch, distributed.fetch(adapters.mixture_weights(state.model())))
  note = f" active {int(stopper.active.sum())}/{k}" if k > 1 else ""
  tqdm.write(f"[{name}] epoch {epoch}/{stage.recipe.epochs}  train {train_loss:.4f}  val mse {val['mse']:.4f} "
             f"mae {val['mae']:.4f}  lr {lr:.2e}  {seconds:.1f}s{' *' if improved else ''}{note}")  # fmt: skip
  p.epoch, p.batch, p.loss_sum, p.loss_count, p.order = epoch + 1, 0, 0.0, 0, None
  p.finished = epoch == stage.recipe.epochs or not stopper.active.any()
  p.stopper = stopper.to_dict()
  return best


class Checkpoints:
  """A run's checkpoints of one stage: the best state (written when the stage ends and at resume points, as the
  fallback of a damaged newest) and the resume points (the state, the best state and the progress), and when one
  is due: checkpoint_every_steps steps, or (by process 0's clock, agreed by every process: the save is
  collective) checkpoint_every_seconds, since the last one."""

  def __init__(self, run: RunSetup, stage: plan.Stage, rule: str):
    self.run, self.stage, self.rule = run, stage, rule
    self.best = checkpointing.manager(checkpointing.stage_dir(run.workdir, stage.name))
    self.resume = checkpointing.resume_manager(checkpointing.stage_dir(run.workdir, stage.name + "_resume"))
    self.saved_at, self.saved_step = time.monotonic(), 0

  def restore(self, state: TrainState):
    """-> (state, best, progress) of the newest readable resume point, or (state, the initial best, None)."""
    best = selection.initial(self.rule, state)
    target = {"state": state.replace(frozen=None), "best": best}  # the frozen part never changes: not saved
    restored = checkpointing.restore_resume(self.resume, target)
    if restored is None:
      self.run.log.truncate(self.stage.name, 0)  # a run killed before its first resume point left records to redo
      return state, best, None
    tree, record = restored
    p = Progress.from_json(record)
    self.run.log.truncate(self.stage.name, p.epoch)  # drop records written after that checkpoint
    if not p.finished:
      tqdm.write(f"[{self.stage.name}] resuming at epoch {p.epoch}, batch {p.batch} (step {p.step})")
    p.finished |= p.epoch > self.stage.recipe.epochs
    self.saved_step = p.step
    return tree["state"].replace(frozen=state.frozen), tree["best"], p

  def due(self, step: int) -> bool:
    every = self.run.loop.checkpoint_every_steps
    due = bool(every) and step - self.saved_step >= every
    return distributed.agree(due or time.monotonic() - self.saved_at >= self.run.loop.checkpoint_every_seconds)

  def save(self, state: TrainState, best, p: Progress) -> None:
    """The best state (if it is not written yet; waits: on disk before the resume record says so), then the resume
    point: state, best and progress."""
    if p.best_written != p.best_epoch:
      meta = dict(self.run.meta, epoch=p.best_epoch, val_mse=p.best_val, selection=self.rule)
      checkpointing.save(self.best, p.best_epoch, nnx.state(selection.selected(best, state).model()), meta)
      self.best.wait_until_finished()
      p.best_written = p.best_epoch
    tree = {"state": state.replace(frozen=None), "best": best}
    checkpointing.save_resume(self.resume, p.step, tree, dataclasses.asdict(p))
    self.saved_at, self.saved_step = time.monotonic(), p.step

  def close(self) -> None:
    for mngr in (self.best, self.resume):
      mngr.wait_until_finished()
      mngr.close()
