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


@dataclasses.dataclass(frozen=True)
class Ctx:
  """Per-call settings of a forward pass: dropout randomness (None = eval) and the number of segments K."""

  rngs: nnx.Rngs | None = None
  segments: int = 1
  # Training only: keep one set of dropout masks for the shared prefix instead of one per segment.
  share_prefix_dropout: bool = False
  # False: compute the layers before the first adapted one K times too (for benchmarks of the saving).
  share_prefix: bool = True

  @property
  def training(self) -> bool:
    return self.rngs is not None

  def split_segments(self, h: jax.Array) -> jax.Array:
    """[1, ...] -> [K, ...] in training, so that every segment draws its own dropout masks from here on,
    as the official K separate passes do. In eval the prefix stays shared: that is exact and K times cheaper."""
    own_masks = self.training and not self.share_prefix_dropout
    if self.segments > 1 and h.shape[0] == 1 and (own_masks or not self.share_prefix):
      return jnp.broadcast_to(h, (self.segments,) + h.shape[1:])
    return h


def dropout(x: jax.Array, rate: float, ctx: Ctx) -> jax.Array:
  if not ctx.training or rate == 0.0:
    return x
  keep = jax.random.bernoulli(ctx.rngs.dropout(), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def torch_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
  """PyTorch's default Linear/Conv1d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and biases alike."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Dense(nnx.Module):
  """`h @ kernel + bias`, kernel [d_in, d_out]. With an adapter, segment k computes `h @ (kernel + delta[k])`.

  The adapter's term is added on its own, `h @ kernel + adapter(h)`, rather than merged into the kernel first:
  with B = 0 the output is then bit-identical to the frozen layer (not merely equal up to rounding), a small
  delta keeps its precision instead of being rounded into a large kernel (which matters in bf16), and a bank
  may apply its delta factored, never forming it (adapters.py).
  """

  def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, adapter: nnx.Module | None = None,
               axes: tuple[str | None, str | None] | None = None):
    # axes: logical names of (d_in, d_out) for the sharding rules (mola_jax/sharding.py); None: replicated.
    kernel_axes, bias_axes = (sharding.axes(*axes), sharding.axes(axes[1])) if axes else ({}, {})
    self.kernel = nnx.Param(torch_uniform(rngs.params(), (d_in, d_out), d_in), **kernel_axes)
    self.bias = nnx.Param(torch_uniform(rngs.params(), (d_out,), d_in), **bias_axes)
    self.adapter = adapter

  def __call__(self, h: jax.Array) -> jax.Array:  # h: [K', ..., d_in] -> [K' or K, ..., d_out]
    y = h @ self.kernel[...] + self.bias[...]  # frozen path; computed once while the prefix is shared
    if self.adapter is None:
      return y
    return y + self.adapter(h)  # [K, ..., d_out]; K' = 1 broadcasts


def layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)  # PyTorch's eps, not flax's 1e-6


def gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # the official models use the exact (erf) GELU


class Attention(nnx.Module):
  """Full multi-head attention with biased Q/K/V/O projections, scale 1/sqrt(d_head), dropout on the weights."""

  def __init__(self, d_model: int, n_heads: int, dropout_rate: float, *, rngs: nnx.Rngs, make_adapter=None):
    make = make_adapter or (lambda *a: None)
    qkv, out = ("embed", "heads"), ("heads", "embed")  # logical axes of the kernels
    self.q = Dense(d_model, d_model, rngs=rngs, adapter=make("attn", d_model, d_model, rngs), axes=qkv)
    self.k = Dense(d_model, d_model, rngs=rngs, adapter=make("attn", d_model, d_model, rngs), axes=qkv)
    self.v = Dense(d_model, d_model, rngs=rngs, adapter=make("attn", d_model, d_model, rngs), axes=qkv)
    self.o = Dense(d_model, d_model, rngs=rngs, adapter=make("attn", d_model, d_model, rngs), axes=out)
    self.n_heads = n_heads
    self.dropout_rate = dropout_rate

  def __call__(self, xq: jax.Array, xkv: jax.Array, ctx: Ctx, mask: jax.Array | None = None) -> jax.Array:
    """xq [K', ..., Nq, d], xkv [K', ..., Nk, d] -> [K', ..., Nq, d]. The K' axes of the two may differ (1 vs K:
    a decoder attending to a shared encoder). mask [Nq, Nk], True = may attend (e.g. causal); None = full."""
    heads = lambda t: t.reshape(t.shape[:-1] + (self.n_heads, t.shape[-1] // self.n_heads))
    q, k, v = heads(self.q(xq)), heads(self.k(xkv)), heads(self.v(xkv))  # [K', ..., N, H, dh]
    scores = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
      scores = jnp.where(mask, scores, -jnp.inf)  # every row keeps at least one key, so no row is all -inf
    weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout_rate, ctx)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return self.o(out.reshape(out.shape[:-2] + (-1,)))


class EncoderLayer(nnx.Module):
  """TSLib's post-norm encoder layer: x = LN1(x + Drop(Attn(x))); out = LN2(x + Drop(W2 Drop(GELU(W1 x)))).
  W1/W2 are the position-wise FFN (kernel-size-1 convolutions in PyTorch): the layers MoLA adapts."""

  def __init__(self, d_model, d_ff, n_heads, dropout_rate, *, rngs: nnx.Rngs, make_adapter):
    self.attn = Attention(d_model, n_heads, dropout_rate, rngs=rngs, make_adapter=make_adapter)
    self.norm1 = layer_norm(d_model, rngs)
    self.ffn1 = Dense(d_model, d_ff, rngs=rngs, adapter=make_adapter("ffn", d_model, d_ff, rngs), axes=("embed", "mlp"))
    self.ffn2 = Dense(d_ff, d_model, rngs=rngs, adapter=make_adapter("ffn", d_ff, d_model, rngs), axes=("mlp", "embed"))
    self.norm2 = layer_norm(d_model, rngs)
    self.dropout_rate = dropout_rate

  def __call__(self, x: jax.Array, ctx: Ctx) -> jax.Array:  # [K', B, N, d]
    p = self.dropout_rate
    names = sharding.activation_axes(x.ndim)  # [segment, batch, ..., token, embed]; a no-op without a mesh
    x = sharding.constrain(x, names)
    x = self.norm1(x + dropout(self.attn(x, x, ctx), p, ctx))
    y = dropout(gelu(self.ffn1(x)), p, ctx)  # the first adapted layer: K' becomes K here
    y = dropout(self.ffn2(y), p, ctx)
    return sharding.constrain(self.norm2(x + y), names)


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
      k, m = h.shape[0], self.momentum
      # After K sequential updates r <- (1-m) r + m s_k, segment k's statistics carry weight m (1-m)^(K-1-k).
      w = m * (1.0 - m) ** np.arange(k - 1, -1, -1)  # [K']
      seg_mean = jax.lax.stop_gradient(mean.reshape(k, -1))
      seg_var = jax.lax.stop_gradient(var.reshape(k, -1)) * (n / max(n - 1, 1))
      self.mean[...] = (1.0 - m) ** k * self.mean[...] + w @ seg_mean
      self.var[...] = (1.0 - m) ** k * self.var[...] + w @ seg_var
    else:
      mean, var = self.mean[...], self.var[...]
    return (h - mean) / jnp.sqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
