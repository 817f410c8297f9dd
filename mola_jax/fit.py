"""One stage of training: fit a model's trainable group (the backbone in stage 1, the adapters in stage 2) with
per-segment early stopping on validation, resume checkpoints, and the stage's selection rule; for one run, or for
R runs side by side in one program (seeds in one program: the same data and shapes, their own seeds).

    summaries = fit(models, stage, series=series, loops=loops, evaluations=evaluations, workdirs=workdirs,
                    metas=metas, logs=logs)

Afterwards each model holds its selected state. An epoch runs on the device in chunks of `loop.chunk_steps` steps,
each one jitted, donated lax.scan that gathers its batches on the device (steps.make_train_chunk): the host
dispatches one program per chunk and reads the chunk's losses back one chunk later (the NaN guard, the progress
bar and the epoch's mean loss), so it never waits for the device in between. Resume points fall on chunk ends.
Validation runs as a scan too (evaluation.validate). The best state so far lives on the device
(selection.py) and is written when a run's stage ends and at resume points, never per improvement.

The pieces: stopping.SegmentStopper (when a segment stops), selection (which state a stage keeps), evaluation
(validation), metrics (metrics.jsonl), checkpointing (best-state and resume checkpoints), and `Progress`, a run's
record of where its loop is, saved with every resume checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from mola_jax import checkpointing, data, evaluation, metrics, plan, runtime, selection, sharding, steps
from mola_jax.errors import DataError, Diverged
from mola_jax.models import adapters
from mola_jax.stopping import SegmentStopper


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


@dataclasses.dataclass
class Run:
  """One run of the stage: its own seed, workdir, log, checkpoints, stopper and progress."""

  loop: plan.Loop
  evaluation: plan.Evaluation
  workdir: object
  meta: dict
  log: metrics.MetricsLog
  best_mngr: object
  resume_mngr: object
  progress: Progress = None
  stopper: SegmentStopper = None
  best_written: int = -1  # the best epoch whose state is in the best-state checkpoint

  @property
  def live(self) -> bool:
    return not self.progress.finished


def fit(models, stage: plan.Stage, *, series, loops, evaluations, workdirs, metas, logs) -> list[dict]:
  """Train `models` (one per run, the same structure) for `stage` on windows of `stage.window` steps, resuming from
  each run's resume checkpoint if there is one. Returns each run's summary (best epoch, its validation MSE,
  epochs, seconds)."""
  group = StageLoop(models, stage, series=series, loops=loops, evaluations=evaluations, workdirs=workdirs,
                    metas=metas, logs=logs)  # fmt: skip
  group.begin()
  while any(run.live for run in group.runs):
    group.train_epoch()
    group.end_epoch()
  group.close(models)
  return [run.progress.summary() for run in group.runs]


class StageLoop:
  """Everything one stage's epochs share, built once: the split windows on the device, the compiled programs, the
  runs' stacked training state and best state, and each run's checkpoints, stopper and progress."""

  def __init__(self, models, stage: plan.Stage, *, series, loops, evaluations, workdirs, metas, logs):
    self.stage, self.recipe, self.loop, self.evaluation = stage, stage.recipe, loops[0], evaluations[0]
    seq_len, r = self.evaluation.seq_len, len(models)
    train_src = data.window_source(series, "train", seq_len, stage.window)
    self.train_windows = data.DeviceWindows(train_src)
    self.val_windows = data.DeviceWindows(data.window_source(series, "val", seq_len, stage.window))
    self.steps_per_epoch = data.num_train_batches(train_src, self.recipe.batch_size)
    if self.steps_per_epoch == 0:
      raise DataError(
        f"{len(train_src)} training windows are fewer than one batch of {self.recipe.batch_size}; "
        f"lower --config.{stage.name}.batch_size or use a longer series"
      )
    recipe = self.recipe
    self.schedule = steps.lr_schedule(recipe.lr, self.steps_per_epoch, recipe.lr_decay, recipe.lr_decay_from)
    self._init_state(models, steps.make_tx(self.schedule), loops)
    self._programs(r)
    self.runs = [self._run(loops[i], evaluations[i], workdirs[i], metas[i], logs[i]) for i in range(r)]
    if stage.name == plan.ADAPT and self.recipe.selection == "per_segment":
      self.selection = selection.PerSegment(self.graphdef, r)
    else:
      self.selection = selection.AnyImproved(self.graphdef)
    self.best = self.selection.initial(self.state, self.frozen)
    profile = self.loop.profile_steps if sharding.is_lead() else 0
    self.profiler = runtime.StepProfiler(workdirs[0] / "profile" / stage.name, profile)

  def _init_state(self, models, tx, loops) -> None:
    """Each run's state (its own rng: raw key data, an ordinary array in the resume checkpoint), stacked."""
    tag = 1 if self.stage.name == plan.PRETRAIN else 2
    split = [
      steps.init_state(m, self.stage.name, tx, jax.random.key_data(jax.random.fold_in(jax.random.key(lp.seed), tag)))
      for m, lp in zip(models, loops, strict=True)
    ]
    self.graphdef = split[0][0]
    self.state = sharding.commit(steps.stack([s for _, s, _ in split]))
    self.frozen = sharding.commit(steps.stack([f for _, _, f in split]))
    self.tx = tx

  def _programs(self, runs: int) -> None:
    """The stage's train chunk and eval chunk, and the segment sizes a step computes (at most two programs)."""
    st, windows, dtype = self.stage, self.train_windows, self.loop.compute_dtype
    share = st.name == plan.ADAPT and self.recipe.share_prefix_dropout
    self.chunk = steps.make_train_chunk(
      self.graphdef, self.tx, segments=st.segments, seq_len=windows.seq_len, pred_len=windows.pred_len, runs=runs,
      share_prefix_dropout=share, compute_dtype=dtype, target_only=self.loop.target_only, loss=self.recipe.loss,
    )  # fmt: skip
    self.eval_chunk = steps.make_eval_chunk(
      self.graphdef, segments=st.segments, seq_len=windows.seq_len, pred_len=windows.pred_len, runs=runs,
      compute_dtype=dtype, target_only=self.evaluation.target_only,
    )  # fmt: skip
    self.sizes = steps.segment_buckets(st.segments, steps.default_groups())
    self.bound = {}  # segment bucket -> the chunk program bound to its signature (_program)
    self.skip_stopped = st.name != plan.ADAPT or self.recipe.skip_stopped

  def _run(self, loop, ev, workdir, meta, log) -> Run:
    best = checkpointing.manager(checkpointing.stage_dir(workdir, self.stage.name))
    resume = checkpointing.resume_manager(checkpointing.stage_dir(workdir, self.stage.name + "_resume"))
    return Run(loop, ev, workdir, meta, log, best, resume)

  # --------------------------------------------------------------------------------------------------------------

  def validate(self, epoch: int) -> list[dict]:
    """Every run's validation score after `epoch` (0: before training), under its evaluation's protocol."""
    states = (*self.state["params"], self.state["stats"], self.frozen)
    return evaluation.validate(
      self.eval_chunk, states, self.val_windows, [run.evaluation for run in self.runs], self.stage.segments,
      batch_size=self.recipe.batch_size, epoch=epoch,
    )  # fmt: skip

  def begin(self) -> None:
    """Each run's newest resume checkpoint (all at one step: they are saved together), or a fresh start."""
    restored = checkpointing.restore_runs([run.resume_mngr for run in self.runs], self._resume_target())
    name = self.stage.name
    if restored is None:
      for run in self.runs:
        run.log.truncate(name, 0)  # a run killed before its first resume checkpoint left records to redo
      self._fresh()
    else:
      states, records = restored
      self.state, self.best = steps.stack([s["state"] for s in states]), steps.stack([s["best"] for s in states])
      for run, record in zip(self.runs, records, strict=True):
        run.progress = Progress.from_json(record)
        run.log.truncate(name, run.progress.epoch)  # drop records written after that checkpoint
        run.best_written = record.get("best_written", -1)
      p = self.runs[0].progress
      if not p.finished:
        tqdm.write(f"[{name}] resuming at epoch {p.epoch}, batch {p.batch} (step {p.step})")
    for run in self.runs:
      run.progress.finished |= run.progress.epoch > self.recipe.epochs
      run.stopper = SegmentStopper.from_dict(run.progress.stopper)
    self.saved_at, self.saved_step = time.monotonic(), self._step()

  def _resume_target(self) -> list[dict]:
    return [{"state": steps.unstack(self.state, i), "best": steps.unstack(self.best, i)} for i in range(len(self.runs))]

  def _fresh(self) -> None:
    """A first start. Stage 2 first scores the B = 0 state: the untrained adapters reproduce the frozen backbone,
    so this is the bypassed-adapter baseline, and the state to fall back to if no segment ever improves."""
    k, patience = self.stage.segments, self.recipe.patience
    if self.stage.name != plan.ADAPT:
      for run in self.runs:
        run.progress = Progress(stopper=SegmentStopper(np.full(k, np.inf), patience).to_dict())
      return
    for run, val0 in zip(self.runs, self.validate(0), strict=True):
      run.log.write(stage=plan.ADAPT, epoch=0, val_mse=val0["mse"], val_mse_per_segment=val0["per_segment_mse"])
      tqdm.write(f"[{plan.ADAPT}] before training: val mse {val0['mse']:.4f} per segment "
                 f"{np.round(val0['per_segment_mse'], 4).tolist()}")  # fmt: skip
      run.progress = Progress(best_val=val0["mse"], stopper=SegmentStopper(val0["per_segment_mse"], patience).to_dict())

  # --------------------------------------------------------------------------------------------------------------

  def train_epoch(self) -> None:
    """The epoch's remaining steps in chunks; a resume point at the chunk ends where one is due."""
    live = [run for run in self.runs if run.live]
    lead, c = live[0].progress, self.loop.chunk_steps
    epoch, self.t0 = lead.epoch, time.perf_counter()
    b = self.recipe.batch_size
    orders = np.stack([data.train_order(self.train_windows, b, seed=run.loop.seed, epoch=epoch) for run in self.runs])
    active = np.stack([run.stopper.active & run.live for run in self.runs])  # [R, K]
    segs = steps.training_segments(active, self.skip_stopped, self.sizes)
    alive = np.asarray([run.live for run in self.runs])
    bar = tqdm(total=self.steps_per_epoch, initial=lead.batch, leave=False, disable=None, file=sys.stderr,
               desc=f"[{self.stage.name}] epoch {epoch}/{self.recipe.epochs}")  # fmt: skip
    pending = []
    for start in range(lead.batch, self.steps_per_epoch, c):
      n = min(c, self.steps_per_epoch - start)
      idx = np.zeros((len(self.runs), c, b), np.int32)
      idx[:, :n] = orders[:, start : start + n]
      valid = np.arange(c) < n
      args = (self.state, self.frozen, self.train_windows.arrays,
              *sharding.replicate((idx, segs, valid, alive)))  # fmt: skip
      self.state, losses = self._program(args)(*args)
      for run in live:
        run.progress.batch, run.progress.step = start + n, run.progress.step + n
      pending.append((losses, n))
      self._fold(pending[:-1], live)  # the chunk before: done by now, or nearly; the host never waits long
      del pending[:-1]
      bar.update(n)
      self.profiler.after_step(lead.step, self.state)
      if lead.batch < self.steps_per_epoch and self._due():
        self._fold(pending, live)
        pending.clear()
        self._save_resume()
    bar.close()
    self.profiler.stop(self.state)
    self._fold(pending, live)

  def _program(self, args):
    """The chunk program for these arguments, bound once per stage and segment bucket (the host's work per chunk
    is then the index arrays and jax's own dispatch)."""
    size = args[4][0].shape[-1]  # segs: (ids [R, K_a], active [R, K_a])
    if size not in self.bound:
      self.bound[size] = sharding.bind(self.chunk, *args)
    return self.bound[size]

  def _due(self) -> bool:
    """A resume point here (a chunk's or an epoch's end): checkpoint_every_steps steps, or (by process 0's clock,
    agreed by every process: the save is collective) checkpoint_every_seconds, since the last one."""
    every, step = self.loop.checkpoint_every_steps, self._step()
    due = bool(every) and step - self.saved_step >= every
    return sharding.agree(due or time.monotonic() - self.saved_at >= self.loop.checkpoint_every_seconds)

  def _step(self) -> int:
    """The group's step: the live runs' (a run that is done stays where it ended)."""
    return max(run.progress.step for run in self.runs)

  def _fold(self, pending: list, live: list) -> None:
    """Move device losses ([C, R] per chunk, `n` real steps) into the runs' records (one host read); stop on a
    non-finite one, before anything computed from it is saved."""
    for losses, n in pending:
      values = np.asarray(sharding.fetch(losses), np.float64)[:n]  # [n, R]
      for run in live:
        i = self.runs.index(run)
        bad = np.flatnonzero(~np.isfinite(values[:, i]))
        if bad.size:
          for other in self.runs:  # the checkpoints written so far are complete before the run stops
            other.best_mngr.wait_until_finished()
            other.resume_mngr.wait_until_finished()
          step = run.progress.step - n + int(bad[0]) + 1
          raise Diverged(
            f"[{self.stage.name}] non-finite training loss at step {step} (epoch {run.progress.epoch}) of "
            f"{run.workdir}; the last good checkpoints are kept; lower --config.{self.stage.name}.lr"
          )
        run.progress.loss_sum += float(values[:, i].sum())
        run.progress.loss_count += n

  # --------------------------------------------------------------------------------------------------------------

  def end_epoch(self) -> None:
    """Validation, stopping, selection and the epoch's record of every live run; a run that is done writes its
    selected state; a resume point if one is due."""
    vals, live = self.validate(self.runs[0].progress.epoch), [run for run in self.runs if run.live]
    improved = np.zeros((len(self.runs), self.stage.segments), bool)
    for i, (run, val) in enumerate(zip(self.runs, vals, strict=True)):
      if run.live:
        self._record(run, val)
        improved[i] = run.stopper.improved
    self.best = self.selection.update(self.best, self.state, improved)
    done = [run for run in live if run.progress.finished]
    for run in done:
      self._write_best(run)
    if done or self._due():
      self._save_resume()

  def _record(self, run: Run, val: dict) -> None:
    """One run's epoch: its stopper, selection record, metrics.jsonl line and TensorBoard, and the next epoch."""
    p, name, k = run.progress, self.stage.name, self.stage.segments
    epoch = p.epoch
    lr = float(self.schedule((epoch - 1) * self.steps_per_epoch))  # what the epoch's steps trained with
    train_loss = p.loss_sum / max(p.loss_count, 1)
    active = int(run.stopper.active.sum())  # during this epoch
    improved = run.stopper.update(np.asarray(val["per_segment_mse"]))
    self.selection.record(p, epoch, run.stopper, val)
    seconds = time.perf_counter() - self.t0
    p.epoch_seconds.append(seconds)
    run.log.write(stage=name, epoch=epoch, train_loss=train_loss, val_mse=val["mse"], val_mae=val["mae"],
                  val_mse_per_segment=val["per_segment_mse"], lr=lr, active_segments=active, improved=improved,
                  seconds=seconds)  # fmt: skip
    if name == plan.ADAPT:
      run.log.mixtures(name, epoch, sharding.fetch(self._mixtures(self.runs.index(run))))
    note = f" active {int(run.stopper.active.sum())}/{k}" if k > 1 else ""
    tqdm.write(f"[{name}] epoch {epoch}/{self.recipe.epochs}  train {train_loss:.4f}  val mse {val['mse']:.4f} "
               f"mae {val['mae']:.4f}  lr {lr:.2e}  {seconds:.1f}s{' *' if improved else ''}{note}")  # fmt: skip
    p.epoch, p.batch, p.loss_sum, p.loss_count = epoch + 1, 0, 0.0, 0
    p.finished = epoch == self.recipe.epochs or not run.stopper.active.any()
    p.stopper = run.stopper.to_dict()

  def _mixtures(self, i: int) -> dict:
    from flax import nnx

    st = steps.unstack({"state": self.state, "frozen": self.frozen}, i)
    return adapters.mixture_weights(
      nnx.merge(self.graphdef, *st["state"]["params"], st["state"]["stats"], st["frozen"])
    )

  def _selected(self, i: int):
    """Run i's selected model state (nnx.State), from the device."""
    st = steps.unstack({"best": self.best, "state": self.state, "frozen": self.frozen}, i)
    return self.selection.model_state(st["best"], st["state"], st["frozen"])

  def _write_best(self, run: Run) -> None:
    """Run's selected state to its best-state checkpoint, if it is not there already (waits: the stage ends)."""
    p = run.progress
    if run.best_written == p.best_epoch:
      return
    meta = dict(run.meta, epoch=p.best_epoch, val_mse=p.best_val, selection=self.selection.name)
    checkpointing.save(run.best_mngr, p.best_epoch, self._selected(self.runs.index(run)), meta)
    run.best_mngr.wait_until_finished()  # on disk before the resume record says so
    run.best_written = p.best_epoch

  def _save_resume(self) -> None:
    """Every run's state, best state and progress, under one step (the group's: a run that is done is saved
    with the others, so a rerun finds them all at one step). A live run's best state is written too, as the
    fallback of a damaged newest."""
    step = self._step()
    for i, run in enumerate(self.runs):
      if run.live:
        self._write_best(run)
      record = dataclasses.asdict(run.progress) | {"best_written": run.best_written}
      tree = {"state": steps.unstack(self.state, i), "best": steps.unstack(self.best, i)}
      checkpointing.save_resume(run.resume_mngr, step, tree, record)
    self.saved_at, self.saved_step = time.monotonic(), step

  def close(self, models) -> None:
    """Wait for the last writes and leave each run's selected state in its model."""
    for i, (run, model) in enumerate(zip(self.runs, models, strict=True)):
      run.resume_mngr.wait_until_finished()
      run.resume_mngr.close()
      run.best_mngr.close()
      self.selection.into(model, self._selected(i))
