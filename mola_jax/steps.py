"""Train and eval steps in split/merge form, valid in NNX graph and tree mode.

The model is split once per stage into (segment-axis adapter params, other trainable params, batch stats,
frozen rest). Only the trainable groups get gradients and optimizer state, so the frozen backbone costs
neither. Stage 1, stage 2 and every method use these same two steps; only the filter and the model differ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mola_jax import sharding
from mola_jax.models import Ctx, SegmentParam, predict

TRAINABLE = {"pretrain": nnx.Param, "adapt": nnx.LoRAParam}


def split(model: nnx.Module, stage: str):
  """-> graphdef, (segment params, other trainable params), batch stats, frozen state."""
  graphdef, seg, train, stats, frozen = nnx.split(model, SegmentParam, TRAINABLE[stage], nnx.BatchStat, ...)
  return graphdef, (seg, train), stats, frozen


def make_tx(lr: float, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with TSLib's `type1` rule: full lr for epochs 1-2, then halved every epoch (method.md §8).
  inject_hyperparams keeps the current lr readable from the optimizer state for logging."""
  schedule = optax.exponential_decay(lr, transition_steps=steps_per_epoch, decay_rate=0.5,
                                     transition_begin=steps_per_epoch, staircase=True)
  return optax.inject_hyperparams(optax.adam)(learning_rate=schedule)


def current_lr(opt_state) -> jax.Array:
  return opt_state.hyperparams["learning_rate"]


def segment_mse(pred: jax.Array, y: jax.Array) -> jax.Array:
  """pred [B, K, S, D], y [B, T, D] -> [K]: each segment's MSE over batch, steps and channels."""
  return jnp.mean((pred - y.reshape(pred.shape)) ** 2, axis=(0, 2, 3))


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


def hold_stopped(new, old, active: jax.Array):
  """Put back the rows of stopped segments. A zero gradient would still move them through Adam's momentum;
  stopping is permanent, so restoring the old rows freezes them exactly."""
  def keep(n, o):
    mask = active.reshape((-1,) + (1,) * (n.ndim - 1))
    return jnp.where(mask, n, o)
  return jax.tree.map(keep, new, old)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, segments: int, share_prefix_dropout: bool,
                    layout: sharding.Layout | None = None, forward=predict, compute_dtype: str | None = None):
  """step(state, frozen, batch, active) -> (state, loss). state = {params, opt, stats, key} is donated.
  Loss = sum over ACTIVE segments of the segment MSE (a sum, as the official code does: method.md §6).
  Under a mesh (`layout`, else the active `sharding.use`) the step is jitted with explicit in/out shardings
  (sharding.ShardedStep); without one it is the plain jax.jit.
  forward(model, batch, ctx) -> [B, K, S, D]: `predict` (one batched pass), or e.g. `predict_per_segment` (the
  official K passes) for benchmarks. compute_dtype: e.g. "bfloat16" runs the forward and backward pass in that
  dtype on float32 master params (see `caster`); None or "float32" is the plain float32 step."""
  cast = caster(compute_dtype)

  def loss_fn(params, stats, frozen, batch, key, active):
    if cast is not None:
      params, frozen, batch = cast(params), cast(frozen), cast_inputs(cast, batch)
    # copy=True: fresh Variables at this trace level, so that a forward pass may update its BatchStats in place
    # (a BatchNorm in training); merging the jit-level Variables themselves makes that a TraceContextError.
    model = nnx.merge(graphdef, *params, stats, frozen, copy=True)
    ctx = Ctx(rngs=nnx.Rngs(dropout=key), segments=segments, share_prefix_dropout=share_prefix_dropout)
    pred = forward(model, batch, ctx)
    if cast is not None:
      pred = pred.astype(jnp.float32)
    per_seg = segment_mse(pred, batch["y"])
    new_stats = nnx.state(model, nnx.BatchStat)
    if cast is not None:  # running statistics keep their float32 dtype (and so the step its one compiled shape)
      new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, stats)
    return jnp.sum(jnp.where(active, per_seg, 0.0)), new_stats

  def step(state, frozen, batch, active):
    key, sub = jax.random.split(state["key"])
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["stats"], frozen, batch, sub, active)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    seg, train = optax.apply_updates(state["params"], updates)
    seg = hold_stopped(seg, state["params"][0], active)
    return {"params": (seg, train), "opt": opt, "stats": stats, "key": key}, loss

  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


def make_eval_step(graphdef, *, segments: int, layout: sharding.Layout | None = None, forward=predict,
                   compute_dtype: str | None = None):
  """step(acc, states, batch) -> acc: sums of squared and absolute errors per forecast step over the real
  (mask == True) windows and all channels, plus the window count. Accumulating on device means one host
  read per evaluation, not one per batch. Sharded under a mesh as make_train_step; `forward` and
  `compute_dtype` as there (the errors are accumulated in float32 either way)."""
  cast = caster(compute_dtype)

  def step(acc, states, batch):
    if cast is not None:
      states, batch = cast(states), cast_inputs(cast, batch)
    model = nnx.merge(graphdef, *states)
    pred = forward(model, batch, Ctx(segments=segments))  # [B, K, S, D]
    if cast is not None:
      pred = pred.astype(jnp.float32)
    b = pred.shape[0]
    err = (pred - batch["y"].reshape(pred.shape)).reshape(b, -1, pred.shape[-1])  # [B, T, D]
    mask = batch["mask"].astype(err.dtype)[:, None, None]
    return {
        "sq": acc["sq"] + jnp.sum(mask * err**2, axis=(0, 2)),  # [T]
        "abs": acc["abs"] + jnp.sum(mask * jnp.abs(err), axis=(0, 2)),  # [T]
        "count": acc["count"] + jnp.sum(batch["mask"]),
    }

  return sharding.jit(step, batch_argnum=2, donate_argnums=0, layout=layout)


def empty_acc(horizon: int) -> dict:
  return {"sq": jnp.zeros(horizon), "abs": jnp.zeros(horizon), "count": jnp.zeros((), jnp.int32)}
