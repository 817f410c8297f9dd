"""Train and eval steps in split/merge form, valid in NNX graph and tree mode.

The model is split once per stage into (segment-axis adapter params, other trainable params, batch stats,
frozen rest). Only the trainable groups get gradients and optimizer state, so the frozen backbone costs
neither. Stage 1, stage 2 and every method use these same two steps; only the filter and the model differ.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mola_jax import data, sharding
from mola_jax.models import Ctx, SegmentParam, predict
from mola_jax.models.adapters import segment_rows

TRAINABLE = {"pretrain": nnx.Param, "adapt": nnx.LoRAParam}


def split(model: nnx.Module, stage: str):
  """-> graphdef, (segment params, other trainable params), batch stats, frozen state."""
  graphdef, seg, train, stats, frozen = nnx.split(model, SegmentParam, TRAINABLE[stage], nnx.BatchStat, ...)
  return graphdef, (seg, train), stats, frozen


def init_state(model: nnx.Module, stage: str, tx: optax.GradientTransformation, key: jax.Array):
  """The one training state of a stage -> (graphdef, state, frozen): state = {"params": (segment params, other
  trainable params), "opt": tx's state of those, "stats": batch statistics, "key": raw PRNG key data}, which the
  train step donates and returns; `frozen` is the rest of the model, an argument of every step."""
  graphdef, params, stats, frozen = split(model, stage)
  state = {"params": params, "opt": tx.init(params), "stats": stats, "key": key}
  return graphdef, sharding.commit(state), sharding.commit(frozen)


def lr_schedule(lr: float, steps_per_epoch: int, decay: float = 0.5, decay_from: int = 3) -> optax.Schedule:
  """The full lr until epoch `decay_from`, which trains at lr * decay, each later epoch at `decay` times the one
  before: step -> lr. TSLib's `type1` at (0.5, 3) (docs/method.md §8), CycleNet's `type3` at (0.8, 5); decay 1.0
  keeps the lr constant."""
  return optax.exponential_decay(
    lr, transition_steps=steps_per_epoch, decay_rate=decay, transition_begin=(decay_from - 2) * steps_per_epoch,
    staircase=True,
  )  # fmt: skip


def make_tx(schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (beta 0.9/0.999, eps 1e-8, no weight decay) on `schedule`."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=schedule)


def segment_mse(pred: jax.Array, y: jax.Array, observed: jax.Array | None = None) -> jax.Array:
  """pred [B, K, S, D], y [B, K, S, D] -> [K]: each segment's MSE over batch, steps and channels; with `observed`
  (bool, y's shape) over the observed values only, so a filled-in target value never enters the loss."""
  if observed is None:
    return jnp.mean((pred - y) ** 2, axis=(0, 2, 3))
  sq = jnp.where(observed, (pred - y) ** 2, 0.0)  # selected, not multiplied: the filled value cannot leak
  return jnp.sum(sq, axis=(0, 2, 3)) / jnp.maximum(jnp.sum(observed, axis=(0, 2, 3)), 1)


def segment_weighted_l1(pred: jax.Array, y: jax.Array, observed: jax.Array | None, ids: jax.Array) -> jax.Array:
  """OLinear's loss per segment: pred, y [B, K, S, D] of the segments `ids` [K] -> [K], the mean over batch, steps
  and channels of |pred - y| (t + 1)^-1/2, t the step's place in the whole horizon (segment k holds kS .. kS + S - 1):
  near steps weigh more. With `observed`, over the observed values only."""
  s = pred.shape[2]
  t = ids.astype(jnp.float32)[:, None] * s + jnp.arange(s, dtype=jnp.float32)  # [K, S]
  err = jnp.abs(pred - y) * jax.lax.rsqrt(t + 1.0)[None, :, :, None]
  if observed is None:
    return jnp.mean(err, axis=(0, 2, 3))
  return jnp.sum(jnp.where(observed, err, 0.0), axis=(0, 2, 3)) / jnp.maximum(jnp.sum(observed, axis=(0, 2, 3)), 1)


LOSSES = ("mse", "weighted_l1")  # a stage recipe's loss: the field's MSE, or OLinear's step-weighted L1


def segment_losses(pred: jax.Array, batch: dict, ids: jax.Array, *, segments: int, target_only: bool, loss: str):
  """pred [B, K_a, S, D] of the segments `ids` (of `segments`) -> [K_a]: each one's training loss against the
  batch's truth [B, K S, D], on the scored channels and the observed values."""
  shape = (pred.shape[0], segments, -1, pred.shape[-1])
  pick = lambda a: None if a is None else a.reshape(shape)[:, ids]  # [B, K_a, S, D]: the computed segments
  pred, y, observed = scored({"y": pick(batch["y"]), "y_observed": pick(batch.get("y_observed"))}, pred, target_only)
  return segment_mse(pred, y, observed) if loss == "mse" else segment_weighted_l1(pred, y, observed, ids)


def scored(batch: dict, pred: jax.Array, target_only: bool, shape=None):
  """(pred, y, observed or None) as the loss and the scores read them: the target channel alone under MS
  (`target_only`), y and observed reshaped to `shape` (pred's: [B, K, S, D] in training)."""
  y, observed = batch["y"], batch.get("y_observed")
  if shape is not None:
    y = y.reshape(shape)
    observed = None if observed is None else observed.reshape(shape)
  if target_only:  # the target is the last channel (data/tables.py)
    pred, y = pred[..., -1:], y[..., -1:]
    observed = None if observed is None else observed[..., -1:]
  return pred, y, observed


def caster(compute_dtype: str | None):
  """None for float32 (the default path gets no extra op, so it stays bit-identical), else a function casting
  every floating leaf of a pytree to `compute_dtype` (e.g. "bfloat16"). Used inside the loss only: the master
  params, the optimizer state and the gradients stay float32 (the cast's transpose casts gradients back)."""
  if compute_dtype is None or jnp.dtype(compute_dtype) == jnp.float32:
    return None
  dtype = jnp.dtype(compute_dtype)
  return lambda tree: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def cast_inputs(cast, batch: dict) -> dict:
  """The model inputs in the compute dtype; the targets "y" stay float32 (the loss is taken in float32)."""
  return {k: v if k == "y" else cast(v) for k, v in batch.items()}


def hold_stopped(new, old, keep: jax.Array):
  """Put back the rows of segments that did not train (keep [K] False). A zero gradient would still move them
  through Adam's momentum; stopping is permanent, so restoring the old rows freezes them exactly."""

  def one(n, o):
    mask = keep.reshape((-1,) + (1,) * (n.ndim - 1))
    return jnp.where(mask, n, o)

  return jax.tree.map(one, new, old)


def split_groups(n: int, groups: int) -> list[slice]:
  """Positions 0 .. n - 1 in min(groups, n) contiguous groups of near-equal size."""
  groups = max(1, min(groups, n))
  bounds = [round(i * n / groups) for i in range(groups + 1)]
  return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def default_groups() -> int:
  """XLA:CPU runs each op of a step on one core and gets parallelism only from independent ops
  (docs/performance.md), so on a CPU the segments are computed as one group per core; one group on accelerators."""
  return len(os.sched_getaffinity(0)) if jax.default_backend() == "cpu" else 1


def train_step_fn(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  segments: int,
  share_prefix_dropout: bool,
  forward=predict,
  compute_dtype: str | None = None,
  groups: int | None = None,
  target_only: bool = False,
  loss: str = "mse",
):
  """The train step, unjitted: step(state, frozen, batch, (ids, active)) -> (state, loss), state = {params, opt,
  stats, key}.

  The step computes the segments `ids` (int32 [K_a], a subset of 0 .. segments - 1) and trains those whose
  `active` (bool [K_a]) is set (`training_segments` makes the pair): loss = sum over them of the segment MSE (a
  sum, as the official code: docs/method.md §6). Training passes the segments that have not early-stopped (padded
  to one of at most two sizes, `segment_buckets`), so a stopped segment costs nothing or little; the padding
  segments are computed, kept out of the loss, their rows held, and kept out of BatchNorm's running statistics.
  Dropout masks follow the segment ids (layers.keep_mask), so a segment draws the same masks whichever others
  run beside it. forward(model, batch, ctx) -> [B, K_a, S, D]: `predict` (one batched pass), or e.g.
  `predict_per_segment` (the official K passes) for benchmarks. compute_dtype: e.g. "bfloat16" runs the forward
  and backward pass in that dtype on float32 master params (see `caster`); None or "float32" is the plain step.
  target_only (data.features MS): the loss reads the target channel alone. A batch with "y_observed" (a series
  with filled values) leaves the filled target values out of the loss. loss: "mse" (segment_mse) or
  "weighted_l1" (segment_weighted_l1), summed over the trained segments either way."""
  cast = caster(compute_dtype)
  groups = default_groups() if groups is None else groups

  def loss_fn(params, stats, frozen, batch, key, ids, active):
    seg, train = params
    if cast is not None:
      seg, train, frozen, batch = cast(seg), cast(train), cast(frozen), cast_inputs(cast, batch)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw key data, as fit keeps it
      key = jax.random.wrap_key_data(key)
    ctx = Ctx(key=key, share_prefix_dropout=share_prefix_dropout)
    states = (seg, train, stats, frozen)
    pred, new_stats = train_forward(graphdef, states, batch, ctx, ids, groups, forward, active=active)
    if cast is not None:
      pred = pred.astype(jnp.float32)
      # running statistics keep their float32 dtype (and so the step its one compiled shape)
      new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, stats)
    per_segment = segment_losses(pred, batch, ids, segments=segments, target_only=target_only, loss=loss)
    return jnp.sum(jnp.where(active, per_segment, 0.0)), new_stats

  def step(state, frozen, batch, segs):
    ids, active = segs
    key, sub = jax.random.split(state["key"])
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], state["stats"], frozen, batch, sub, ids, active
    )
    updates, opt = tx.update(grads, state["opt"], state["params"])
    seg, train = optax.apply_updates(state["params"], updates)
    seg = hold_stopped(seg, state["params"][0], jnp.zeros(segments, bool).at[ids].set(active))
    return {"params": (seg, train), "opt": opt, "stats": stats, "key": key}, loss

  return step


def make_train_step(graphdef, tx, *, segments, share_prefix_dropout, layout=None, forward=predict,
                    compute_dtype=None, groups=None, target_only=False):  # fmt: skip
  """train_step_fn jitted alone (the state donated): step(state, frozen, batch, (ids, active)) -> (state, loss),
  one dispatch per step, for the benchmark and the tests (fit runs chunks of steps: make_train_chunk). Under a
  mesh (`layout`, else the active `sharding.use`) jitted with explicit in/out shardings (sharding.ShardedStep)."""
  step = train_step_fn(graphdef, tx, segments=segments, share_prefix_dropout=share_prefix_dropout, forward=forward,
                       compute_dtype=compute_dtype, groups=groups, target_only=target_only)  # fmt: skip
  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


def over_runs(fn, runs: int):
  """`fn` of one run, applied to arguments that carry a leading run axis R (several runs trained side by side:
  seeds in one program). vmap for R > 1; for R = 1 the axis is squeezed away inside the program, so a single run
  computes exactly its own step."""
  if runs > 1:
    return jax.vmap(fn)
  return lambda *args: jax.tree.map(lambda x: x[None], fn(*jax.tree.map(lambda x: x[0], args)))


def make_train_chunk(graphdef, tx, *, segments: int, seq_len: int, pred_len: int, runs: int = 1,
                     share_prefix_dropout: bool = False, forward=predict, compute_dtype=None, groups=None,
                     layout=None, target_only: bool = False, loss: str = "mse"):  # fmt: skip
  """C train steps of R runs as one jitted, donated lax.scan, each batch gathered on the device inside the body:
  chunk(state, frozen, series, idx, segs, valid, live) -> (state, losses [C, R]).

  state, frozen: the runs' train states and frozen rests stacked on a leading axis [R, ...]; series: the split's
  arrays (data.DeviceWindows.arrays); idx int32 [R, C, B]: each run's window indices of each step; segs:
  (ids int32 [R, K_a], active bool [R, K_a]); valid bool [C], a prefix: the steps before an epoch's end (a last,
  shorter chunk trains its first steps only; the others return loss 0), so every chunk has one shape and a stage
  one program per segment bucket; live bool [R]: a run that has finished is held (its state, optimizer state
  included, does not move).

  The steps run as a loop over the valid prefix, not as a scan whose body skips invalid steps by a conditional: a
  conditional passes the whole state through its branches, which XLA copies at every step (a kernel per state
  array on a GPU: 115 of stage 1's 305 kernels per step on the README config, docs/performance.md)."""
  step = train_step_fn(graphdef, tx, segments=segments, share_prefix_dropout=share_prefix_dropout, forward=forward,
                       compute_dtype=compute_dtype, groups=groups, target_only=target_only, loss=loss)  # fmt: skip

  def chunk(state, frozen, series, idx, segs, valid, live):
    def one(st, fr, i, sg, lv):  # one run, one step
      new, loss = step(st, fr, data.gather(series, i, seq_len=seq_len, pred_len=pred_len), sg)
      if runs > 1:  # a single run trains until it is done, so only side-by-side runs are ever held
        new, loss = jax.tree.map(lambda n, o: jnp.where(lv, n, o), new, st), jnp.where(lv, loss, 0.0)
      return new, loss

    def body(c, carry):
      st, losses = carry
      st, loss = over_runs(one, runs)(st, frozen, idx[:, c], segs, live)
      return st, losses.at[c].set(loss)

    losses = jnp.zeros((idx.shape[1], runs), jnp.float32)
    return jax.lax.fori_loop(0, jnp.sum(valid, dtype=jnp.int32), body, (state, losses))

  return sharding.jit(chunk, batch_argnum=None, donate_argnums=0, layout=layout, lead=1)


def segment_buckets(segments: int, multiple: int = 1) -> tuple[int, ...]:
  """The sizes a stage-2 step computes its active segments in: all K, and half of them (rounded up to a multiple
  of `multiple`, the CPU's groups): at most two programs per stage whatever K is; a step pads the active segments
  with stopped ones to the smaller size that holds them, so it computes at most twice what it needs."""
  half = -(-segments // 2)  # ceil(K / 2)
  half = min(segments, -(-half // multiple) * multiple)
  return tuple(sorted({half, segments}))


def train_forward(graphdef, states, batch, ctx: Ctx, ids, groups: int, forward=predict, active=None):
  """The training forecast [B, K_a, S, D] of the segments `ids` in `groups` independent passes over groups of
  segments, and the batch statistics they leave (`active` [K_a]: the segments whose statistics count; padding
  segments are left out of BatchNorm's running averages). states = (segment params, other trainable, stats,
  frozen)."""
  seg, train, stats, frozen = states
  preds = []
  for part in split_groups(ids.shape[0], groups):
    ctx = dataclasses.replace(ctx, active=None if active is None else active[part])
    # copy=True: fresh Variables at this trace level, so that a forward pass may update its BatchStats in place
    # (a BatchNorm in training); merging the jit-level Variables themselves makes that a TraceContextError.
    # A group starts from the statistics the group before it left: the same sequential updates as one pass.
    model = nnx.merge(graphdef, segment_rows(seg, ids[part]), train, stats, frozen, copy=True)
    part_ctx = dataclasses.replace(ctx, segments=part.stop - part.start, segment_ids=ids[part])
    preds.append(forward(model, batch, part_ctx))  # [B, K_g, S, D]
    stats = nnx.state(model, nnx.BatchStat)
  return jnp.concatenate(preds, axis=1), stats


def training_segments(active, skip_stopped: bool = True, sizes: tuple[int, ...] | None = None):
  """The train step's (ids, active) for a stopper's mask `active` bool [K] (or [R, K] for R runs side by side):
  the active segments, padded with stopped ones (computed, kept out of the loss) to the smallest of `sizes`
  (segment_buckets; default: exactly the active ones) that holds the most active of any run, or
  (skip_stopped=False) every segment. [True] * K: every segment trains."""
  active = np.asarray(active, bool)
  runs = active.reshape(-1, active.shape[-1])  # [R, K]
  k = runs.shape[1]
  if not skip_stopped:
    ids, mask = np.tile(np.arange(k), (len(runs), 1)), runs
  else:
    most = int(runs.sum(axis=1).max())
    fits = [n for n in sorted(sizes) if n >= most] if sizes else [most]
    size = max(fits[0] if fits else k, 1)  # a run with nothing left to train still computes one (it is held)
    pad = lambda r: np.flatnonzero(~r)[: size - int(r.sum())]
    ids = np.stack([np.sort(np.concatenate([np.flatnonzero(r)[:size], pad(r)])) for r in runs])
    mask = np.take_along_axis(runs, ids, axis=1)
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
  return (ids, mask) if active.ndim == 2 else (ids[0], mask[0])


def eval_step_fn(graphdef, *, segments: int, forward=predict, compute_dtype=None, groups=None,
                 target_only: bool = False):  # fmt: skip
  """The eval step, unjitted: step(states, batch) -> {"sq": [T], "abs": [T], "count": []}, the sums of squared
  and absolute errors per forecast step over the batch's real (mask == True) windows and the scored channels
  (all, or the target alone: target_only), and the windows' count; a batch with "y_observed" also sums
  "scored" [T], the observed values per step, and leaves filled values out. states = (segment params, *the rest of
  the model's state), the split `eval_states` makes. Padded rows and filled values are selected out, not
  multiplied by 0, so a non-finite value there cannot leak. Errors accumulate in float32."""
  cast = caster(compute_dtype)
  groups = default_groups() if groups is None else groups

  def step(states, batch):
    pred = eval_forward(graphdef, states, batch, segments=segments, groups=groups, forward=forward, cast=cast)
    pred, y, observed = scored(batch, pred, target_only)
    err = pred - y  # [B, T, D']
    real = batch["mask"][:, None, None]  # [B, 1, 1]
    if observed is not None:
      real = real & observed  # [B, T, D']
    sums = {
      "sq": jnp.sum(jnp.where(real, err**2, 0.0), axis=(0, 2)),  # [T]
      "abs": jnp.sum(jnp.where(real, jnp.abs(err), 0.0), axis=(0, 2)),  # [T]
      "count": jnp.sum(batch["mask"]),
    }
    if observed is not None:
      sums["scored"] = jnp.sum(real, axis=(0, 2)).astype(jnp.float32)  # [T]
    return sums

  return step


@functools.lru_cache(maxsize=32)
def make_eval_step(graphdef, *, segments: int, layout=None, forward=predict, compute_dtype=None, groups=None,
                   target_only=False):  # fmt: skip
  """eval_step_fn jitted alone: step(acc, states, batch) -> acc + the batch's sums (acc donated; steps.empty_acc
  to start), one dispatch per batch, for the benchmark and the tests (evaluation runs chunks: make_eval_chunk)."""
  one = eval_step_fn(graphdef, segments=segments, forward=forward, compute_dtype=compute_dtype, groups=groups,
                     target_only=target_only)  # fmt: skip
  step = lambda acc, states, batch: jax.tree.map(jnp.add, acc, one(states, batch))
  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


EVAL_CHUNK = 8  # eval batches per call: every split is scored by one program, its last call padded


@functools.lru_cache(maxsize=32)
def make_eval_chunk(graphdef, *, segments: int, seq_len: int, pred_len: int, runs: int = 1, forward=predict,
                    compute_dtype=None, groups=None, layout=None, target_only=False):  # fmt: skip
  """The eval step of a model structure as an eval chunk (`eval_chunk`). Validation and the test pass of a stage
  share this one program (cached per model structure and settings)."""
  one = eval_step_fn(graphdef, segments=segments, forward=forward, compute_dtype=compute_dtype, groups=groups,
                     target_only=target_only)  # fmt: skip
  return eval_chunk(one, seq_len=seq_len, pred_len=pred_len, runs=runs, layout=layout)


def eval_chunk(one, *, seq_len: int, pred_len: int, runs: int = 1, layout=None):
  """EVAL_CHUNK eval batches of R runs as one jitted lax.scan, gathered on the device inside the body:
  chunk(states, series, idx, mask, valid) -> per-batch sums {"sq": [E, R, T], "abs": [E, R, T], "count": [E, R]}.
  one(states, batch) -> a batch's sums (eval_step_fn); states: the runs' eval states stacked [R, ...]; series: the
  split's arrays (data.DeviceWindows.arrays); idx int32 [R, E, B], mask bool [R, E, B]: each run's windows,
  padded and masked; valid bool [E]: batches beyond the split's end are skipped by a conditional."""

  def chunk(states, series, idx, mask, valid):
    batch = lambda i, m: data.gather(series, i, m, seq_len=seq_len, pred_len=pred_len)

    def zeros():
      out = {"sq": jnp.zeros((runs, pred_len)), "abs": jnp.zeros((runs, pred_len)), "count": jnp.zeros(runs, jnp.int32)}
      return out | ({"scored": jnp.zeros((runs, pred_len))} if "observed" in series else {})

    def body(_, e):
      do = lambda: over_runs(lambda st, i, m: one(st, batch(i, m)), runs)(states, idx[:, e], mask[:, e])
      return None, jax.lax.cond(valid[e], do, zeros)

    return jax.lax.scan(body, None, jnp.arange(idx.shape[1]))[1]

  return sharding.jit(chunk, batch_argnum=None, layout=layout, lead=1)


def eval_forward(graphdef, states, batch, *, segments: int, groups: int, forward=predict, cast=None) -> jax.Array:
  """The eval-mode forecast [B, T, D] of every window of `batch` (float32), the K segments in `groups`
  independent passes (as in training)."""
  if cast is not None:
    states, batch = cast(states), cast_inputs(cast, batch)
  seg, *rest = states
  preds = []
  for part in split_groups(segments, groups):
    model = nnx.merge(graphdef, segment_rows(seg, part), *rest)
    ids = jnp.arange(part.start, part.stop, dtype=jnp.int32)
    preds.append(forward(model, batch, Ctx(segments=part.stop - part.start, segment_ids=ids)))  # [B, K_g, S, D]
  pred = jnp.concatenate(preds, axis=1).astype(jnp.float32)  # [B, K, S, D]
  return pred.reshape(pred.shape[0], -1, pred.shape[-1])


@functools.lru_cache(maxsize=32)
def make_predict_step(graphdef, *, segments: int, compute_dtype: str | None = None, groups: int | None = None):
  """step(states, batch) -> forecast [B, T, D] of every window of the batch (the eval step's forward pass)."""
  cast, groups = caster(compute_dtype), default_groups() if groups is None else groups
  return jax.jit(functools.partial(eval_forward, graphdef, segments=segments, groups=groups, cast=cast))


def eval_states(model: nnx.Module, stage: str = "adapt") -> tuple[nnx.GraphDef, tuple]:
  """-> (graphdef, (segment params, other trainable params, batch stats, frozen rest)): a model split as the eval
  step takes it, the way the training loop splits it (so validation and the test pass share one program)."""
  graphdef, params, stats, frozen = split(model, stage)
  return graphdef, (*params, stats, frozen)


def stack(trees: list):
  """Trees of the same structure -> one tree whose arrays carry a leading run axis [R, ...]."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, r: int):
  """Run r's slice of a stacked tree."""
  return jax.tree.map(lambda x: x[r], tree)


def empty_acc(horizon: int) -> dict:
  return {"sq": jnp.zeros(horizon), "abs": jnp.zeros(horizon), "count": jnp.zeros((), jnp.int32)}
