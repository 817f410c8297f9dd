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

from mola_jax import sharding
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


def lr_schedule(lr: float, steps_per_epoch: int, decay: float = 0.5) -> optax.Schedule:
  """TSLib's `type1` rule at decay 0.5: full lr for epochs 1-2, then multiplied by `decay` every epoch
  (docs/method.md §8); decay 1.0 keeps the lr constant: step -> lr."""
  return optax.exponential_decay(
    lr, transition_steps=steps_per_epoch, decay_rate=decay, transition_begin=steps_per_epoch, staircase=True
  )


def make_tx(schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam (beta 0.9/0.999, eps 1e-8, no weight decay) on `schedule`."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=schedule)


def segment_mse(pred: jax.Array, y: jax.Array) -> jax.Array:
  """pred [B, K, S, D], y [B, K, S, D] -> [K]: each segment's MSE over batch, steps and channels."""
  return jnp.mean((pred - y) ** 2, axis=(0, 2, 3))


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


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  segments: int,
  share_prefix_dropout: bool,
  layout: sharding.Layout | None = None,
  forward=predict,
  compute_dtype: str | None = None,
  groups: int | None = None,
):
  """step(state, frozen, batch, (ids, active)) -> (state, loss). state = {params, opt, stats, key} is donated.

  The step computes the segments `ids` (int32 [K_a], a subset of 0 .. segments - 1) and trains those whose
  `active` (bool [K_a]) is set (`training_segments` makes the pair): loss = sum over them of the segment MSE (a
  sum, as the official code: docs/method.md §6). Training passes the segments that have not early-stopped as
  `ids`, so a stopped segment costs nothing (a step compiles once per number of active segments: at most K
  programs a run); `ids` = all segments with
  `active` = the stopper's mask computes every segment and trains the active ones (the same numbers, to float
  rounding, for models without batch statistics). Dropout masks follow the segment ids (layers.keep_mask).
  Under a mesh (`layout`, else the active `sharding.use`) the step is jitted with explicit in/out shardings
  (sharding.ShardedStep); without one it is the plain jax.jit.
  forward(model, batch, ctx) -> [B, K_a, S, D]: `predict` (one batched pass), or e.g. `predict_per_segment` (the
  official K passes) for benchmarks. compute_dtype: e.g. "bfloat16" runs the forward and backward pass in that
  dtype on float32 master params (see `caster`); None or "float32" is the plain float32 step."""
  cast = caster(compute_dtype)
  groups = default_groups() if groups is None else groups

  def loss_fn(params, stats, frozen, batch, key, ids, active):
    seg, train = params
    if cast is not None:
      seg, train, frozen, batch = cast(seg), cast(train), cast(frozen), cast_inputs(cast, batch)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # raw key data, as fit keeps it
      key = jax.random.wrap_key_data(key)
    ctx = Ctx(key=key, share_prefix_dropout=share_prefix_dropout)
    pred, new_stats = train_forward(graphdef, (seg, train, stats, frozen), batch, ctx, ids, groups, forward)
    if cast is not None:
      pred = pred.astype(jnp.float32)
      # running statistics keep their float32 dtype (and so the step its one compiled shape)
      new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, stats)
    y = batch["y"].reshape(pred.shape[0], segments, -1, pred.shape[-1])[:, ids]  # [B, K_a, S, D]
    return jnp.sum(jnp.where(active, segment_mse(pred, y), 0.0)), new_stats

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

  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


def train_forward(graphdef, states, batch, ctx: Ctx, ids, groups: int, forward=predict):
  """The training forecast [B, K_a, S, D] of the segments `ids` in `groups` independent passes over groups of
  segments, and the batch statistics they leave. states = (segment params, other trainable, stats, frozen)."""
  seg, train, stats, frozen = states
  preds = []
  for part in split_groups(ids.shape[0], groups):
    # copy=True: fresh Variables at this trace level, so that a forward pass may update its BatchStats in place
    # (a BatchNorm in training); merging the jit-level Variables themselves makes that a TraceContextError.
    # A group starts from the statistics the group before it left: the same sequential updates as one pass.
    model = nnx.merge(graphdef, segment_rows(seg, ids[part]), train, stats, frozen, copy=True)
    part_ctx = dataclasses.replace(ctx, segments=part.stop - part.start, segment_ids=ids[part])
    preds.append(forward(model, batch, part_ctx))  # [B, K_g, S, D]
    stats = nnx.state(model, nnx.BatchStat)
  return jnp.concatenate(preds, axis=1), stats


def training_segments(active, skip_stopped: bool = True, multiple: int = 1) -> tuple[jax.Array, jax.Array]:
  """The train step's (ids, active) for a stopper's mask `active` bool [K]: the active segments, padded with
  stopped ones (computed, kept out of the loss) to a multiple of `multiple`, or (skip_stopped=False) every
  segment. [True] * K: every segment trains.

  multiple = the step's `groups` on a CPU: a pass over 3 of 4 segments in 2 groups takes as long as over all 4
  (the longer group sets the pace), so it reuses the 4-segment program instead of compiling one more."""
  active = np.asarray(active, bool)
  if not skip_stopped:
    return jnp.arange(len(active), dtype=jnp.int32), jnp.asarray(active)
  n = int(active.sum())
  pad = min(-n % multiple, len(active) - n) if n else 0
  ids = np.sort(np.concatenate([np.flatnonzero(active), np.flatnonzero(~active)[:pad]]))
  return jnp.asarray(ids, jnp.int32), jnp.asarray(active[ids])


@functools.lru_cache(maxsize=32)
def make_eval_step(
  graphdef,
  *,
  segments: int,
  layout: sharding.Layout | None = None,
  forward=predict,
  compute_dtype: str | None = None,
  groups: int | None = None,
):
  """step(acc, states, batch) -> acc: sums of squared and absolute errors per forecast step over the real
  (mask == True) windows and all channels, plus the window count. states = (segment params, *the rest of the
  model's state), the split `eval_states` makes. Accumulating on device means one host read per evaluation, not
  one per batch. Sharded under a mesh as make_train_step; `forward`, `compute_dtype` and `groups` as there (the
  errors are accumulated in float32 either way). One step per model structure and settings: validation and the
  test pass of a run share one compiled program.
  Padded rows (mask False) are selected out, not multiplied by 0, so a non-finite value there cannot leak."""
  cast = caster(compute_dtype)
  groups = default_groups() if groups is None else groups

  def step(acc, states, batch):
    pred = eval_forward(graphdef, states, batch, segments=segments, groups=groups, forward=forward, cast=cast)
    err = pred - batch["y"]  # [B, T, D]
    real = batch["mask"][:, None, None]  # [B, 1, 1]
    return {
      "sq": acc["sq"] + jnp.sum(jnp.where(real, err**2, 0.0), axis=(0, 2)),  # [T]
      "abs": acc["abs"] + jnp.sum(jnp.where(real, jnp.abs(err), 0.0), axis=(0, 2)),  # [T]
      "count": acc["count"] + jnp.sum(batch["mask"]),
    }

  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


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


def empty_acc(horizon: int) -> dict:
  return {"sq": jnp.zeros(horizon), "abs": jnp.zeros(horizon), "count": jnp.zeros((), jnp.int32)}
