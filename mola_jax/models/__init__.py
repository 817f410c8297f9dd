"""Backbone registry and the one forward function every stage and method uses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.errors import ConfigError
from mola_jax.models import tuners
from mola_jax.models.adapters import SegmentParam, no_adapter, segment_rows
from mola_jax.models.autoformer import Autoformer
from mola_jax.models.dlinear import DLinear
from mola_jax.models.informer import Informer
from mola_jax.models.itransformer import ITransformer
from mola_jax.models.layers import Ctx
from mola_jax.models.patchtst import PatchTST
from mola_jax.models.transformer import Transformer

BACKBONES = {
  "itransformer": ITransformer,
  "patchtst": PatchTST,
  "dlinear": DLinear,
  "transformer": Transformer,
  "informer": Informer,
  "autoformer": Autoformer,
}

# A backbone class declares the layer groups its layers belong to (GROUPS: the names it passes to make_adapter)
# and which of them get adapters unless --config.mola.targets says otherwise (ADAPTED_GROUPS), and whether it
# has a head a per-segment head can replace (HEAD).


def layer_groups(backbone: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """-> (groups the backbone offers, groups adapted by default). A backbone with a separate head (HEAD) also
  offers "head": the dense methods then adapt it as well (e.g. --config.mola.targets="('ffn','head')")."""
  cls = BACKBONES[backbone]
  return cls.GROUPS + (("head",) if getattr(cls, "HEAD", False) else ()), cls.ADAPTED_GROUPS


def adapted_groups(cfg) -> tuple[str, ...]:
  """The layer groups that get adapters in stage 2: --config.mola.targets if set, else the method's default on
  the backbone (tuners.default_groups)."""
  if cfg.mola.targets is not None:
    return tuple(cfg.mola.targets)
  if cfg.method not in tuners.TUNERS:
    return ()
  return tuners.default_groups(cfg.method, *layer_groups(cfg.backbone))


def validate(cfg) -> None:
  """ConfigError for a backbone or a layer group that does not exist."""
  if cfg.backbone not in BACKBONES:
    raise ConfigError(f"unknown backbone {cfg.backbone!r}; use one of {', '.join(sorted(BACKBONES))}")
  if cfg.mola.targets is not None:
    offered, default = layer_groups(cfg.backbone)
    bad = set(cfg.mola.targets) - set(offered)
    if bad:
      raise ConfigError(
        f"unknown mola.targets {sorted(bad)} for backbone {cfg.backbone}; it offers {offered} (default {default})"
      )
  if cfg.method not in tuners.TUNERS:
    return
  groups, kind = adapted_groups(cfg), tuners.TUNERS[cfg.method]
  needs = {"ia3": ("attn",) + tuners.FFN_GROUPS, "block": tuners.FFN_GROUPS}.get(kind)
  if needs is not None and not set(groups) & set(needs):
    raise ConfigError(
      f"method {cfg.method} adapts attention or FFN blocks ({', '.join(needs)}); backbone "
      f"{cfg.backbone} offers {layer_groups(cfg.backbone)[0]}: use mola, lora, fourier or mofourier"
    )
  if cfg.method == "lora_heads" and not getattr(BACKBONES[cfg.backbone], "HEAD", False):
    raise ConfigError(
      f"method lora_heads gives every segment its own head; backbone {cfg.backbone} has no separate "
      "head (its linear maps are the model): use lora or mola"
    )
  if cfg.adapt.selection == "per_segment" and (kind != "dense" or cfg.method == "lora_heads"):
    raise ConfigError(
      f"adapt.selection=per_segment keeps each segment's weight deltas; method {cfg.method} changes "
      "no weights: use any_improved, or mola, lora, fourier or mofourier"
    )


def build(cfg, *, channels: int, marks: int, pred_len: int, segments: int, rngs: nnx.Rngs) -> nnx.Module:
  """The backbone of `cfg.backbone` with an S-step head; with segments > 0 and an adapting method, every
  targeted dense layer also gets an adapter bank over `segments` segments (stage 2)."""
  model_cfg = cfg.model[cfg.backbone]
  if segments and cfg.method in tuners.TUNERS:
    make = tuners.factory(cfg.method, segments, cfg.mola, adapted_groups(cfg), model_cfg.get("dropout", 0.0))
  else:
    make = no_adapter
  return BACKBONES[cfg.backbone](
    model_cfg,
    seq_len=cfg.data.seq_len,
    pred_len=pred_len,
    channels=channels,
    marks=marks,
    rngs=rngs,
    make_adapter=make,
  )


def predict_per_segment(model: nnx.Module, batch: dict, ctx: Ctx) -> jax.Array:
  """Same result as `predict`, computed the official way: K separate passes of the whole backbone, pass k
  holding only segment k's rows of the per-segment parameters. For benchmarks and equivalence tests. Each pass
  draws segment k's own dropout masks, the ones the batched pass draws for it."""
  graphdef, seg, rest = nnx.split(model, SegmentParam, ...)
  ids = ctx.ids()
  outs = []
  for k in range(ctx.segments):
    one = nnx.merge(graphdef, segment_rows(seg, slice(k, k + 1)), rest)
    pass_ctx = dataclasses.replace(ctx, segments=1, segment_ids=ids[k : k + 1], site=0)
    outs.append(predict(one, batch, pass_ctx))  # [B, 1, S, D]
  return jnp.concatenate(outs, axis=1)


def predict(model: nnx.Module, batch: dict, ctx: Ctx) -> jax.Array:
  """-> [B, K, S, D]: segment k forecasts steps kS .. (k+1)S - 1. K = 1 for a plain forecaster."""
  out = model(batch, ctx)  # [K', B, S, D]
  out = jnp.broadcast_to(out, (ctx.segments,) + out.shape[1:])  # K' = 1 only if nothing was adapted
  return out.swapaxes(0, 1)


__all__ = ["BACKBONES", "Ctx", "SegmentParam", "adapted_groups", "build", "layer_groups", "predict", "validate"]
