"""Building blocks shared by the backbones.

Activations carry a leading *segment axis*: `h: [K', B, ..., d]` with K' = 1 while every segment shares the
computation, and K' = K once a segment-specific (adapted) layer has run. Everything here broadcasts over
leading axes, so a backbone is written once and runs unchanged as a plain forecaster (K' = 1 throughout) or
under MoLA (the prefix before the first adapted layer is computed once, the rest K times in one batched pass).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax import sharding

# The segment id of a prefix that every segment shares (K' = 1, before the segments split): its dropout stream.
SHARED_SEGMENT = 0xFFFFFFFF


@dataclasses.dataclass
class Ctx:
  """Per-call settings of a forward pass: the dropout key (None = eval) and the segments it computes.

  `segment_ids` names the segments on the leading axis (None: all of them, 0 .. segments - 1). Training may compute
  a subset, the segments that have not early-stopped; a segment's dropout masks depend on its own id, never on its
  position, so it draws the same masks whichever other segments run beside it (`keep_mask`).
  """

  key: jax.Array | None = None  # typed PRNG key of this pass's dropout
  segments: int = 1
  segment_ids: jax.Array | None = None  # int [segments]
  # Training only: keep one set of dropout masks for the shared prefix instead of one per segment.
  share_prefix_dropout: bool = False
  # False: compute the layers before the first adapted one K times too (for benchmarks of the saving).
  share_prefix: bool = True
  site: int = 0  # dropout calls made so far in this pass: each call site draws its own stream
  # Training only: bool [segments], the segments whose batch statistics count (None: all). A step that pads its
  # active segments with stopped ones computes them but keeps them out of BatchNorm's running averages.
  active: jax.Array | None = None

  @property
  def training(self) -> bool:
    return self.key is not None

  def ids(self) -> jax.Array:
    """uint32 [segments]: the ids of the computed segments."""
    if self.segment_ids is None:
      return jnp.arange(self.segments, dtype=jnp.uint32)
    return jnp.asarray(self.segment_ids).astype(jnp.uint32)

  def split_segments(self, h: jax.Array) -> jax.Array:
    """[1, ...] -> [K, ...] in training, so that every segment draws its own dropout masks from here on,
    as the official K separate passes do. In eval the prefix stays shared: that is exact and K times cheaper."""
    own_masks = self.training and not self.share_prefix_dropout
    if self.segments > 1 and h.shape[0] == 1 and (own_masks or not self.share_prefix):
      return jnp.broadcast_to(h, (self.segments,) + h.shape[1:])
    return h


def _mix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which every output bit depends on every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def keep_mask(ctx: Ctx, shape: tuple[int, ...], rate: float) -> jax.Array:
  """bool `shape` = [K', ...]: True with probability 1 - rate, independently for every element.

  The step's key (64 threefry bits) is hashed with the call site and the segment id into a 64-bit seed per
  segment; every element then hashes its index within its segment with that seed: two rounds of a 32-bit mixer,
  about a dozen integer ops. A threefry hash per element costs about ten times that (a third of a stage-2 step on
  a CPU) and a threefry call per site a larger program to compile (docs/performance.md). The mask of a segment
  depends only on the step's key, the call site and the segment's id.
  """
  ids = ctx.ids() if shape[0] == ctx.segments else jnp.full((1,), SHARED_SEGMENT, jnp.uint32)
  site = jnp.uint32(ctx.site)
  ctx.site += 1
  k0, k1 = jax.random.key_data(ctx.key)  # the step's 64 random bits
  s0 = _mix32(k0 ^ _mix32(ids * jnp.uint32(0x9E3779B9) + site))[:, None]  # [K', 1]: 64-bit seed per segment
  s1 = _mix32(k1 ^ _mix32(ids + site * jnp.uint32(0x85EBCA77) + jnp.uint32(0x632BE5AB)))[:, None]
  index = jax.lax.iota(jnp.uint32, math.prod(shape[1:]))[None]  # [1, n]: the element's place in its segment
  bits = _mix32(_mix32(index + s0) ^ s1)  # [K', n], uniform over uint32
  threshold = jnp.uint32(min(round(rate * 2.0**32), 2**32 - 1))  # P(bits < threshold) = rate to 2^-32
  return (bits >= threshold).reshape(shape)


def dropout(x: jax.Array, rate: float, ctx: Ctx) -> jax.Array:
  """Inverted dropout (kept elements scaled by 1 / (1 - rate)); the identity in eval."""
  if not ctx.training or rate == 0.0:
    return x
  return jnp.where(keep_mask(ctx, x.shape, rate), x / (1.0 - rate), 0.0)


def torch_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
  """PyTorch's default Linear/Conv1d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and biases alike."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Dense(nnx.Module):
  """`h @ kernel + bias`, kernel [d_in, d_out]. With an adapter bank, segment k computes `h @ (kernel + delta[k])
  + bias`, the way the bank finds cheapest (merged into the kernel, or factored: adapters.py). use_bias=False:
  no bias (PyTorch's `bias=False`); an adapter bank then gets the constant 0.0 as the bias."""

  def __init__(
    self,
    d_in: int,
    d_out: int,
    *,
    rngs: nnx.Rngs,
    adapter: nnx.Module | None = None,
    axes: tuple[str | None, str | None] | None = None,
    use_bias: bool = True,
  ):
    # axes: logical names of (d_in, d_out) for the sharding rules (mola_jax/sharding.py); None: replicated.
    kernel_axes, bias_axes = (sharding.axes(*axes), sharding.axes(axes[1])) if axes else ({}, {})
    self.kernel = nnx.Param(torch_uniform(rngs.params(), (d_in, d_out), d_in), **kernel_axes)
    self.bias = nnx.Param(torch_uniform(rngs.params(), (d_out,), d_in), **bias_axes) if use_bias else None
    self.adapter = adapter

  def __call__(self, h: jax.Array) -> jax.Array:  # h: [K', ..., d_in] -> [K' or K, ..., d_out]
    bias = 0.0 if self.bias is None else self.bias[...]
    if self.adapter is None:
      return h @ self.kernel[...] + bias  # computed once while the prefix is shared
    return self.adapter(h, self.kernel[...], bias)  # [K, ..., d_out]


def layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)  # PyTorch's eps, not flax's 1e-6


def gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # the official models use the exact (erf) GELU


class Attention(nnx.Module):
  """Full multi-head attention with biased Q/K/V/O projections, scale 1/sqrt(d_head), dropout on the weights."""

  def __init__(self, d_model: int, n_heads: int, dropout_rate: float, *, rngs: nnx.Rngs, make_adapter=None):
    make = make_adapter or (lambda *a, **kw: None)
    qkv, out = ("embed", "heads"), ("heads", "embed")  # logical axes of the kernels
    dense = lambda role, axes: Dense(
      d_model, d_model, rngs=rngs, axes=axes, adapter=make("attn", role, d_model, d_model, rngs, heads=n_heads)
    )
    self.q, self.k, self.v, self.o = dense("q", qkv), dense("k", qkv), dense("v", qkv), dense("o", out)
    self.n_heads = n_heads
    self.dropout_rate = dropout_rate

  def __call__(self, xq: jax.Array, xkv: jax.Array, ctx: Ctx, mask: jax.Array | None = None) -> jax.Array:
    """xq [K', ..., Nq, d], xkv [K', ..., Nk, d] -> [K', ..., Nq, d]. The K' axes of the two may differ (1 vs K:
    a decoder attending to a shared encoder). mask [Nq, Nk], True = may attend (e.g. causal); None = full."""
    heads = lambda t: t.reshape(t.shape[:-1] + (self.n_heads, t.shape[-1] // self.n_heads))
    q, k, v = map(heads, self.project(xq, xkv))  # [K', ..., N, H, dh]
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
      scores = jnp.where(mask, scores, -jnp.inf)  # every row keeps at least one key, so no row is all -inf
    weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, ctx)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return self.o(out.reshape(out.shape[:-2] + (-1,)))

  def project(self, xq: jax.Array, xkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Q, K, V. Frozen projections of the same input run as one matmul with the kernels side by side: one
    [rows, d] x [d, 3d] product instead of three of a third of the size (fewer, bigger ops)."""
    if any(dense.adapter is not None for dense in (self.q, self.k, self.v)):
      return self.q(xq), self.k(xkv), self.v(xkv)
    fused = lambda x, *ds: jnp.split(
      x @ jnp.concatenate([d.kernel[...] for d in ds], axis=1) + jnp.concatenate([d.bias[...] for d in ds]),
      len(ds),
      axis=-1,
    )
    if xq is xkv:  # self-attention over every token
      return tuple(fused(xq, self.q, self.k, self.v))
    return (self.q(xq), *fused(xkv, self.k, self.v))


def ffn_layers(
  d_model: int, d_ff: int, group: str, *, rngs: nnx.Rngs, make_adapter, use_bias: bool = True
) -> tuple[Dense, Dense]:
  """The two dense layers of a position-wise FFN (kernel-size-1 convolutions in PyTorch), W1: d_model -> d_ff and
  W2: d_ff -> d_model, with the logical axes of the sharding rules and the adapters of layer group `group`.
  use_bias=False: convolutions built with `bias=False` (Autoformer's decoder)."""
  # Each layer's adapter is made right before the layer itself: the order of the draws from `rngs`.
  first = Dense(
    d_model,
    d_ff,
    rngs=rngs,
    adapter=make_adapter(group, "ffn1", d_model, d_ff, rngs),
    axes=("embed", "mlp"),
    use_bias=use_bias,
  )
  second = Dense(
    d_ff,
    d_model,
    rngs=rngs,
    adapter=make_adapter(group, "ffn2", d_ff, d_model, rngs),
    axes=("mlp", "embed"),
    use_bias=use_bias,
  )
  return first, second


def feed_forward(ffn1: Dense, ffn2: Dense, x: jax.Array, rate: float, ctx: Ctx, block=None) -> jax.Array:
  """Drop(W2 Drop(GELU(W1 x))): the FFN branch of TSLib's encoder and decoder layers; `block` (a bottleneck adapter
  bank, tuners.BottleneckBank) adds its term to the branch's output, before the residual and the norm."""
  y = dropout(gelu(ffn1(x)), rate, ctx)  # the first adapted layer: K' becomes K here
  y = dropout(ffn2(y), rate, ctx)
  return y if block is None else block(y, ctx)


class EncoderLayer(nnx.Module):
  """TSLib's post-norm encoder layer: x = LN1(x + Drop(Attn(x))); out = LN2(x + FFN(x)). The FFN's W1/W2 (group
  "ffn") are the layers MoLA adapts."""

  def __init__(self, d_model, d_ff, n_heads, dropout_rate, *, rngs: nnx.Rngs, make_adapter):
    self.attn = Attention(d_model, n_heads, dropout_rate, rngs=rngs, make_adapter=make_adapter)
    self.norm1 = layer_norm(d_model, rngs)
    self.ffn1, self.ffn2 = ffn_layers(d_model, d_ff, "ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("ffn", "ffn_block", d_model, d_model, rngs)
    self.norm2 = layer_norm(d_model, rngs)
    self.dropout_rate = dropout_rate

  def __call__(self, x: jax.Array, ctx: Ctx, rows: slice | None = None) -> jax.Array:
    """x [K', B, N, d] -> [K', B, N, d]. `rows`: only these tokens' outputs are needed (a last layer whose
    head reads some tokens): the others still serve as keys and values, but get no query, FFN or norm."""
    p = self.dropout_rate
    names = sharding.activation_axes(x.ndim)  # [segment, batch, ..., token, embed]; a no-op without a mesh
    x = sharding.constrain(x, names)
    q = x if rows is None else x[..., rows, :]
    x = self.norm1(q + dropout(self.attn(q, x, ctx), p, ctx))
    y = feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block)
    return sharding.constrain(self.norm2(x + y), names)


def encoder_layers(cfg, *, rngs: nnx.Rngs, make_adapter) -> nnx.List:
  """`cfg.e_layers` encoder layers of a backbone's sizes (d_model, d_ff, n_heads, dropout)."""
  return nnx.List(
    [
      EncoderLayer(cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.dropout, rngs=rngs, make_adapter=make_adapter)
      for _ in range(cfg.e_layers)
    ]
  )


def encode(layers: nnx.List, h: jax.Array, ctx: Ctx, last_rows: slice | None = None) -> jax.Array:
  """The encoder stack; the last layer computes outputs for `last_rows` only (None: every token)."""
  for i, layer in enumerate(layers):
    h = layer(h, ctx, rows=last_rows if i == len(layers) - 1 else None)
  return h


def instance_norm(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-window, per-channel standardisation over time (x: [B, L, D]); returns (x_norm, mean, std) with
  mean/std [B, 1, D]. Population variance + 1e-5 inside the sqrt, as the official models do."""
  mean = x.mean(axis=1, keepdims=True)
  centred = x - mean
  std = jnp.sqrt(centred.var(axis=1, keepdims=True) + 1e-5)
  return centred / std, mean, std


def sinusoid_positions(length: int, d: int) -> np.ndarray:
  """The fixed sinusoidal position table of TSLib's PositionalEmbedding, [length, d] (d even): sin on even
  features, cos on odd ones, frequencies 10000^(-2i/d). A numpy constant; jit folds it into the program."""
  pos = np.arange(length, dtype=np.float32)[:, None]
  freq = np.exp(np.arange(0, d, 2, dtype=np.float32) * -(math.log(10000.0) / d))
  table = np.zeros((length, d), np.float32)
  table[:, 0::2] = np.sin(pos * freq)
  table[:, 1::2] = np.cos(pos * freq)
  return table


class BatchNorm(nnx.Module):
  """PyTorch's BatchNorm1d over the last (feature) axis of `h: [K', ..., d]`: eps 1e-5, momentum 0.1, affine.

  Training normalises every segment with its own batch statistics (mean and biased variance over all axes but
  the segment axis and the features), exactly as the official K separate passes would, and the running
  averages take K successive momentum updates, one per segment in order, with PyTorch's unbiased variance.
  Eval (`ctx.training` False) normalises with the running averages. These are `nnx.BatchStat`s: never trained
  by gradient, carried through the train step as state (steps.split) and saved and restored with the backbone.
  """

  def __init__(self, d: int, *, momentum: float = 0.1, epsilon: float = 1e-5):
    self.scale = nnx.Param(jnp.ones((d,)))
    self.bias = nnx.Param(jnp.zeros((d,)))
    self.mean = nnx.BatchStat(jnp.zeros((d,)))
    self.var = nnx.BatchStat(jnp.ones((d,)))
    self.momentum = momentum
    self.epsilon = epsilon

  def __call__(self, h: jax.Array, ctx: Ctx) -> jax.Array:
    if ctx.training:
      axes = tuple(range(1, h.ndim - 1))
      mean = h.mean(axis=axes, keepdims=True)  # [K', 1, ..., d]: per segment
      var = jnp.square(h - mean).mean(axis=axes, keepdims=True)
      n = math.prod(h.shape[1:-1])
      keep, decay = self.update_weights(h.shape[0], ctx)
      seg_mean = jax.lax.stop_gradient(mean.reshape(h.shape[0], -1))
      seg_var = jax.lax.stop_gradient(var.reshape(h.shape[0], -1)) * (n / max(n - 1, 1))
      self.mean[...] = keep * self.mean[...] + decay @ seg_mean
      self.var[...] = keep * self.var[...] + decay @ seg_var
    else:
      mean, var = self.mean[...], self.var[...]
    return (h - mean) / jnp.sqrt(var + self.epsilon) * self.scale[...] + self.bias[...]

  def update_weights(self, k: int, ctx: Ctx):
    """The running averages after K' sequential updates r <- (1 - m_k) r + m_k s_k, one per segment in order, as
    (weight of r, weights [K'] of the segments' statistics): m_k = momentum, or 0 for a segment that does not
    count (ctx.active), so it leaves r as it was."""
    m = self.momentum
    if ctx.active is None or ctx.active.shape[0] != k:  # every segment counts: a constant, folded by jit
      return (1.0 - m) ** k, m * (1.0 - m) ** np.arange(k - 1, -1, -1)
    mk = jnp.where(ctx.active, m, 0.0)  # [K']
    after = jnp.cumprod((1.0 - mk)[::-1])[::-1]  # [K']: prod_{j >= k} (1 - m_j)
    later = jnp.concatenate([after[1:], jnp.ones(1)])  # prod_{j > k} (1 - m_j)
    return after[0], mk * later
