"""Which state a stage ends with (docs/method.md §7, §13). Two rules behind one interface, both kept on the device
for R runs side by side (a leading run axis), so an improvement costs a device copy, not a write:

* AnyImproved, the official rule: the whole trained state (parameters and batch statistics) of the last epoch in
  which any segment improved on validation (with K = 1, the best epoch: stage 1 and mtf).
* PerSegment (`--config.adapt.selection=per_segment`, stage 2 only): each segment keeps the adapter deltas of its
  own best epoch. Those epochs' states differ in the shared experts too, so what survives is each segment's delta;
  at the end they are baked into fixed per-segment deltas (adapters.SegmentDelta).

The training loop calls `initial(state)` once (the state before training: stage 2's B = 0 baseline),
`update(best, state, improved)` after each epoch's validation, `record(...)` for the progress record, and
`model_state(...)` for the state to write (checkpointing) and to leave in the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax.models import adapters


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)  # the train step donates the state it reads: the best is a copy


@jax.jit
def _keep_runs(best, current, chosen):
  """Per run r (chosen bool [R]): current[r] if chosen[r], else best[r]."""
  pick = lambda b, c: jnp.where(chosen.reshape((-1,) + (1,) * (c.ndim - 1)), c, b)
  return jax.tree.map(pick, best, current)


class AnyImproved:
  name = "any_improved"

  def __init__(self, graphdef):
    self.graphdef = graphdef

  def initial(self, state: dict, frozen=None):
    return _copy({"params": state["params"], "stats": state["stats"]})

  def update(self, best, state: dict, improved: np.ndarray):
    """improved bool [R, K]: which segments of which run improved this epoch."""
    chosen = jnp.asarray(improved.any(axis=1))
    return _keep_runs(best, {"params": state["params"], "stats": state["stats"]}, chosen)

  def record(self, progress, epoch: int, stopper, val: dict) -> None:
    if stopper.improved.any():
      progress.best_epoch, progress.best_val = epoch, val["mse"]

  def model_state(self, best, state: dict, frozen) -> nnx.State:
    """One run's selected model, as nnx.State (best, state, frozen: that run's slices)."""
    return nnx.state(nnx.merge(self.graphdef, *best["params"], best["stats"], frozen))

  def into(self, model: nnx.Module, selected: nnx.State) -> None:
    nnx.update(model, selected)


class PerSegment(AnyImproved):
  name = "per_segment"

  def __init__(self, graphdef, runs: int):
    super().__init__(graphdef)
    one = lambda st, frozen: adapters.deltas(nnx.merge(graphdef, *st["params"], st["stats"], frozen))
    self.deltas = jax.jit(jax.vmap(one))  # stacked state, frozen -> {layer: [R, K, d_in, d_out]}
    self.frozen = None

  def initial(self, state: dict, frozen=None):
    self.frozen = frozen
    return self.deltas(state, frozen)  # B = 0: the frozen backbone's output for every segment

  def update(self, best, state: dict, improved: np.ndarray):
    chosen = jnp.asarray(improved)[:, :, None, None]  # [R, K, 1, 1]
    return jax.tree.map(lambda new, old: jnp.where(chosen, new, old), self.deltas(state, self.frozen), best)

  def record(self, progress, epoch: int, stopper, val: dict) -> None:
    progress.best_epoch, progress.best_val = epoch, float(np.mean(stopper.best))

  def model_state(self, best, state: dict, frozen) -> nnx.State:
    """The current state with each segment's selected deltas baked in (adapters.SegmentDelta)."""
    model = nnx.merge(self.graphdef, *state["params"], state["stats"], frozen)
    adapters.bake(model, best)
    return nnx.state(model)

  def into(self, model: nnx.Module, selected: nnx.State) -> None:
    adapters.bake(model)  # the structure the selected state has
    nnx.update(model, selected)
