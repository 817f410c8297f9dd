"""Backbone registry and the one forward function every stage and method uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.adapters import SegmentParam, adapter_factory, no_adapter
from mola_jax.models.itransformer import ITransformer
from mola_jax.models.layers import Ctx

BACKBONES = {
    "itransformer": ITransformer,
}


def build(cfg, *, channels: int, marks: int, pred_len: int, segments: int, rngs: nnx.Rngs) -> nnx.Module:
  """The backbone of `cfg.backbone` with an S-step head; with segments > 0 and an adapting method, every
  targeted dense layer also gets an adapter bank over `segments` segments (stage 2)."""
  make = adapter_factory(cfg.method, segments, cfg.mola) if segments else no_adapter
  return BACKBONES[cfg.backbone](cfg.model[cfg.backbone], seq_len=cfg.data.seq_len, pred_len=pred_len, channels=channels,
                                 marks=marks, rngs=rngs, make_adapter=make)


def predict(model: nnx.Module, batch: dict, ctx: Ctx) -> jax.Array:
  """-> [B, K, S, D]: segment k forecasts steps kS .. (k+1)S - 1. K = 1 for a plain forecaster."""
  out = model(batch, ctx)  # [K', B, S, D]
  out = jnp.broadcast_to(out, (ctx.segments,) + out.shape[1:])  # K' = 1 only if nothing was adapted
  return out.swapaxes(0, 1)


__all__ = ["BACKBONES", "Ctx", "SegmentParam", "build", "predict"]
