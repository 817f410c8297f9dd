"""Every fine-tuning technique as a bank (MoLA and LoRA banks live in adapters.py), per segment and as a per-segment
mixture of P shared experts (docs/method.md §10), and the registry of methods: one entry each, mtf included.

A backbone asks `make(group, role, d_in, d_out, rngs, heads=...)` for every place a technique can attach:
  dense roles  q, k, v, o (attention projections), ffn1, ffn2 (FFN), linear (DLinear's maps), head (the head);
               the bank is called as bank(h, kernel, bias) -> the layer's output for all K segments [K, ..., d_out];
  block role   ffn_block (after an FFN branch, before its residual and norm); called as bank(y, ctx) -> [K, ..., d].
`group` is the layer group the role sits in ("ffn", "attn", "dec_ffn", "linear", "head"): `--config.adapt.targets`
picks groups. Every technique starts at the frozen model (zero deltas, unit scales, zero up-projections, zero
spectra) unless `--config.adapt.official_init=True` asks for the official code's initialisation. Each technique's
own settings are cfg.technique.<name> (e.g. --config.technique.mola.rank=4); the registry at the end holds one
entry per method, mtf included.

| method            | attaches to                           | per segment k                                          |
|-------------------|---------------------------------------|--------------------------------------------------------|
| mola / lora       | dense roles of the target groups      | low-rank delta: mixture of P experts / own rank-r pair |
| ia3 / moia3       | q, v (per head dim) and ffn2's input  | scales l_k: own vector / mixture of P vectors          |
| adapter/moadapter | ffn_block of the target FFN groups    | bottleneck FFN: own / mixture of P shared ones         |
| fourier/mofourier | dense roles of the target groups      | Re(ifft2) of a sparse spectrum: own / mixture of P     |
| lora_heads        | as lora, plus the head                | own head (the stage-1 head + a full delta)             |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from ml_collections import config_dict

from mola_jax.models import stage2_options
from mola_jax.models.adapters import (
  PER_SEGMENT,
  AdapterConst,
  LoRABank,
  MoLABank,
  SegmentParam,
  apply_delta,
  apply_merged,
  segment_axis,
)

DENSE_ROLES = ("q", "k", "v", "o", "ffn1", "ffn2", "linear")
FFN_GROUPS = ("ffn", "dec_ffn")


def mixture(values: jax.Array, logits: nnx.Variable | None) -> jax.Array:
  """Per-segment values [K, ...]: the rows themselves, or with `logits` [K, P] the softmax mixture of P rows."""
  if logits is None:
    return values
  return jnp.einsum("kp,p...->k...", jax.nn.softmax(logits[...], axis=-1), values)


def _rows(value, experts: int):
  """A parameter of one row per segment (SegmentParam: stopped segments' rows are held) or per shared expert."""
  return nnx.LoRAParam(value) if experts else SegmentParam(value, **PER_SEGMENT if value.ndim == 3 else {})


def _logits(segments: int, experts: int, rngs) -> SegmentParam | None:
  return SegmentParam(jax.random.normal(rngs.params(), (segments, experts))) if experts else None  # [K, P]


def _per_segment_shape(x: jax.Array, k: int) -> jax.Array:
  """[K, n] -> [K, 1, ..., 1, n] to broadcast over an activation [K, ..., n] of `k` axes in all."""
  return x.reshape(x.shape[:1] + (1,) * (k - 2) + x.shape[1:])


class IA3Bank(nnx.Module):
  """IA3: learned scales, initialised to 1. where="output": (h @ W + b) * l_k, the attention's query and value
  projections, l_k a vector per head dimension shared by the heads (the official code's names say "keys" but it
  scales the queries); where="input": (h * l_k) @ W + b, the FFN's second layer, i.e. the hidden activation."""

  def __init__(self, d: int, *, where: str, segments: int, experts: int, heads: int | None, rngs: nnx.Rngs):
    self.where, self.heads = where, heads
    size = d // heads if heads else d
    self.scale = _rows(jnp.ones((experts or segments, size)), experts)  # [K or P, size]
    self.logits = _logits(segments, experts, rngs)

  def scales(self) -> jax.Array:
    scale = mixture(self.scale[...], self.logits)  # [K, size]
    return jnp.tile(scale, (1, self.heads)) if self.heads else scale  # [K, d]

  def __call__(self, h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    scale = self.scales()
    if self.where == "output":
      y = h @ kernel + bias  # [K', ..., d_out]
      return y * _per_segment_shape(scale, y.ndim)
    return (h * _per_segment_shape(scale, h.ndim)) @ kernel + bias


class BottleneckBank(nnx.Module):
  """A bottleneck FFN, Drop(W2 Drop(GELU(W1 y + b1)) + b2) with d -> r -> d, added to the FFN branch's output y
  before the residual and the norm: one per segment, or P shared and mixed per segment. W2, b2 = 0 start at the
  frozen model; official_init draws them as PyTorch's default init does, as the official adapters do."""

  def __init__(
    self, d: int, r: int, *, segments: int, experts: int, dropout_rate: float, official_init: bool, rngs: nnx.Rngs
  ):
    from mola_jax.models.layers import torch_uniform

    rows = experts or segments
    self.w1 = _rows(torch_uniform(rngs.params(), (rows, d, r), d), experts)
    self.b1 = _rows(torch_uniform(rngs.params(), (rows, r), d), experts)
    up = (lambda shape: torch_uniform(rngs.params(), shape, r)) if official_init else jnp.zeros
    self.w2, self.b2 = _rows(up((rows, r, d)), experts), _rows(up((rows, d)), experts)
    self.logits = _logits(segments, experts, rngs)
    self.dropout_rate = dropout_rate

  def __call__(self, y: jax.Array, ctx) -> jax.Array:  # [K', ..., d] -> [K, ..., d]
    from mola_jax.models.layers import dropout, gelu

    x, k = segment_axis(y)
    p = self.dropout_rate
    if k == "" and (ctx.training or self.logits is None):  # each segment its own input (and dropout masks)
      x, k = jnp.broadcast_to(y, (ctx.segments,) + y.shape[1:]), "k"
    if self.logits is None:  # per segment: segment k's input through adapter k
      z = jnp.einsum("k...i,kir->k...r", x, self.w1[...]) + _per_segment_shape(self.b1[...], x.ndim)
      out = jnp.einsum("k...r,kro->k...o", dropout(gelu(z), p, ctx), self.w2[...])
      return y + dropout(out + _per_segment_shape(self.b2[...], x.ndim), p, ctx)
    # Mixture: every expert on the input, then the segment's softmax mix of their outputs.
    z = jnp.einsum(f"{k}...i,pir->{k}...pr", x, self.w1[...]) + self.b1[...]  # [(K), ..., P, r]
    out = jnp.einsum(f"{k}...pr,pro->{k}...po", dropout(gelu(z), p, ctx), self.w2[...]) + self.b2[...]
    mix = jax.nn.softmax(self.logits[...], axis=-1)  # [K, P]
    return y + jnp.einsum(f"{k}...po,kp->k...o", dropout(out, p, ctx), mix)


class FourierBank(nnx.Module):
  """FourierFT: n learnable coefficients at fixed random positions of the d_in x d_out weight spectrum; the weight
  change is Re(ifft2) of that sparse spectrum (no scaling, as the official code). Per segment, or P spectra shared
  and mixed per segment (the official code has no mixture form). Decided against the official code:
  - positions are drawn over the whole d_in x d_out grid (its index split is right for square layers only);
  - one set of positions per layer, shared by its segments (or experts), as the FourierFT paper shares them across
    layers; the official code draws a set per segment. Shared positions make the bank's rows comparable, let a
    step that computes a subset of the segments slice the coefficients alone, and make the mixture a mixture of
    coefficients (the inverse FFT is linear);
  - coefficients start at 0, the frozen model (official_init: N(0, 1));
  - the change is scaled by `scale` (technique.fourier.scale, default 150: FourierFT's and PEFT's scaling). The official
    code has no scaling (1): ifft2 divides by d_in * d_out, so on a 128 x 128 layer a coefficient moves the weights
    by 1/16384 of itself, and in 10 epochs at lr 1e-3 validation moved by 3e-5 (docs/results.md §8): unscaled,
    the technique stays at the frozen model."""

  def __init__(
    self,
    d_in: int,
    d_out: int,
    *,
    segments: int,
    experts: int,
    n: int,
    scale: float,
    official_init: bool,
    rngs: nnx.Rngs,
  ):
    rows, n = experts or segments, min(n, d_in * d_out)
    self.scale = scale
    flat = jax.random.choice(rngs.params(), d_in * d_out, (n,), replace=False)  # [n]
    self.positions = AdapterConst(jnp.stack([flat // d_out, flat % d_out], axis=-1).astype(jnp.int32))  # [n, 2]
    coef = jax.random.normal(rngs.params(), (rows, n)) if official_init else jnp.zeros((rows, n))
    self.coef = _rows(coef, experts)  # [rows, n]
    self.logits = _logits(segments, experts, rngs)
    self.shape = (d_in, d_out)

  def delta(self) -> jax.Array:  # [K, d_in, d_out]
    pos, coef = self.positions[...], self.coef[...]
    if self.logits is not None:
      coef = jax.nn.softmax(self.logits[...], axis=-1) @ coef  # [K, n]: mixing spectra = mixing their deltas
    spectrum = jnp.zeros((coef.shape[0], *self.shape), jnp.complex64).at[:, pos[:, 0], pos[:, 1]].set(coef)
    return self.scale * jnp.fft.ifft2(spectrum).real.astype(coef.dtype)

  def __call__(self, h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return apply_merged(h, kernel, bias, self.delta())


class HeadBank(nnx.Module):
  """Per-segment heads: segment k forecasts with kernel + D_k and bias + c_k. D_k, c_k = 0: every head starts as
  the stage-1 head. official_init: fresh heads (PyTorch's default init) that replace it, as the official
  iTransformerLoraHeader does."""

  def __init__(self, d_in: int, d_out: int, *, segments: int, official_init: bool, rngs: nnx.Rngs):
    from mola_jax.models.layers import torch_uniform

    self.replace = official_init
    init = (lambda shape: torch_uniform(rngs.params(), shape, d_in)) if official_init else jnp.zeros
    self.kernel = SegmentParam(init((segments, d_in, d_out)), **PER_SEGMENT)  # [K, d_in, d_out]
    self.bias = SegmentParam(init((segments, d_out)))  # [K, d_out]

  def __call__(self, h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    out = apply_delta(h, self.kernel[...]) if self.replace else apply_merged(h, kernel, bias, self.kernel[...])
    return out + _per_segment_shape(self.bias[...], out.ndim)


# ---------------------------------------------------------------------------------------------------------------
# The registry: one entry per method. Adding a technique means a bank class above, an entry here and its tests.


@dataclasses.dataclass(frozen=True)
class Site:
  """Where a backbone asks for a bank: role `role` of layer group `group`, a d_in -> d_out layer (`heads`: the
  attention's head count, for per-head scales)."""

  role: str
  d_in: int
  d_out: int
  heads: int | None
  rngs: nnx.Rngs


@dataclasses.dataclass(frozen=True)
class Bank:
  """What every bank of a stage-2 model is built with: the technique's own settings (cfg.technique.<name>), the
  segment count K, the shared experts P of a mixture (0: one bank row per segment), and two stage-2 settings."""

  settings: ml_collections.ConfigDict
  segments: int
  experts: int
  official_init: bool
  dropout_rate: float
  segment_heads: bool = False  # adapt.segment_heads: every segment also its own change of the head


@dataclasses.dataclass(frozen=True)
class Technique:
  """A method: how stage 2 changes the frozen backbone (mtf: it has no stage 2, its one stage is a direct
  T-step forecaster). `kind` says where its banks attach: "dense" (every dense role of the adapted groups),
  "ia3" (q, v and ffn2's input), "block" (after an FFN branch); `make(bank, site)` builds one."""

  name: str
  kind: str | None
  make: Callable[[Bank, Site], nnx.Module] | None
  settings: Callable[[], dict]  # the defaults of cfg.technique.<name>
  mixture: bool = False  # P shared experts mixed per segment by softmax(logits[k])
  heads: bool = False  # every segment also gets its own head (lora_heads)

  @property
  def two_stage(self) -> bool:
    """Stage 1 on segments, then stage 2 with this technique; False: mtf, one direct stage."""
    return self.kind is not None

  @property
  def changes_weights(self) -> bool:
    """Its change to a layer is a weight delta, so per-segment selection can keep each segment's (and export can
    bake them into fixed deltas)."""
    return self.kind == "dense" and not self.heads

  @property
  def needs(self) -> tuple[str, ...] | None:
    """Layer groups of which a backbone must offer at least one (None: any)."""
    return {"ia3": ("attn",) + FFN_GROUPS, "block": FFN_GROUPS}.get(self.kind)

  def default_groups(self, offered: tuple, backbone_default: tuple) -> tuple:
    """The layer groups adapted when --config.adapt.targets is unset: IA3 scales the attention and the FFN (the
    official placement), every other technique the backbone's own default (its FFN)."""
    return tuple(g for g in offered if g in ("attn",) + FFN_GROUPS) if self.kind == "ia3" else backbone_default


ROLES = {"dense": DENSE_ROLES, "ia3": ("q", "v", "ffn2"), "block": ("ffn_block",)}


def _low_rank(**extra) -> Callable[[], dict]:
  # factored: unset -> per layer by cost (adapters.use_factored); True / False forces a form. Speed only.
  return lambda: dict(rank=8, a_std=0.01, factored=config_dict.placeholder(bool), **extra)


def _mola(b: Bank, site: Site) -> nnx.Module:
  s = b.settings
  rank = stage2_options.per_segment_size(s.rank, s.get("rank_per_segment", 0.0), b.segments)
  return MoLABank(site.d_in, site.d_out, segments=b.segments, experts=b.experts, rank=rank, a_std=s.a_std,
                  rngs=site.rngs, factored=s.factored)  # fmt: skip


def _lora(b: Bank, site: Site) -> nnx.Module:
  s = b.settings
  return LoRABank(site.d_in, site.d_out, segments=b.segments, rank=s.rank, a_std=s.a_std, rngs=site.rngs,
                  factored=s.factored)  # fmt: skip


def _fourier(b: Bank, site: Site) -> nnx.Module:
  return FourierBank(site.d_in, site.d_out, segments=b.segments, experts=b.experts, n=b.settings.n,
                     scale=b.settings.scale, official_init=b.official_init, rngs=site.rngs)  # fmt: skip


def _ia3(b: Bank, site: Site) -> nnx.Module:
  where, d = ("output", site.d_out) if site.role in ("q", "v") else ("input", site.d_in)
  heads = site.heads if where == "output" else None
  return IA3Bank(d, where=where, segments=b.segments, experts=b.experts, heads=heads, rngs=site.rngs)


def _adapter(b: Bank, site: Site) -> nnx.Module:
  r = b.settings.dim or max(1, site.d_in // 4)  # unset: d_model / 4, the official width
  return BottleneckBank(site.d_in, r, segments=b.segments, experts=b.experts, dropout_rate=b.dropout_rate,
                        official_init=b.official_init, rngs=site.rngs)  # fmt: skip


# MoLA's P and r growing with K (models/stage2_options.py): at least ceil(x K) each; 0: as num_experts and rank say.
MOLA_SCALING = {"experts_per_segment": 0.0, "rank_per_segment": 0.0}
EXPERTS = 6  # P of every mixture (the scripts pass 6; the official CLI default was 3)
FOURIER = {"n": 100, "scale": 150.0}  # FourierFT: coefficients per spectrum (the official 100), its paper's scaling 150
# The bottleneck width r; unset -> d_model / 4 (the official). A function: each config gets its own placeholder.
adapter_settings = lambda **extra: dict(dim=config_dict.placeholder(int), **extra)

TECHNIQUES: dict[str, Technique] = {
  t.name: t
  for t in (
    Technique("mtf", None, None, dict),
    Technique("mola", "dense", _mola, _low_rank(num_experts=EXPERTS, **MOLA_SCALING), mixture=True),
    Technique("lora", "dense", _lora, _low_rank()),
    Technique("lora_heads", "dense", _lora, _low_rank(), heads=True),
    Technique("ia3", "ia3", _ia3, dict),
    Technique("moia3", "ia3", _ia3, lambda: {"num_experts": EXPERTS}, mixture=True),
    Technique("adapter", "block", _adapter, adapter_settings),
    Technique("moadapter", "block", _adapter, lambda: adapter_settings(num_experts=EXPERTS), mixture=True),
    Technique("fourier", "dense", _fourier, lambda: dict(FOURIER)),
    Technique("mofourier", "dense", _fourier, lambda: dict(FOURIER, num_experts=EXPERTS), mixture=True),
  )
}


def factory(technique: Technique, bank: Bank, targets: tuple):
  """-> make(group, role, d_in, d_out, rngs, heads=None) for a backbone to call at each place a bank can go; it
  returns the technique's bank there, or None."""

  def make(group: str, role: str, d_in: int, d_out: int, rngs: nnx.Rngs, heads: int | None = None):
    site = Site(role, d_in, d_out, heads, rngs)
    if role == "head":  # a per-segment head (lora_heads), or the head as one more adapted dense layer
      if technique.heads:
        return HeadBank(d_in, d_out, segments=bank.segments, official_init=bank.official_init, rngs=rngs)
      own = technique.make(bank, site) if technique.kind == "dense" and "head" in targets else None
      return stage2_options.segment_head(own, d_in, d_out, bank.segments) if bank.segment_heads else own
    if group not in targets or role not in ROLES[technique.kind]:
      return None
    return technique.make(bank, site)

  return make


def has_delta(bank) -> bool:
  """Whether a bank's change to its layer is a weight delta (export bakes those into fixed per-segment deltas)."""
  return hasattr(bank, "delta")


__all__ = ["TECHNIQUES", "AdapterConst", "Bank", "BottleneckBank", "FourierBank", "HeadBank", "IA3Bank", "Technique"]
