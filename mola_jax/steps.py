"""The train and eval steps of one run, valid in NNX graph and tree mode, and the programs fit runs: chunks of
steps as one jitted lax.scan that gathers its batches on the device.

    step = train_step_fn(train_forecast(), opts)        # (state, batch, (ids, active)) -> (state, loss)
    chunk = make_train_chunk(opts, seq_len=L, pred_len=T)  # C steps a call, the state donated
    sums = make_eval_chunk(opts, seq_len=L, pred_len=T)(state.forecaster(), series, idx, mask, valid)

Stage 1, stage 2 and every method use these same steps; only the state's split and the model differ. Several
runs side by side (seeds in one program) vmap these one-run programs: mola_jax/lab/side_by_side.py.
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
from mola_jax.models import Ctx, predict
from mola_jax.models.adapters import segment_rows
from mola_jax.state import TrainState

LOSSES = ("mse", "weighted_l1")  # a stage recipe's loss: the field's MSE, or OLinear's step-weighted L1


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """How a stage's steps compute (plan.step_options): the same for every step of the stage."""

  segments: int  # K
  target_only: bool = False  # data.features == "MS": the loss and the scores read the target (last channel) alone
  loss: str = "mse"  # LOSSES
  compute_dtype: str | None = None  # None/"float32", or "bfloat16" on float32 master weights (`caster`)
  share_prefix_dropout: bool = False  # cfg.adapt.share_prefix_dropout (models/layers.py Ctx)
  series: int = 0  # N > 0: a panel's N series; the eval step also sums each series' errors (`series_sums`)


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


# ---------------------------------------------------------------------------------------------------------------
# Losses and scores.


def masked_sum(x: jax.Array, observed: jax.Array | None, axis) -> jax.Array:
  """The sum of `x` over `axis`, over the observed values only (observed bool, broadcast to x): selected, not
  multiplied, so a filled-in or padded value cannot leak, even a non-finite one."""
  return jnp.sum(x if observed is None else jnp.where(observed, x, 0.0), axis=axis)


def masked_mean(x: jax.Array, observed: jax.Array | None, axis) -> jax.Array:
  """The mean of `x` over `axis`, over the observed values only (observed None: all of them)."""
  if observed is None:
    return jnp.mean(x, axis=axis)
  return masked_sum(x, observed, axis) / jnp.maximum(jnp.sum(observed, axis=axis), 1)


def segment_mse(pred: jax.Array, y: jax.Array, observed: jax.Array | None = None) -> jax.Array:
  """pred, y [B, K, S, D] -> [K]: each segment's MSE over batch, steps and channels (observed values only)."""
  return masked_mean((pred - y) ** 2, observed, axis=(0, 2, 3))


def segment_weighted_l1(pred: jax.Array, y: jax.Array, observed: jax.Array | None, ids: jax.Array) -> jax.Array:
  """OLinear's loss per segment: pred, y [B, K, S, D] of the segments `ids` [K] -> [K], the mean over batch, steps
  and channels of |pred - y| (t + 1)^-1/2, t the step's place in the whole horizon (segment k holds kS .. kS + S - 1):
  near steps weigh more. With `observed`, over the observed values only."""
  s = pred.shape[2]
  t = ids.astype(jnp.float32)[:, None] * s + jnp.arange(s, dtype=jnp.float32)  # [K, S]
  return masked_mean(jnp.abs(pred - y) * jax.lax.rsqrt(t + 1.0)[None, :, :, None], observed, axis=(0, 2, 3))


def segment_losses(pred: jax.Array, batch: dict, ids: jax.Array, opts: StepOptions) -> jax.Array:
  """pred [B, K_a, S, D] of the segments `ids` -> [K_a]: each one's training loss against the batch's truth
  [B, K S, D], on the scored channels and the observed values."""
  shape = (pred.shape[0], opts.segments, -1, pred.shape[-1])
  pick = lambda a: None if a is None else a.reshape(shape)[:, ids]  # [B, K_a, S, D]: the computed segments
  pred, y, observed = scored({"y": pick(batch["y"]), "y_observed": pick(batch.get("y_observed"))}, pred, opts)
  return segment_mse(pred, y, observed) if opts.loss == "mse" else segment_weighted_l1(pred, y, observed, ids)


def scored(batch: dict, pred: jax.Array, opts: StepOptions):
  """(pred, y, observed or None) as the loss and the scores read them: the target channel alone under MS."""
  y, observed = batch["y"], batch.get("y_observed")
  if opts.target_only:  # the target is the last channel (data/tables.py)
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


# ---------------------------------------------------------------------------------------------------------------
# The forecast of a step: the K segments in one batched pass (on a CPU, one pass per core).


def split_groups(n: int, groups: int) -> list[slice]:
  """Positions 0 .. n - 1 in min(groups, n) contiguous groups of near-equal size."""
  groups = max(1, min(groups, n))
  bounds = [round(i * n / groups) for i in range(groups + 1)]
  return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def default_groups() -> int:
  """XLA:CPU runs each op of a step on one core and gets parallelism only from independent ops
  (docs/performance.md), so on a CPU the segments are computed as one group per core; one group on accelerators."""
  return len(os.sched_getaffinity(0)) if jax.default_backend() == "cpu" else 1


def train_forecast(groups: int | None = None, forward=predict):
  """The training forecast: f(graphdef, parts, batch, ctx, ids, active) -> ([B, K_a, S, D], batch statistics after
  the pass), parts = (seg, train, stats, frozen) of the model structure `graphdef`, the segments `ids` computed in
  `groups` independent passes (`active` [K_a]: the segments whose statistics count; padding segments are left out of
  BatchNorm's running averages). `forward(model, batch, ctx)`: models.predict (benchmarks pass their variants)."""
  groups = default_groups() if groups is None else groups

  def forecast(graphdef, parts, batch, ctx: Ctx, ids, active):
    seg, train, stats, frozen = parts
    preds = []
    for part in split_groups(ids.shape[0], groups):
      # copy=True: fresh Variables at this trace level, so that a forward pass may update its BatchStats in place
      # (a BatchNorm in training); merging the jit-level Variables themselves makes that a TraceContextError.
      # A group starts from the statistics the group before it left: the same sequential updates as one pass.
      model = nnx.merge(graphdef, segment_rows(seg, ids[part]), train, stats, frozen, copy=True)
      part_ctx = dataclasses.replace(ctx, segments=part.stop - part.start, segment_ids=ids[part], active=active[part])
      preds.append(forward(model, batch, part_ctx))  # [B, K_g, S, D]
      stats = nnx.state(model, nnx.BatchStat)
    return jnp.concatenate(preds, axis=1), stats

  return forecast


def hold_stopped(new, old, keep: jax.Array):
  """Put back the rows of segments that did not train (keep [K] False). A zero gradient would still move them
  through Adam's momentum; stopping is permanent, so restoring the old rows freezes them exactly."""

  def one(n, o):
    mask = keep.reshape((-1,) + (1,) * (n.ndim - 1))
    return jnp.where(mask, n, o)

  return jax.tree.map(one, new, old)


def train_step_fn(forecast, opts: StepOptions):
  """The train step, unjitted: step(state, batch, (ids, active)) -> (state, loss).

  The step computes the segments `ids` (int32 [K_a], a subset of 0 .. K - 1) and trains those whose `active` (bool
  [K_a]) is set (`training_segments` makes the pair): loss = sum over them of the segment loss (a sum, as the
  official code: docs/method.md §6). Training passes the segments that have not early-stopped (padded to one of at
  most two sizes, `segment_buckets`), so a stopped segment costs nothing or little; the padding segments are
  computed, kept out of the loss, their rows held. Dropout masks follow the segment ids (layers.keep_mask), so a
  segment draws the same masks whichever others run beside it. A batch with "y_observed" leaves filled target
  values out of the loss. `forecast`: `train_forecast()`."""
  cast = caster(opts.compute_dtype)

  def loss_fn(params, state: TrainState, batch, key, ids, active):
    seg, train = params
    frozen = state.frozen
    if cast is not None:
      seg, train, frozen, batch = cast(seg), cast(train), cast(frozen), cast_inputs(cast, batch)
    ctx = Ctx(key=jax.random.wrap_key_data(key), share_prefix_dropout=opts.share_prefix_dropout)
    pred, stats = forecast(state.graphdef, (seg, train, state.stats, frozen), batch, ctx, ids, active)
    if cast is not None:
      pred = pred.astype(jnp.float32)
      # running statistics keep their float32 dtype (and so the step its one compiled shape)
      stats = jax.tree.map(lambda n, o: n.astype(o.dtype), stats, state.stats)
    return jnp.sum(jnp.where(active, segment_losses(pred, batch, ids, opts), 0.0)), stats

  def step(state: TrainState, batch: dict, segs):
    ids, active = segs
    key, sub = jax.random.split(state.key)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch, sub, ids, active)
    updates, opt = state.tx.update(grads, state.opt, state.params)
    seg, train = optax.apply_updates(state.params, updates)
    seg = hold_stopped(seg, state.seg, jnp.zeros(opts.segments, bool).at[ids].set(active))
    return state.replace(seg=seg, train=train, opt=opt, stats=stats, key=key), loss

  return step


def train_chunk_fn(step, *, seq_len: int, pred_len: int):
  """C train steps as one loop, each batch gathered on the device inside the body, unjitted:
  chunk(state, series, idx, segs, valid) -> (state, losses [C]). series: the split's arrays
  (data.DeviceWindows.arrays); idx int32 [C, B]: the window indices of each step; segs: (ids, active); valid bool
  [C], a prefix: the steps before an epoch's end (a last, shorter chunk trains its first steps only; the others
  return loss 0), so every chunk has one shape and a stage one program per segment bucket.

  The steps run as a loop over the valid prefix, not as a scan whose body skips invalid steps by a conditional: a
  conditional passes the whole state through its branches, which XLA copies at every step (a kernel per state
  array on a GPU: 118 of stage 1's 306 kernels per step on the README config, docs/performance.md)."""

  def chunk(state, series, idx, segs, valid):
    at = lambda c: data.gather(series, idx[c], seq_len=seq_len, pred_len=pred_len)  # [C] of batches, on the device
    return valid_steps(step, state, segs, valid, at)

  return chunk


def valid_steps(step, state, segs, valid, batch_at):
  """`step` on batch_at(c) for c over the valid prefix of `valid` bool [C] -> (state, losses [C], 0 past the prefix)."""

  def body(c, carry):
    st, losses = carry
    st, loss = step(st, batch_at(c), segs)
    return st, losses.at[c].set(loss)

  losses = jnp.zeros(valid.shape[0], jnp.float32)
  return jax.lax.fori_loop(0, jnp.sum(valid, dtype=jnp.int32), body, (state, losses))


def host_chunk_fn(step):
  """C train steps as one loop over batches gathered on the host (data.PanelOrder, placement "host"), unjitted:
  chunk(state, batches, segs, valid) -> (state, losses [C]); batches {"x": [C, B, L, D], ...}. The same step as
  train_chunk_fn's, on the same batches that one gathers on the device, and the same loop over the valid prefix
  (no conditional per step: it would copy the state at every step, train_chunk_fn)."""

  def chunk(state, batches, segs, valid):
    at = lambda c: jax.tree.map(lambda a: sharding.constrain(a[c], ("batch",) + (None,) * (a.ndim - 2)), batches)
    return valid_steps(step, state, segs, valid, at)

  return chunk


@functools.lru_cache(maxsize=32)
def make_train_chunk(opts: StepOptions, *, seq_len: int, pred_len: int, layout=None, host: bool = False):
  """`train_chunk_fn` of the train step (`host`: `host_chunk_fn`'s), jitted with the state donated; under a mesh
  (`layout`) its output state keeps the logical shardings (sharding.jit). Cached per settings and layout, as
  make_eval_chunk."""
  step = train_step_fn(train_forecast(), opts)
  chunk = host_chunk_fn(step) if host else train_chunk_fn(step, seq_len=seq_len, pred_len=pred_len)
  return sharding.jit(chunk, donate_argnums=0, layout=layout)


def segment_buckets(segments: int, multiple: int = 1) -> tuple[int, ...]:
  """The sizes a stage-2 step computes its active segments in: all K, and half of them (rounded up to a multiple
  of `multiple`, the CPU's groups): at most two programs per stage whatever K is; a step pads the active segments
  with stopped ones to the smaller size that holds them, so it computes at most twice what it needs."""
  half = -(-segments // 2)  # ceil(K / 2)
  half = min(segments, -(-half // multiple) * multiple)
  return tuple(sorted({half, segments}))


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
  ids, mask = ids.astype(np.int32), mask
  return (ids, mask) if active.ndim == 2 else (ids[0], mask[0])


# ---------------------------------------------------------------------------------------------------------------
# Evaluation.


def eval_forward(state: TrainState, batch: dict, *, segments: int, groups: int, cast=None, forward=predict):
  """The eval-mode forecast [B, T, D] of every window of `batch` (float32), the K segments in `groups`
  independent passes (as in training)."""
  parts = (state.seg, state.train, state.stats, state.frozen)
  if cast is not None:
    parts, batch = cast(parts), cast_inputs(cast, batch)
  seg, *rest = parts
  preds = []
  for part in split_groups(segments, groups):
    model = nnx.merge(state.graphdef, segment_rows(seg, part), *rest)
    ids = jnp.arange(part.start, part.stop, dtype=jnp.int32)
    preds.append(forward(model, batch, Ctx(segments=part.stop - part.start, segment_ids=ids)))  # [B, K_g, S, D]
  pred = jnp.concatenate(preds, axis=1).astype(jnp.float32)  # [B, K, S, D]
  return pred.reshape(pred.shape[0], -1, pred.shape[-1])


def eval_step_fn(opts: StepOptions, *, groups: int | None = None, forward=predict):
  """The eval step, unjitted: step(state, batch[, bands]) -> {"sq": [T], "abs": [T], "count": []}, the sums of
  squared and absolute errors per forecast step over the batch's real (mask == True) windows and the scored
  channels, and the windows' count; a batch with "y_observed" also sums "scored" [T], the observed values per step,
  and leaves filled values out. With `bands` (multipliers [V, T, D'] of prediction intervals at V levels,
  evaluation.py) it also sums "inside" [V] (truths within their band) and "width" [V] (the bands' widths). Errors
  accumulate in float32."""
  cast, groups = caster(opts.compute_dtype), default_groups() if groups is None else groups

  def step(state, batch, bands=None):
    pred = eval_forward(state, batch, segments=opts.segments, groups=groups, cast=cast, forward=forward)
    pred, y, observed = scored(batch, pred, opts)
    err = pred - y  # [B, T, D']
    real = batch["mask"][:, None, None]  # [B, 1, 1]
    if observed is not None:
      real = real & observed  # [B, T, D']
    sums = {
      "sq": masked_sum(err**2, real, axis=(0, 2)),  # [T]
      "abs": masked_sum(jnp.abs(err), real, axis=(0, 2)),  # [T]
      "count": jnp.sum(batch["mask"]),
    }
    if observed is not None:
      sums["scored"] = jnp.sum(real, axis=(0, 2)).astype(jnp.float32)  # [T]
    if opts.series:
      sums |= series_sums(batch, pred, y, jnp.broadcast_to(real, err.shape), opts.series)
    if bands is not None:
      scale = lookback_scale(batch["x"][..., -pred.shape[-1] :])  # [B, D']
      half = bands[:, None] * scale[None, :, None, :]  # [V, B, T, D']
      real = jnp.broadcast_to(real, err.shape)[None]  # [1, B, T, D']
      sums["inside"] = jnp.sum(real & (jnp.abs(err)[None] <= half), axis=(1, 2, 3), dtype=jnp.int32)  # exact counts
      sums["width"] = masked_sum(2 * half, real, axis=(1, 2, 3))
    return sums

  return step


def series_sums(batch: dict, pred, y, real, n: int) -> dict:
  """A panel batch's errors summed per series (batch["series"] [B], of `n`): "series_sq", "series_abs" (standardised),
  "series_smape" (M4's sMAPE terms 200 |y - pred| / (|y| + |pred|) in original units, by batch["series_scale"]
  [B, 2] = (mean, std); 0 where both are 0) and "series_count" (the scored values), each [n]."""
  mean, std = batch["series_scale"][:, 0, None, None], batch["series_scale"][:, 1, None, None]  # [B, 1, 1]
  p, t = pred * std + mean, y * std + mean
  denominator = jnp.abs(p) + jnp.abs(t)
  smape = jnp.where(denominator > 0, 200.0 * jnp.abs(p - t) / jnp.where(denominator > 0, denominator, 1.0), 0.0)
  per_window = {"series_sq": (pred - y) ** 2, "series_abs": jnp.abs(pred - y), "series_smape": smape,
                "series_count": jnp.ones_like(y)}  # fmt: skip
  return {k: jax.ops.segment_sum(masked_sum(v, real, axis=(1, 2)), batch["series"], num_segments=n)
          for k, v in per_window.items()}  # fmt: skip


SCALE_FLOOR = 0.05  # standardised units: a flat look-back (a constant channel) still gets a band


def lookback_scale(x):
  """x [n, L, D] (standardised) -> sigma [n, D]: each window's per-channel spread over its look-back (numpy or jax,
  float32 either way)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.maximum(x.std(axis=1), SCALE_FLOOR)


EVAL_CHUNK = 8  # eval batches per call: every split is scored by one program, its last call padded


def eval_chunk_fn(one, *, seq_len: int, pred_len: int):
  """EVAL_CHUNK eval batches as one lax.scan, gathered on the device inside the body, unjitted:
  chunk(state, series, idx, mask, valid[, bands]) -> per-batch sums {"sq": [E, T], ...}. one(state, batch[, bands])
  -> a batch's sums (eval_step_fn); idx int32 [E, B], mask bool [E, B]: the split's windows, padded and masked;
  valid bool [E]: batches beyond the split's end are skipped by a conditional."""

  def chunk(state, series, idx, mask, valid, *bands):
    batch = lambda e: data.gather(series, idx[e], mask[e], seq_len=seq_len, pred_len=pred_len)
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, state, batch(0), *bands))
    body = lambda _, e: (None, jax.lax.cond(valid[e], lambda: one(state, batch(e), *bands), zeros))
    return jax.lax.scan(body, None, jnp.arange(idx.shape[0]))[1]

  return chunk


@functools.lru_cache(maxsize=32)
def make_eval_chunk(opts: StepOptions, *, seq_len: int, pred_len: int, layout=None):
  """The eval chunk, jitted (jax's own cache then keeps a compiled program per state structure and shape). Cached
  per settings and layout, the mesh it is compiled for: validation and the test pass of a stage, and every run of
  a study in one process, share it."""
  one = eval_step_fn(opts)
  return sharding.jit(eval_chunk_fn(one, seq_len=seq_len, pred_len=pred_len), layout=layout)


@functools.lru_cache(maxsize=32)
def make_predict_step(*, segments: int, compute_dtype: str | None = None):
  """step(state, batch) -> forecast [B, T, D] of every window of the batch (the eval step's forward pass)."""
  forecast = functools.partial(eval_forward, segments=segments, groups=default_groups(), cast=caster(compute_dtype))
  return jax.jit(forecast)
