"""Which state a stage ends with (docs/method.md §7, §13): two rules, each a `Best` (state.py) kept on the device,
so an improvement costs a device copy, not a write.

* any_improved, the official rule (BestWeights): the whole trained state (parameters and batch statistics) of the
  last epoch in which any segment improved on validation (with K = 1, the best epoch: stage 1 and mtf).
* per_segment (`--config.adapt.selection=per_segment`, stage 2 only; BestDeltas): each segment keeps the adapter
  deltas of its own best epoch. Those epochs' states differ in the shared experts too, so what survives is each
  segment's delta; at the end they are baked into fixed per-segment deltas (adapters.SegmentDelta).

fit calls `initial(rule, state)` once (the state before training: stage 2's B = 0 baseline), `update(best, state,
improved)` after each epoch's validation, `record(...)` for the progress record, and `selected(best, state)` for
the state to write and to test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mola_jax.models import adapters
from mola_jax.state import BestDeltas, BestWeights, TrainState

RULES = ("any_improved", "per_segment")


@jax.jit
def _deltas(state: TrainState) -> dict:
  return adapters.deltas(state.model())  # {layer: [K, d_in, d_out]}


def initial(rule: str, state: TrainState):
  """The best before training. The train step donates the state it reads, so a best is always a copy."""
  if rule == "per_segment":
    return BestDeltas(_deltas(state))
  return BestWeights(*jax.tree.map(jnp.copy, (state.seg, state.train, state.stats)))


def update(best, state: TrainState, improved: np.ndarray):
  """improved bool [K]: which segments improved this epoch."""
  if isinstance(best, BestDeltas):
    chosen = jnp.asarray(improved)[:, None, None]  # [K, 1, 1]
    return BestDeltas(jax.tree.map(lambda new, old: jnp.where(chosen, new, old), _deltas(state), best.deltas))
  return initial("any_improved", state) if improved.any() else best


def record(best, progress, epoch: int, stopper, val: dict) -> None:
  """The progress record's best epoch and its validation MSE (per_segment: the mean of the segments' bests)."""
  if isinstance(best, BestDeltas):
    progress.best_epoch, progress.best_val = epoch, float(np.mean(stopper.best))
  elif stopper.improved.any():
    progress.best_epoch, progress.best_val = epoch, val["mse"]


def selected(best, state: TrainState) -> TrainState:
  """The state the stage ends with, ready to forecast: the best weights, or (per_segment) the current state with
  each segment's selected deltas baked in (a model of another structure: adapters.SegmentDelta)."""
  if isinstance(best, BestWeights):
    return state.replace(seg=best.seg, train=best.train, stats=best.stats).forecaster()
  model = state.model()
  adapters.bake(model, best.deltas)
  return TrainState.create(model, "adapt")
