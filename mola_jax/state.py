"""The state a stage trains, as one named type from creation to checkpoint: `TrainState`.

    state = TrainState.create(model, stage, tx, key)   # the model split once: trainable, statistics, frozen
    state, loss = step(state, batch, segs)            # steps.py: donated and returned
    model = state.model()                              # a Module again, only at the edges (inference, export)

A model is split once per stage into the segment-axis adapter parameters, the other trainable parameters, the
batch statistics and the frozen rest (stage 1 trains every nnx.Param; stage 2 the nnx.LoRAParams only). Only the
trainable groups get gradients and optimizer state, so the frozen backbone costs neither. The module structure
(graphdef) and the optimizer (tx) are static fields: they are part of the program, not of its inputs.

Which state a stage keeps (selection.py) is a `Best`: `BestWeights` (the parameters and statistics of one epoch,
the official rule) or `BestDeltas` (each segment's adapter deltas of its own best epoch).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx, struct

from mola_jax.models import SegmentParam

TRAINABLE = {"pretrain": nnx.Param, "adapt": nnx.LoRAParam}  # what each stage trains


@struct.dataclass
class TrainState:
  graphdef: nnx.GraphDef = struct.field(pytree_node=False)
  tx: optax.GradientTransformation | None = struct.field(pytree_node=False)
  seg: nnx.State  # trainable arrays with a leading segment axis K (stopped segments' rows are held)
  train: nnx.State  # the other trainable arrays
  opt: Any  # tx's state of (seg, train); None for a state that only forecasts
  stats: nnx.State  # batch statistics (BatchNorm's running averages)
  key: jax.Array | None  # raw PRNG key data uint32 [2] (an ordinary array in a checkpoint); None: no dropout
  frozen: nnx.State  # the rest of the model: an input of every step, never updated

  @classmethod
  def create(cls, model: nnx.Module, stage: str, tx: optax.GradientTransformation | None = None, key=None):
    """`model` split for `stage` ("pretrain" or "adapt"); with `tx`, the optimizer state of its trainable part."""
    graphdef, seg, train, stats, frozen = nnx.split(model, SegmentParam, TRAINABLE[stage], nnx.BatchStat, ...)
    opt = tx.init((seg, train)) if tx is not None else None
    return cls(graphdef, tx, seg, train, opt, stats, key, frozen)

  @property
  def params(self) -> tuple:
    return self.seg, self.train

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.seg, self.train, self.stats, self.frozen)

  def forecaster(self) -> TrainState:
    """The parts a forecast reads (no optimizer state, no key): what validation, the test pass and inference take,
    so that all of them run one program per structure."""
    return self.replace(tx=None, opt=None, key=None)


@struct.dataclass
class BestWeights:
  """The official rule's best: the trained state of the last epoch in which any segment improved."""

  seg: nnx.State
  train: nnx.State
  stats: nnx.State


@struct.dataclass
class BestDeltas:
  """Per-segment selection's best: {adapted layer: [K, d_in, d_out]}, each segment's delta of its own best epoch."""

  deltas: dict


Best = BestWeights | BestDeltas
