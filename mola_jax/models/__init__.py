"""The backbone registry, the model a stage trains (a backbone with its S-step head and, in stage 2, the method's
banks), and the one forward function every stage and method uses.

A backbone is one registry entry: its class, which declares its own default sizes (DEFAULTS, the config's
cfg.model.<name>), the layer groups its dense layers belong to (GROUPS: the names it passes to make_adapter),
which of them stage 2 adapts unless --config.adapt.targets says otherwise (ADAPTED_GROUPS), and whether it has a
separate head (HEAD). A method is one entry of techniques.TECHNIQUES.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mola_jax.errors import ConfigError
from mola_jax.models import techniques
from mola_jax.models.adapters import SegmentParam, no_adapter, segment_rows
from mola_jax.models.autoformer import Autoformer
from mola_jax.models.cyclenet import CycleNet
from mola_jax.models.dlinear import DLinear
from mola_jax.models.informer import Informer
from mola_jax.models.itransformer import ITransformer
from mola_jax.models.layers import Ctx
from mola_jax.models.olinear import OLinear
from mola_jax.models.patchtst import PatchTST
from mola_jax.models.stage2_options import per_segment_size
from mola_jax.models.transformer import Transformer

BACKBONES = {
  "itransformer": ITransformer,
  "patchtst": PatchTST,
  "dlinear": DLinear,
  "transformer": Transformer,
  "informer": Informer,
  "autoformer": Autoformer,
  "cyclenet": CycleNet,
  "olinear": OLinear,
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a model is built from, taken from the config once (plan.make): the backbone and its sizes, the look-back,
  and the method with its settings and the layer groups it adapts."""

  backbone: str
  sizes: ml_collections.ConfigDict  # cfg.model.<backbone>
  seq_len: int
  method: str
  settings: ml_collections.ConfigDict  # cfg.technique.<method>
  targets: tuple[str, ...]  # adapted layer groups
  official_init: bool  # the official code's initialisation of the banks (cfg.adapt.official_init)
  segment_heads: bool = False  # every segment also its own full-rank change of the head (cfg.adapt.segment_heads)

  @property
  def technique(self) -> techniques.Technique:
    return techniques.TECHNIQUES[self.method]


def marks_read(backbone: str) -> str:
  """Which marks (time features, future covariates) a backbone reads: "none", "lookback" or "horizon" (also
  their values over the steps it forecasts)."""
  return getattr(BACKBONES[backbone], "MARKS", "none")


def reads_t0(backbone: str) -> bool:
  """Whether a backbone reads batch["t0"], the row of a window's first step (the phase of a cycle: CycleNet)."""
  return getattr(BACKBONES[backbone], "READS_T0", False)


def layer_groups(backbone: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """-> (groups the backbone offers, groups adapted by default). A backbone with a separate head (HEAD) also
  offers "head": the dense methods then adapt it as well (e.g. --config.adapt.targets="('ffn','head')")."""
  cls = BACKBONES[backbone]
  return cls.GROUPS + (("head",) if getattr(cls, "HEAD", False) else ()), cls.ADAPTED_GROUPS


def adapted_groups(backbone: str, method: str, targets: tuple | None) -> tuple[str, ...]:
  """The layer groups stage 2 adapts: `targets` if set, else the method's default on the backbone."""
  if targets is not None:
    return tuple(targets)
  technique = techniques.TECHNIQUES[method]
  return technique.default_groups(*layer_groups(backbone)) if technique.two_stage else ()


def validate(backbone: str, method: str, targets: tuple | None, selection: str, covariates: tuple = (), *,
             segment_heads: bool = False) -> None:  # fmt: skip
  """ConfigError for a backbone or a layer group that does not exist, a method the backbone cannot take, future
  covariates it cannot read, or per-segment heads it cannot have."""
  if backbone not in BACKBONES:
    raise ConfigError(f"unknown backbone {backbone!r}; use one of {', '.join(sorted(BACKBONES))}")
  if covariates and marks_read(backbone) != "horizon":
    readers = sorted(name for name in BACKBONES if marks_read(name) == "horizon")
    raise ConfigError(
      f"backbone {backbone} does not read future covariates over the horizon; drop data.future_covariates "
      f"({', '.join(covariates)}) or use one of {', '.join(readers)}"
    )
  offered, default = layer_groups(backbone)
  if targets is not None and set(targets) - set(offered):
    bad = sorted(set(targets) - set(offered))
    raise ConfigError(f"unknown adapt.targets {bad} for backbone {backbone}; it offers {offered} (default {default})")
  technique = techniques.TECHNIQUES[method]
  if not technique.two_stage:
    return
  needs = technique.needs
  if needs is not None and not set(adapted_groups(backbone, method, targets)) & set(needs):
    raise ConfigError(
      f"method {method} adapts attention or FFN blocks ({', '.join(needs)}); backbone {backbone} offers "
      f"{BACKBONES[backbone].GROUPS}: use mola, lora, fourier or mofourier"
    )
  if segment_heads and (technique.heads or not getattr(BACKBONES[backbone], "HEAD", False)):
    raise ConfigError(
      f"adapt.segment_heads gives every segment its own change of the head; {method} on {backbone} cannot take one "
      "(a backbone without a separate head, or a method with heads of its own): drop adapt.segment_heads"
    )
  if technique.heads and not getattr(BACKBONES[backbone], "HEAD", False):
    raise ConfigError(
      f"method {method} gives every segment its own head; backbone {backbone} has no separate head (its linear "
      "maps are the model): use lora or mola"
    )
  if selection == "per_segment" and not technique.changes_weights:
    raise ConfigError(
      f"adapt.selection=per_segment keeps each segment's weight deltas; method {method} changes no weights: use "
      "any_improved, or mola, lora, fourier or mofourier"
    )


def build(spec: ModelSpec, *, channels: int, marks: int, pred_len: int, segments: int, rngs: nnx.Rngs,
          covariates: int = 0, train_values=None) -> nnx.Module:  # fmt: skip
  """The backbone of `spec` with a `pred_len`-step head; with segments > 0 and a two-stage method, every targeted
  layer also gets the method's bank over `segments` segments (stage 2). `covariates`: how many of the `marks`
  (the last ones) are known-future covariates. `train_values` [rows, D]: the training rows, for a backbone whose
  constants come from the data (FROM_DATA: OLinear's bases); without them such constants keep their placeholder
  until a checkpoint restores them (stage 2, a loaded run)."""
  technique = spec.technique
  if segments and technique.two_stage:
    experts = spec.settings.num_experts if technique.mixture else 0
    experts = per_segment_size(experts, spec.settings.get("experts_per_segment", 0.0), segments) if experts else 0
    bank = techniques.Bank(spec.settings, segments, experts, spec.official_init, spec.sizes.get("dropout", 0.0),
                           spec.segment_heads)  # fmt: skip
    make = techniques.factory(technique, bank, spec.targets)
  else:
    make = no_adapter
  cls = BACKBONES[spec.backbone]
  extra = {"covariates": covariates} if getattr(cls, "COVARIATE_TOKENS", False) else {}
  model = cls(
    spec.sizes, seq_len=spec.seq_len, pred_len=pred_len, channels=channels, marks=marks, rngs=rngs, make_adapter=make,
    **extra,
  )  # fmt: skip
  if train_values is not None and getattr(cls, "FROM_DATA", False):
    model.set_basis(train_values)
  return model


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


__all__ = [
  "BACKBONES", "Ctx", "ModelSpec", "SegmentParam", "adapted_groups", "build", "layer_groups", "predict",
  "marks_read", "reads_t0", "validate",
]  # fmt: skip
