"""CycleNet (Lin et al., NeurIPS 2024), as in the official code: Residual Cycle Forecasting. A learnable table of
W rows per channel (the recurrent cycle, zeros at the start) models the series' periodic part; the look-back's
cycle rows are subtracted, a linear map or a two-layer MLP over time forecasts the residual channel by channel,
and the horizon's cycle rows are added back. Optional instance normalisation around it all (`revin`).

The phase of a window is its first row in the whole series mod W (batch["t0"]), so a row of the table stands for
one phase of the period wherever the window starts. The official loader hands the model the phase of the
horizon's first row instead and the model reads it as the look-back's: every row is then read at phase + L, the
same for every window. That only relabels the rows of a table that starts at zero and is trained by an
elementwise optimiser, so the two train and forecast identically.

Under MoLA the adapted layers are the dense layers themselves: the MLP's first layer (group "mlp") and the output
layer (the "head"), which is the whole map of the Linear variant. The cycle table is part of the frozen backbone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.layers import Ctx, Dense

VARIANTS = ("linear", "mlp")


def unbiased_instance_norm(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """x [B, L, D] -> (x_norm, mean, std), mean/std [B, 1, D]. The official CycleNet uses torch.var's default, the
  unbiased estimator (divide by L - 1), with 1e-5 added to it: std = sqrt(var_unbiased + 1e-5). (The shared
  layers.instance_norm takes the population variance, as the other official models do.)"""
  mean = x.mean(axis=1, keepdims=True)
  centred = x - mean
  std = jnp.sqrt(centred.var(axis=1, keepdims=True, ddof=1) + 1e-5)
  return centred / std, mean, std


class CycleNet(nnx.Module):
  """batch {"x": [B, L, D], "t0": int [B]} -> [K, B, pred_len, D], K = ctx.segments. Time features are not read.

  Segment k forecasts horizon steps kS .. (k+1)S - 1 (S = pred_len), so it adds the cycle from phase
  t0 + L + kS: the map over time may be shared by the segments, the cycle added back is each segment's own.
  """

  # variant: "linear" (one map L -> S) or "mlp" (L -> d_model, ReLU, d_model -> S); cycle: the period W in rows
  # (24 hourly, 96 15-minute, 144 10-minute, 168 hourly-weekly in the official scripts); revin: instance norm.
  DEFAULTS = {"variant": "linear", "cycle": 24, "d_model": 512, "revin": True}
  GROUPS = ("mlp",)  # the MLP's first layer; the output layer is the head
  ADAPTED_GROUPS = ("mlp", "head")  # every dense layer: a linear model has no attention or FFN to adapt instead
  HEAD = True  # lora_heads gives each segment its own output layer
  READS_T0 = True  # batch["t0"]: the phase of each window in the cycle

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    del marks
    if cfg.variant not in VARIANTS:
      raise ValueError(f"cyclenet.variant must be one of {VARIANTS}, got {cfg.variant!r}")
    if not (isinstance(cfg.cycle, int) and cfg.cycle > 0):
      raise ValueError(f"cyclenet.cycle (the period W in rows) must be a positive integer, got {cfg.cycle!r}")
    self.cycle = nnx.Param(jnp.zeros((cfg.cycle, channels)))  # [W, D]: the learned periodic pattern
    mlp = cfg.variant == "mlp"
    self.hidden = (
      Dense(seq_len, cfg.d_model, rngs=rngs, adapter=make_adapter("mlp", "linear", seq_len, cfg.d_model, rngs))
      if mlp
      else None
    )
    d_head = cfg.d_model if mlp else seq_len
    self.head = Dense(d_head, pred_len, rngs=rngs, adapter=make_adapter("head", "head", d_head, pred_len, rngs))
    self.revin = cfg.revin
    self.seq_len, self.pred_len = seq_len, pred_len

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first dense layer's matmul for one segment's batch: one row per channel."""
    first = self.head if self.hidden is None else self.hidden
    return batch_size * channels, *first.kernel.shape

  def cycle_rows(self, start: jax.Array, length: int) -> jax.Array:
    """start int [...] -> [..., length, D]: the table's rows at phases start, start + 1, ... (mod W)."""
    table = self.cycle[...]
    phase = (start[..., None] + jnp.arange(length, dtype=jnp.int32)) % table.shape[0]  # non-negative for any start
    return table[phase]

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    x = batch["x"]  # [B, L, D]
    t0 = jnp.asarray(batch["t0"]).astype(jnp.int32)  # [B]
    if self.revin:
      x, mean, std = unbiased_instance_norm(x)
    residual = (x - self.cycle_rows(t0, self.seq_len)).swapaxes(-1, -2)[None]  # [1, B, D, L]
    h = residual if self.hidden is None else jax.nn.relu(self.hidden(residual))
    out = self.head(h).swapaxes(-1, -2)  # [K', B, S, D]
    # Every computed segment adds back the cycle of its own steps of the horizon.
    starts = t0 + self.seq_len + ctx.ids().astype(jnp.int32)[:, None] * self.pred_len  # [K, B]
    out = out + self.cycle_rows(starts, self.pred_len).astype(out.dtype)  # [K, B, S, D]
    if self.revin:
      out = out * std + mean
    return out
