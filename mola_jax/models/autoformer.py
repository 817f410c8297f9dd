"""Autoformer (Wu et al., NeurIPS 2021) as TSLib runs it for long-term forecasting, and as the official MoLA fork
builds it (models/Autoformer.py, layers/Autoformer_EncDec.py, layers/AutoCorrelation.py there).

The input window is split into seasonal and trend parts by a moving average (kernel 25, TSLib's series_decomp:
dlinear.decompose). The decoder's seasonal input is the last `label_len` seasonal steps followed by zeros; its
trend input is the last `label_len` trend steps followed by the window's mean. Both embeddings are TSLib's
DataEmbedding_wo_pos: a circular kernel-3 convolution of the values plus a timeF embedding, no positions.

* Encoder layer: x = decomp(x + Drop(AutoCorr(x))); x = decomp(x + FFN(x)), keeping the seasonal parts.
* Decoder layer: the same with self and cross auto-correlation and three decompositions; the three trends they
  remove are summed and projected to the channels by a circular kernel-3 convolution (no bias), and every
  layer's projected trend is added to the trend input.
* After each stack, TSLib's my_Layernorm (LayerNorm, then minus the mean over time); the decoder's output goes
  through the projection head. Forecast = trend + seasonal, the last pred_len steps.

Auto-correlation replaces attention: R(tau) = irfft(rfft(Q) * conj(rfft(K))), averaged over heads and channels;
V is rolled back by the top_k = int(factor * ln L) delays with the largest R and summed with softmax(R) weights.
Training and evaluation pick the delays differently, as TSLib does (`top_delays`): training takes the delays of
the batch-mean R, the same for every sample of the batch (time_delay_agg_training); evaluation takes each
sample's own (time_delay_agg_inference).

Decisions:
* FFN biases. Upstream Autoformer builds both FFNs from kernel-1 convolutions without bias. The MoLA fork
  replaced the encoder FFN by its shared FFNLayer, which has biases (docs/method.md §9), and kept the decoder's
  bias-free convolutions. This follows the fork, the model whose encoder FFN MoLA adapts: biased encoder FFN,
  bias-free decoder FFN. The default ETTh1 model has 10,541,063 parameters (upstream's: 5,120 fewer).
* TSLib's irfft takes its default length 2 (L // 2), one step short for an odd L; here it is L, the circular
  correlation at every delay. The same for every even L (all of the official settings).
* top_k is at least 1 (TSLib's int(factor * ln L) is 0 for a tiny L and would aggregate nothing) and at most L.
* TSLib builds AutoCorrelation with an attention dropout that it never applies; none here either.

Under MoLA, segment k's decoder gets the same seasonal and trend inputs and the time features of its own steps
kS ... (k+1)S - 1, as the Transformer's (docs/method.md §9; `transformer.decoder_marks`). In training each
segment picks its delays from its own batch mean, as K separate passes would.

Adapted layer groups: "ffn" (both FFN dense layers of every encoder layer: the official MoLA Autoformer's
placement, the default), "dec_ffn" (the same in the decoder) and "attn" (Q/K/V/O of every auto-correlation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax import sharding
from mola_jax.models.dlinear import decompose
from mola_jax.models.layers import (
  Attention,
  Ctx,
  Dense,
  dropout,
  feed_forward,
  ffn_layers,
  layer_norm,
  torch_uniform,
)
from mola_jax.models.transformer import DataEmbedding, circular_conv3, decoder_marks


def num_delays(length: int, factor: float) -> int:
  """TSLib's top_k = int(factor * ln L), kept within 1 .. L."""
  return min(max(int(factor * math.log(length)), 1), length)


def autocorrelation(q: jax.Array, k: jax.Array) -> jax.Array:
  """q, k [..., L, c] (leading axes broadcast) -> R [..., L]: R[tau] = mean over channels of the circular
  correlation sum_t q[(t + tau) mod L] k[t], computed as irfft(rfft(q) * conj(rfft(k))).

  TSLib averages over heads and channels after the inverse transform; the transform is linear, so the mean is
  taken before it here (one inverse FFT per sample instead of one per channel). In float32 at least: the FFT
  has no bfloat16."""
  n, dtype = q.shape[-2], jnp.promote_types(q.dtype, jnp.float32)
  spectrum = jnp.fft.rfft(q.astype(dtype), axis=-2) * jnp.conj(jnp.fft.rfft(k.astype(dtype), axis=-2))
  return jnp.fft.irfft(spectrum.mean(axis=-1), n=n, axis=-1)


def top_delays(corr: jax.Array, top_k: int, *, training: bool) -> tuple[jax.Array, jax.Array]:
  """corr [..., B, L] (axis -2 is the batch) -> (delays int32 [..., B, top_k], weights [..., B, top_k]).

  training (TSLib's time_delay_agg_training): the top_k delays of the batch-mean correlation, the same for every
  sample, each sample weighting them by the softmax of its own correlations there.
  evaluation (time_delay_agg_inference): every sample's own top_k delays, weighted by the softmax of their
  correlations. A result therefore depends on the other samples of the batch in training only."""
  if training:
    _, shared = jax.lax.top_k(corr.mean(axis=-2, keepdims=True), top_k)  # [..., 1, top_k]
    delays = jnp.broadcast_to(shared, corr.shape[:-1] + (top_k,))
    scores = jnp.take_along_axis(corr, delays, axis=-1)
  else:
    scores, delays = jax.lax.top_k(corr, top_k)
  return delays, jax.nn.softmax(scores, axis=-1)


def delay_aggregate(v: jax.Array, delays: jax.Array, weights: jax.Array) -> jax.Array:
  """v [..., L, c], delays and weights [..., top_k] -> [..., L, c]: out[t] = sum_i weights[i] v[(t + delays[i])
  mod L], i.e. v rolled back by every delay (torch.roll(v, -delay)) and weighted.

  Written as one [L, L] mixing matrix per sample, mix[t, s] = the weight of delay (s - t) mod L, and one matmul:
  exact (each entry is one weight or zero) and without top_k rolled copies of v."""
  n = v.shape[-2]
  per_delay = (weights[..., None] * jax.nn.one_hot(delays, n, dtype=weights.dtype)).sum(axis=-2)  # [..., L]
  offsets = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n  # [t, s] -> the delay (s - t) mod L
  return jnp.take(per_delay, offsets, axis=-1).astype(v.dtype) @ v


class AutoCorrelation(Attention):
  """TSLib's AutoCorrelationLayer: Attention's biased Q/K/V/O projections (group "attn", roles q, k, v, o) around
  the auto-correlation instead of softmax attention.

  TSLib splits d_model into heads, but averages R over heads and channels alike and rolls every head by the same
  delays: the heads matter only to a per-head adapter (IA3). Keys and values are cut to the queries' length, or
  padded after the projection with zeros up to it, as TSLib does."""

  def __init__(self, d_model: int, n_heads: int, factor: float, *, rngs: nnx.Rngs, make_adapter):
    super().__init__(d_model, n_heads, 0.0, rngs=rngs, make_adapter=make_adapter)
    self.factor = factor

  def __call__(self, xq: jax.Array, xkv: jax.Array, ctx: Ctx) -> jax.Array:
    """xq [K', B, N, d], xkv [K', B, M, d] (the K' of the two may differ) -> [K', B, N, d]."""
    n, m = xq.shape[-2], xkv.shape[-2]
    if m > n:  # the projections act per step: cutting before them is the same as after
      xkv = xkv[..., :n, :]
    q, k, v = self.project(xq, xkv)
    if m < n:
      pad = [(0, 0)] * (k.ndim - 2) + [(0, n - m), (0, 0)]
      k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    corr = autocorrelation(q, k)  # [K', B, N]
    delays, weights = top_delays(corr, num_delays(n, self.factor), training=ctx.training)
    return self.o(delay_aggregate(v, delays, weights))


class SeasonalLayerNorm(nnx.Module):
  """TSLib's my_Layernorm: LayerNorm over the features, then minus its mean over time (axis -2), so every
  feature of the output has zero mean over the steps."""

  def __init__(self, d: int, rngs: nnx.Rngs):
    self.norm = layer_norm(d, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.norm(x)
    return h - h.mean(axis=-2, keepdims=True)


class EncoderLayer(nnx.Module):
  """x = decomp(x + Drop(AutoCorr(x))); out = decomp(x + Drop(W2 Drop(GELU(W1 x)))), the seasonal parts.
  W1/W2 (with biases, as the MoLA fork's FFN) are group "ffn", the layers MoLA adapts."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, make_adapter):
    d = cfg.d_model
    self.attn = AutoCorrelation(d, cfg.n_heads, cfg.factor, rngs=rngs, make_adapter=make_adapter)
    self.ffn1, self.ffn2 = ffn_layers(d, cfg.d_ff, "ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("ffn", "ffn_block", d, d, rngs)
    self.kernel_size = cfg.moving_avg
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, ctx: Ctx) -> jax.Array:
    """x [K', B, L, d] -> [K', B, L, d]."""
    p, names = self.dropout_rate, sharding.activation_axes(x.ndim)
    x = sharding.constrain(x, names)
    x, _ = decompose(x + dropout(self.attn(x, x, ctx), p, ctx), self.kernel_size)
    x, _ = decompose(x + feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block), self.kernel_size)
    return sharding.constrain(x, names)


class DecoderLayer(nnx.Module):
  """x = decomp(x + Drop(SelfAutoCorr(x))); x = decomp(x + Drop(CrossAutoCorr(x, enc))); x = decomp(x + FFN(x)).
  Returns the seasonal part and the three removed trends, summed and projected to the channels by a circular
  kernel-3 convolution without bias. The FFN (group "dec_ffn") has no biases, as in TSLib and the MoLA fork."""

  def __init__(self, cfg, channels: int, *, rngs: nnx.Rngs, make_adapter):
    d = cfg.d_model
    self.self_attn = AutoCorrelation(d, cfg.n_heads, cfg.factor, rngs=rngs, make_adapter=make_adapter)
    self.cross_attn = AutoCorrelation(d, cfg.n_heads, cfg.factor, rngs=rngs, make_adapter=make_adapter)
    self.ffn1, self.ffn2 = ffn_layers(d, cfg.d_ff, "dec_ffn", rngs=rngs, make_adapter=make_adapter, use_bias=False)
    self.ffn_block = make_adapter("dec_ffn", "ffn_block", d, d, rngs)
    # Conv1d(d_model -> channels, kernel 3) with PyTorch's default init (fan_in = 3 d_model), taps t-1, t, t+1.
    self.trend = nnx.Param(torch_uniform(rngs.params(), (3, d, channels), 3 * d))
    self.kernel_size = cfg.moving_avg
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, enc: jax.Array, ctx: Ctx) -> tuple[jax.Array, jax.Array]:
    """x [K, B, N, d], enc [K', B, L, d] -> (seasonal [K, B, N, d], trend [K, B, N, channels])."""
    p, kernel = self.dropout_rate, self.kernel_size
    x, trend1 = decompose(x + dropout(self.self_attn(x, x, ctx), p, ctx), kernel)
    x, trend2 = decompose(x + dropout(self.cross_attn(x, enc, ctx), p, ctx), kernel)
    x, trend3 = decompose(x + feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block), kernel)
    return x, circular_conv3(trend1 + trend2 + trend3, self.trend[...])


class Autoformer(nnx.Module):
  """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, K*S, F]} -> [K, B, pred_len = S, D]."""

  # TSLib's Autoformer_ETTh1.sh (factor 3). n_heads splits Q/K/V for per-head adapters only (auto-correlation
  # averages over heads); each auto-correlation aggregates int(factor * ln L) delays; moving_avg is the odd kernel
  # of every series decomposition; the encoder FFNs are biased, the decoder's not (as the fork). label_len follows
  # data.label_len.
  DEFAULTS = {
    "d_model": 512,
    "d_ff": 2048,
    "n_heads": 8,
    "e_layers": 2,
    "d_layers": 1,
    "factor": 3,
    "moving_avg": 25,
    "dropout": 0.1,
    "label_len": 48,
  }
  GROUPS = ("ffn", "dec_ffn", "attn")
  HEAD = True  # the decoder's projection: lora_heads gives each segment its own
  MARKS = "horizon"  # the time features (and future covariates) of the look-back and of the decoder's steps
  ADAPTED_GROUPS = ("ffn",)  # the official MoLA Autoformer adapts the encoder FFN (docs/method.md §9)

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    if not 0 < cfg.label_len <= seq_len:
      raise ValueError(f"autoformer.label_len must be in 1 .. seq_len={seq_len}, got {cfg.label_len}")
    if cfg.moving_avg % 2 == 0 or not cfg.moving_avg > 0:
      raise ValueError(
        f"autoformer.moving_avg must be odd and positive (TSLib's decomposition keeps the length only then), "
        f"got {cfg.moving_avg}"
      )
    if not cfg.factor > 0:
      raise ValueError(f"autoformer.factor must be positive, got {cfg.factor}")
    self.label_len, self.pred_len, self.seq_len = cfg.label_len, pred_len, seq_len
    self.kernel_size = cfg.moving_avg
    self.enc_embed = DataEmbedding(channels, marks, cfg.d_model, rngs=rngs, positions=False)
    self.encoder = nnx.List([EncoderLayer(cfg, rngs=rngs, make_adapter=make_adapter) for _ in range(cfg.e_layers)])
    self.enc_norm = SeasonalLayerNorm(cfg.d_model, rngs)
    self.dec_embed = DataEmbedding(channels, marks, cfg.d_model, rngs=rngs, positions=False)
    self.decoder = nnx.List(
      [DecoderLayer(cfg, channels, rngs=rngs, make_adapter=make_adapter) for _ in range(cfg.d_layers)]
    )
    self.dec_norm = SeasonalLayerNorm(cfg.d_model, rngs)
    self.projection = Dense(
      cfg.d_model, channels, rngs=rngs, adapter=make_adapter("head", "head", cfg.d_model, channels, rngs)
    )
    self.dropout_rate = cfg.dropout

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first encoder FFN matmul of one segment's batch: one row per look-back step."""
    return batch_size * self.seq_len, *self.encoder[0].ffn1.kernel.shape

  def decoder_inputs(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, L, D] -> the decoder's seasonal and trend inputs, each [1, B, label_len + S, D] (the same for every
    segment): the last label_len seasonal steps and zeros; the last label_len trend steps and the window mean."""
    known, s = self.label_len, self.pred_len
    seasonal, trend = decompose(x, self.kernel_size)
    zeros = jnp.zeros((x.shape[0], s, x.shape[-1]), x.dtype)
    mean = jnp.broadcast_to(x.mean(axis=1, keepdims=True), zeros.shape)
    return (
      jnp.concatenate([seasonal[:, -known:], zeros], axis=1)[None],
      jnp.concatenate([trend[:, -known:], mean], axis=1)[None],
    )

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    p, s = self.dropout_rate, self.pred_len
    h = self.enc_embed(batch["x"], batch["x_mark"])[None]  # [1, B, L, d]
    h = dropout(ctx.split_segments(h), p, ctx)
    for layer in self.encoder:
      h = layer(h, ctx)
    enc = self.enc_norm(h)  # [K', B, L, d]
    seasonal, trend = self.decoder_inputs(batch["x"])
    marks = decoder_marks(batch, self.label_len, s, ctx)  # [K, B, label_len + S, F]
    g = dropout(self.dec_embed(seasonal, marks), p, ctx)  # [K, B, label_len + S, d]
    for layer in self.decoder:
      g, residual_trend = layer(g, enc, ctx)
      trend = trend + residual_trend
    # The projection acts per step: only the S forecast steps need it (the norm's time mean needs them all).
    return trend[..., -s:, :] + self.projection(self.dec_norm(g)[..., -s:, :])  # [K, B, S, D]
