"""Which state a stage ends with (docs/method.md §7, §13). Two rules behind one interface:

* AnyImproved, the official rule: the whole state of the last epoch in which any segment improved on
  validation (with K = 1, the best epoch: stage 1 and mtf). Every such state is saved as the stage's best-state
  checkpoint and the last one is reloaded at the end.
* PerSegment (`--config.adapt.selection=per_segment`, stage 2 only): each segment keeps the adapter deltas of its
  own best epoch. Those epochs' states differ in the shared experts too, so what survives is each segment's delta;
  at the end they are baked into fixed per-segment deltas (adapters.SegmentDelta) and saved.

The training loop calls `carry(state)` once (extra state that the resume checkpoint holds), `update` after each
epoch's validation, `finish` after the last epoch, and `restore(model)` to leave the selected state in the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax import checkpointing
from mola_jax.models import adapters


class AnyImproved:
  def __init__(self, mngr, directory, meta: dict):
    self.mngr, self.directory, self.meta = mngr, directory, meta

  def carry(self, state: dict) -> dict:
    return {}

  def baseline(self, model_state, val: dict) -> None:
    """Stage 2 before training (B = 0: the frozen backbone for every segment): the state to fall back to."""
    checkpointing.save(self.mngr, 0, model_state, dict(self.meta, epoch=0, val_mse=val["mse"]))

  def update(self, epoch: int, stopper, val: dict, progress, state: dict, model_state) -> None:
    if stopper.improved.any():
      progress.best_epoch, progress.best_val = epoch, val["mse"]
      checkpointing.save(self.mngr, epoch, model_state(), dict(self.meta, epoch=epoch, val_mse=val["mse"]))

  def finish(self, epoch: int, progress, state: dict, model_state) -> None:
    pass

  def restore(self, model: nnx.Module) -> None:
    checkpointing.restore_into(model, self.directory)


class PerSegment(AnyImproved):
  def __init__(self, mngr, directory, meta: dict, deltas):
    super().__init__(mngr, directory, meta)
    self.deltas = deltas  # jitted state -> {layer path: [K, d_in, d_out]}, the current per-segment deltas

  def carry(self, state: dict) -> dict:
    return {"selected": self.deltas(state)}  # B = 0: the frozen backbone's output for every segment

  def update(self, epoch: int, stopper, val: dict, progress, state: dict, model_state) -> None:
    chosen = jnp.asarray(stopper.improved)[:, None, None]
    state["selected"] = jax.tree.map(
      lambda new, old: jnp.where(chosen, new, old), self.deltas(state), state["selected"]
    )
    progress.best_epoch, progress.best_val = epoch, float(np.mean(stopper.best))

  def finish(self, epoch: int, progress, state: dict, model_state) -> None:
    """The selected deltas become the stage's final state."""
    selected = model_state(bake=state["selected"])
    checkpointing.save(
      self.mngr, epoch + 1, selected, dict(self.meta, epoch=epoch, selection="per_segment", val_mse=progress.best_val)
    )

  def restore(self, model: nnx.Module) -> None:
    adapters.bake(model)  # the structure the selected state was saved in
    super().restore(model)
