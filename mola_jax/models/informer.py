"""Informer (Zhou et al., AAAI 2021) as TSLib runs it for long-term forecasting, the model the official MoLA
Informer (tuners/molora/InformerMoLora.py) subclasses: the Transformer's encoder-decoder layout and embeddings
(models/transformer.py) with ProbSparse attention everywhere and a distilling convolution between encoder layers.

* Every attention is ProbSparse (`prob_attention`), as in TSLib's models/Informer.py: the encoder's self-attention
  and the decoder's cross-attention unmasked, the decoder's self-attention causal. (The original Informer2020 code
  used full attention for the cross-attention; TSLib and the MoLA fork do not.) ProbSparse attention has no
  attention dropout: TSLib's ProbAttention defines one but never applies it.
* Distilling (`distil`, TSLib's default): after every encoder layer but the last, `DistilConv`: circular Conv1d
  (kernel 3, padding 2) -> BatchNorm1d -> ELU -> MaxPool1d(3, stride 2, padding 1), taking L steps to
  (L + 1) // 2 + 1 (96 -> 49). Then a final LayerNorm. The decoder ends in a LayerNorm and a projection to the
  D channels; its last pred_len steps are the forecast. No instance normalisation.

Under MoLA, segment k's decoder receives the same history and zeros but the time features of its own steps
k*S ... (k+1)*S - 1, as the Transformer's (docs/method.md §9).

The key sampling. TSLib draws the keys each query is measured on with torch.randint in every forward pass, so
each of the official K passes (one per segment) draws its own. Here a training pass derives them from the step's
key, the call site (`ctx.site`, advanced as dropout does) and the segment's id: each segment draws its own sample,
the same whichever other segments are computed beside it (as its dropout masks: layers.keep_mask). A prefix that
all segments share (K' = 1 while ctx.segments > 1) draws one sample under the shared id. Evaluation uses one fixed
key (EVAL_SEED, folded with the call site) for every batch and every segment, so that a validation or test score
is deterministic and a stage-2 model with zero adapters forecasts exactly as its stage-1 model does; TSLib's eval
draws a fresh sample per batch, whose expectation this fixed draw estimates.

BatchNorm in the distilling layers follows layers.BatchNorm (as PatchTST's): training normalises every segment
with its own batch statistics over batch and time (BatchNorm1d over the channels of [B, d, L]), and the running
averages take one momentum update per segment; stage 2 keeps the frozen backbone in training mode, as the
official code does, so they keep updating there (BatchStat, carried by the train step). Eval uses them.

Adapted layer groups: "ffn" (both FFN dense layers of every encoder layer: the official MoLA Informer's
`encoder.*.ffn`, and the default), "dec_ffn" (the decoder FFN) and "attn" (Q/K/V/O of every attention). The
distilling convolutions are never adapted. Loading PyTorch weights into DistilConv: kernel[t * d + i, o] =
downConv.weight[o, i, t].
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax import sharding
from mola_jax.models.layers import (
  SHARED_SEGMENT,
  Attention,
  BatchNorm,
  Ctx,
  Dense,
  dropout,
  feed_forward,
  ffn_layers,
  layer_norm,
  torch_uniform,
)
from mola_jax.models.transformer import DataEmbedding, decoder_inputs

EVAL_SEED = 0  # the key sampling of every evaluation pass (module docstring)


# ---------------------------------------------------------------------------------------------------------------
# ProbSparse attention as pure functions


def sample_sizes(factor: int, l_q: int, l_k: int) -> tuple[int, int]:
  """-> (u, n): the u = c * ceil(ln L_Q) queries that get real attention and the n = c * ceil(ln L_K) keys each
  query's sparsity is measured on, each at most its length (TSLib's ProbAttention). At least 1 (TSLib gets 0 for
  a length of 1 and fails)."""
  grow = lambda length: max(1, min(factor * math.ceil(math.log(length)), length))
  return grow(l_q), grow(l_k)


def sample_keys(ctx: Ctx, segments: int, l_q: int, l_k: int, n: int) -> jax.Array:
  """int32 [K' or 1, L_Q, n]: for every query, n key positions drawn uniformly with replacement (TSLib's
  torch.randint(L_K, (L_Q, n)), shared by the batch and the heads). `segments`: K' of the attention's activations.
  Training: one draw per segment id (or the shared id for a shared prefix); eval: one fixed draw for all."""
  site = ctx.site
  ctx.site += 1
  if not ctx.training:
    return jax.random.randint(jax.random.fold_in(jax.random.key(EVAL_SEED), site), (1, l_q, n), 0, l_k)
  ids = ctx.ids() if segments == ctx.segments else jnp.full((1,), SHARED_SEGMENT, jnp.uint32)
  key = jax.random.fold_in(ctx.key, site)
  return jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (l_q, n), 0, l_k))(ids)


def _measure(scores: jax.Array, sample_idx: jax.Array) -> jax.Array:
  """scores [..., L_Q, L_K] (q . k of every pair), sample_idx [..., L_Q, n] -> M [..., L_Q]."""
  idx = jnp.broadcast_to(sample_idx, scores.shape[:-1] + sample_idx.shape[-1:])
  sampled = jnp.take_along_axis(scores, idx, axis=-1)  # [..., L_Q, n]
  return sampled.max(axis=-1) - sampled.sum(axis=-1) / scores.shape[-1]


def sparsity_measure(q: jax.Array, k: jax.Array, sample_idx: jax.Array) -> jax.Array:
  """q [..., L_Q, E], k [..., L_K, E], sample_idx int [..., L_Q, n] (leading axes broadcast) -> M [..., L_Q]:
  query i's max of q_i . k_j over its n sampled keys j minus their sum divided by L_K (TSLib divides by L_K, not by
  n). Unscaled by 1/sqrt(E), as TSLib's (the ranking is the same either way)."""
  return _measure(q @ k.swapaxes(-1, -2), sample_idx)


def prob_attention(
  q: jax.Array, k: jax.Array, v: jax.Array, sample_idx: jax.Array, *, u: int, causal: bool
) -> tuple[jax.Array, jax.Array]:
  """ProbSparse attention. q [..., L_Q, E], k [..., L_K, E], v [..., L_K, E_v], sample_idx [..., L_Q, n] (leading
  axes broadcast) -> (out [..., L_Q, E_v], top int [..., u]).

  The u queries of largest sparsity measure (`top`) attend to every key with softmax(q k^T / sqrt(E)) (causal: to
  the keys at or before their own step); every other query outputs the mean of V (unmasked) or the cumulative sum
  of V up to its step (causal; L_Q = L_K), TSLib's 'initial context'.

  Every q . k product is computed once, as one matmul, and the measure and the top rows read from it: the same
  numbers as TSLib's sampled and reduced products (which save FLOPs only at lengths far beyond these)."""
  scores = q @ k.swapaxes(-1, -2)  # [..., L_Q, L_K]
  l_q, l_k = scores.shape[-2:]
  top = jax.lax.top_k(_measure(scores, sample_idx), u)[1]  # [..., u]; any order (TSLib: sorted=False)
  rows = jnp.take_along_axis(scores, jnp.broadcast_to(top[..., None], top.shape + (l_k,)), axis=-2)  # [..., u, L_K]
  rows = rows / math.sqrt(q.shape[-1])
  if causal:  # query `top` may attend to keys 0 .. top
    rows = jnp.where(jnp.arange(l_k) > top[..., None], -jnp.inf, rows)
  picked = jax.nn.softmax(rows, axis=-1) @ v  # [..., u, E_v]
  if causal:
    if l_q != l_k:
      raise ValueError(f"causal ProbSparse attention needs as many queries as keys, got {l_q} and {l_k}")
    context = jnp.cumsum(v, axis=-2)
  else:
    context = v.mean(axis=-2, keepdims=True)
  context = jnp.broadcast_to(context, picked.shape[:-2] + (l_q, picked.shape[-1]))
  index = jnp.broadcast_to(top[..., None], picked.shape)
  return jnp.put_along_axis(context, index, picked, axis=-2, inplace=False), top


class ProbAttention(Attention):
  """TSLib's AttentionLayer(ProbAttention): the biased Q/K/V/O projections of layers.Attention (group "attn",
  roles q/k/v/o), multi-head ProbSparse attention between them, sampling factor c = `factor`."""

  def __init__(self, d_model: int, n_heads: int, factor: int, *, causal: bool, rngs: nnx.Rngs, make_adapter):
    super().__init__(d_model, n_heads, 0.0, rngs=rngs, make_adapter=make_adapter)
    self.factor, self.causal = factor, causal

  def __call__(self, xq: jax.Array, xkv: jax.Array, ctx: Ctx) -> jax.Array:
    """xq [K', B, L_Q, d], xkv [K', B, L_K, d] (K' may differ: 1 vs K) -> [K', B, L_Q, d]."""
    heads = lambda t: t.reshape(t.shape[:-1] + (self.n_heads, -1)).swapaxes(-2, -3)  # [K', B, H, L, dh]
    q, k, v = map(heads, self.project(xq, xkv))
    u, n = sample_sizes(self.factor, q.shape[-2], k.shape[-2])
    idx = sample_keys(ctx, max(q.shape[0], k.shape[0]), q.shape[-2], k.shape[-2], n)  # [K' or 1, L_Q, n]
    out, _ = prob_attention(q, k, v, idx[:, None, None], u=u, causal=self.causal)
    out = out.swapaxes(-2, -3)  # [K', B, L_Q, H, dh]
    return self.o(out.reshape(out.shape[:-2] + (-1,)))


# ---------------------------------------------------------------------------------------------------------------
# Layers


def max_pool(h: jax.Array) -> jax.Array:
  """MaxPool1d(kernel 3, stride 2, padding 1) over the step axis of h [..., L, d] -> [..., (L - 1) // 2 + 1, d]."""
  lead = (1,) * (h.ndim - 2)
  pad = ((0, 0),) * (h.ndim - 2) + ((1, 1), (0, 0))
  return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, lead + (3, 1), lead + (2, 1), pad)


def distilled_len(length: int) -> int:
  """Steps after a DistilConv: the conv gives L + 2 * 2 - 3 + 1, the pool (that + 2 * 1 - 3) // 2 + 1."""
  return (length + 2 + 2 * 1 - 3) // 2 + 1


class DistilConv(nnx.Module):
  """TSLib's ConvLayer: circular Conv1d(d -> d, kernel 3, padding 2, bias) -> BatchNorm1d -> ELU -> MaxPool1d(3, 2,
  padding 1). Never adapted."""

  def __init__(self, d: int, *, rngs: nnx.Rngs):
    # PyTorch's default Conv1d init (fan_in = 3 d); the taps t-2, t-1, t stacked along the input axis.
    self.kernel = nnx.Param(torch_uniform(rngs.params(), (3 * d, d), 3 * d))
    self.bias = nnx.Param(torch_uniform(rngs.params(), (d,), 3 * d))
    self.norm = BatchNorm(d)

  def __call__(self, h: jax.Array, ctx: Ctx) -> jax.Array:
    """h [K', B, L, d] -> [K', B, distilled_len(L), d]."""
    n = h.shape[-2]
    padded = jnp.concatenate([h[..., -2:, :], h, h[..., :2, :]], axis=-2)  # circular padding 2: [.., L + 4, d]
    taps = jnp.concatenate([padded[..., t : t + n + 2, :] for t in range(3)], axis=-1)  # [.., L + 2, 3 d]
    y = self.norm(taps @ self.kernel[...] + self.bias[...], ctx)  # per feature over batch and steps
    return max_pool(jax.nn.elu(y))


class EncoderLayer(nnx.Module):
  """TSLib's post-norm encoder layer with ProbSparse self-attention: x = LN1(x + Drop(ProbAttn(x))); out = LN2(x +
  FFN(x)). The FFN's W1/W2 (group "ffn") are the layers MoLA adapts."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, make_adapter):
    d = cfg.d_model
    self.attn = ProbAttention(d, cfg.n_heads, cfg.factor, causal=False, rngs=rngs, make_adapter=make_adapter)
    self.norm1 = layer_norm(d, rngs)
    self.ffn1, self.ffn2 = ffn_layers(d, cfg.d_ff, "ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("ffn", "ffn_block", d, d, rngs)
    self.norm2 = layer_norm(d, rngs)
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, ctx: Ctx) -> jax.Array:
    """x [K', B, L, d] -> [K', B, L, d] (K' = K from the first adapted layer on)."""
    p = self.dropout_rate
    names = sharding.activation_axes(x.ndim)  # a no-op without a mesh
    x = sharding.constrain(x, names)
    x = self.norm1(x + dropout(self.attn(x, x, ctx), p, ctx))
    y = feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block)
    return sharding.constrain(self.norm2(x + y), names)


class DecoderLayer(nnx.Module):
  """TSLib's post-norm decoder layer with ProbSparse attention: x = LN1(x + Drop(causal ProbSelfAttn(x))); x =
  LN2(x + Drop(ProbCrossAttn(x, enc))); out = LN3(x + FFN(x)). The FFN is group "dec_ffn"."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, make_adapter):
    d, h, c = cfg.d_model, cfg.n_heads, cfg.factor
    self.self_attn = ProbAttention(d, h, c, causal=True, rngs=rngs, make_adapter=make_adapter)
    self.norm1 = layer_norm(d, rngs)
    self.cross_attn = ProbAttention(d, h, c, causal=False, rngs=rngs, make_adapter=make_adapter)
    self.norm2 = layer_norm(d, rngs)
    self.ffn1, self.ffn2 = ffn_layers(d, cfg.d_ff, "dec_ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("dec_ffn", "ffn_block", d, d, rngs)
    self.norm3 = layer_norm(d, rngs)
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, enc: jax.Array, ctx: Ctx, rows: slice | None = None) -> jax.Array:
    """x [K, B, N, d], enc [K', B, L', d] -> [K, B, N, d]. `rows`: only these steps' outputs are needed (the last
    layer); the attentions still run over every step (the top queries are chosen among all of them), the FFN and
    LN3 only over `rows`."""
    p = self.dropout_rate
    x = self.norm1(x + dropout(self.self_attn(x, x, ctx), p, ctx))
    x = self.norm2(x + dropout(self.cross_attn(x, enc, ctx), p, ctx))
    x = x if rows is None else x[..., rows, :]
    return self.norm3(x + feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block))


class Informer(nnx.Module):
  """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, K*S, F]} -> [K, B, pred_len = S, D]."""

  # TSLib's Informer_ETTh1.sh on run.py's defaults. factor c: c * ceil(ln L) queries get real attention, measured
  # on c * ceil(ln L_K) sampled keys (the ETTh1 script passes 3; run.py's default is 1, the paper's 5). distil: a
  # distilling conv (L -> (L + 1) // 2 + 1) after each encoder layer but the last. label_len follows data.label_len.
  DEFAULTS = {
    "d_model": 512,
    "d_ff": 2048,
    "n_heads": 8,
    "e_layers": 2,
    "d_layers": 1,
    "factor": 3,
    "distil": True,
    "dropout": 0.1,
    "label_len": 48,
  }
  GROUPS = ("ffn", "dec_ffn", "attn")
  HEAD = True  # the projection: lora_heads gives each segment its own
  MARKS = "horizon"  # the time features (and future covariates) of the look-back and of the decoder's steps
  ADAPTED_GROUPS = ("ffn",)  # adapted when --config.adapt.targets is unset: the official `encoder.*.ffn`

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    if not 0 < cfg.label_len <= seq_len:
      raise ValueError(f"informer.label_len must be in 1 .. seq_len={seq_len}, got {cfg.label_len}")
    if cfg.d_model % cfg.n_heads:
      raise ValueError(f"informer.d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
    self.label_len, self.pred_len, self.seq_len = cfg.label_len, pred_len, seq_len
    d = cfg.d_model
    self.enc_embed = DataEmbedding(channels, marks, d, rngs=rngs)
    self.encoder = nnx.List([EncoderLayer(cfg, rngs=rngs, make_adapter=make_adapter) for _ in range(cfg.e_layers)])
    self.distil = nnx.List([DistilConv(d, rngs=rngs) for _ in range(cfg.e_layers - 1)] if cfg.distil else [])
    self.enc_norm = layer_norm(d, rngs)
    self.dec_embed = DataEmbedding(channels, marks, d, rngs=rngs)
    self.decoder = nnx.List([DecoderLayer(cfg, rngs=rngs, make_adapter=make_adapter) for _ in range(cfg.d_layers)])
    self.dec_norm = layer_norm(d, rngs)
    self.projection = Dense(d, channels, rngs=rngs, adapter=make_adapter("head", "head", d, channels, rngs))
    self.dropout_rate = cfg.dropout

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first encoder FFN matmul of one segment's batch: one row per look-back step
    (the first layer runs before any distilling)."""
    return batch_size * self.seq_len, *self.encoder[0].ffn1.kernel.shape

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    p = self.dropout_rate
    h = self.enc_embed(batch["x"], batch["x_mark"])[None]  # [1, B, L, d]
    h = dropout(ctx.split_segments(h), p, ctx)
    for i, layer in enumerate(self.encoder):
      h = layer(h, ctx)
      if i < len(self.distil):
        h = self.distil[i](h, ctx)  # L -> (L + 1) // 2 + 1
    enc = self.enc_norm(h)  # [K', B, L', d]
    values, marks = decoder_inputs(batch, ctx, self.label_len, self.pred_len)
    g = dropout(self.dec_embed(values, marks), p, ctx)  # [K, B, label_len + S, d]
    for i, layer in enumerate(self.decoder):
      g = layer(g, enc, ctx, rows=slice(-self.pred_len, None) if i == len(self.decoder) - 1 else None)
    return self.projection(self.dec_norm(g))  # [K, B, S, D]
