"""The vanilla Transformer (Vaswani et al., 2017) as TSLib runs it for forecasting: an encoder over the look-back
steps and a decoder whose input is the last `label_len` known steps followed by zeros for the `pred_len` steps
to forecast. Both embed values with a circular kernel-3 convolution and add time-feature (timeF) and sinusoidal
position embeddings. No instance normalisation.

Under MoLA, segment k's decoder receives the same history and zeros but the time features of its own steps
k*S ... (k+1)*S - 1 (docs/method.md §9), so the decoder carries the segment axis even where no layer is adapted.

Adapted layer groups: "ffn" (both FFN dense layers of every encoder layer), "dec_ffn" (the same in every decoder
layer) and "attn" (Q/K/V/O of every attention, encoder and decoder). Unset targets adapt the encoder and decoder
FFNs; `--config.adapt.targets="('ffn',)"` gives the encoder-only placement that docs/method.md §9 reports for the
official MoLA Transformer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.layers import (
  Attention,
  Ctx,
  Dense,
  dropout,
  encode,
  encoder_layers,
  feed_forward,
  ffn_layers,
  layer_norm,
  sinusoid_positions,
  torch_uniform,
)


def circular_conv3(x: jax.Array, w: jax.Array) -> jax.Array:
  """PyTorch's Conv1d(kernel_size=3, padding=1, padding_mode="circular", bias=False) over time, channels last:
  x [..., T, c_in], w [3, c_in, c_out] (taps t-1, t, t+1) -> [..., T, c_out]."""
  return jnp.roll(x, 1, axis=-2) @ w[0] + x @ w[1] + jnp.roll(x, -1, axis=-2) @ w[2]


class DataEmbedding(nnx.Module):
  """TSLib's DataEmbedding with embed="timeF": circular Conv1d(c_in -> d, kernel 3, no bias) of the values, plus
  Linear(F -> d, no bias) of the time features, plus fixed sinusoidal positions. positions=False: TSLib's
  DataEmbedding_wo_pos (Autoformer), the same without positions. Dropout is the caller's."""

  def __init__(self, c_in: int, marks: int, d_model: int, *, rngs: nnx.Rngs, positions: bool = True):
    # kaiming_normal_(mode="fan_in", nonlinearity="leaky_relu") with slope 0.01, as TSLib initialises the conv.
    std = math.sqrt(2.0 / (1.0 + 0.01**2)) / math.sqrt(3 * c_in)
    self.token = nnx.Param(std * jax.random.normal(rngs.params(), (3, c_in, d_model)))  # taps t-1, t, t+1
    self.temporal = nnx.Param(torch_uniform(rngs.params(), (marks, d_model), marks))
    self.positions = positions

  def __call__(self, x: jax.Array, x_mark: jax.Array) -> jax.Array:
    """x [..., T, c_in], x_mark [..., T, F] (leading axes broadcast) -> [..., T, d]."""
    w = self.token[...]
    out = circular_conv3(x, w) + x_mark @ self.temporal[...]
    return (out + sinusoid_positions(x.shape[-2], w.shape[-1])) if self.positions else out


def decoder_marks(batch: dict, label_len: int, pred_len: int, ctx: Ctx) -> jax.Array:
  """The time features of every computed segment's decoder input, [K, B, label_len + S, F]: the last `label_len`
  look-back steps' (the same for every segment), then segment k's own S steps' (docs/method.md §9). Under
  training `ctx.segment_ids` may name a subset of the segments: only those are returned."""
  x_mark, y_mark = batch["x_mark"], batch["y_mark"]
  b, s = x_mark.shape[0], pred_len
  future = y_mark.reshape(b, y_mark.shape[1] // s, s, -1).swapaxes(0, 1)  # [K, B, S, F]: segment k's steps
  if ctx.segment_ids is not None:  # training may compute a subset of the segments
    future = future[jnp.asarray(ctx.segment_ids)]
  k = future.shape[0]
  history = jnp.broadcast_to(x_mark[None, :, -label_len:], (k, b, label_len, x_mark.shape[-1]))
  return jnp.concatenate([history, future], axis=2)


def decoder_inputs(batch: dict, ctx: Ctx, label_len: int, pred_len: int) -> tuple[jax.Array, jax.Array]:
  """TSLib's generative decoder input -> values [1, B, label_len + S, D] (the last label_len known steps, then
  zeros; the same for every segment) and marks [K, B, label_len + S, F] (`decoder_marks`)."""
  x = batch["x"]
  zeros = jnp.zeros((x.shape[0], pred_len, x.shape[-1]), x.dtype)
  return jnp.concatenate([x[:, -label_len:], zeros], axis=1)[None], decoder_marks(batch, label_len, pred_len, ctx)


class DecoderLayer(nnx.Module):
  """TSLib's post-norm decoder layer: x = LN1(x + Drop(causal SelfAttn(x))); x = LN2(x + Drop(CrossAttn(x, enc)));
  out = LN3(x + Drop(W2 Drop(GELU(W1 x)))). W1/W2 are the decoder FFN (group "dec_ffn")."""

  def __init__(self, d_model, d_ff, n_heads, dropout_rate, *, rngs: nnx.Rngs, make_adapter):
    self.self_attn = Attention(d_model, n_heads, dropout_rate, rngs=rngs, make_adapter=make_adapter)
    self.norm1 = layer_norm(d_model, rngs)
    self.cross_attn = Attention(d_model, n_heads, dropout_rate, rngs=rngs, make_adapter=make_adapter)
    self.norm2 = layer_norm(d_model, rngs)
    self.ffn1, self.ffn2 = ffn_layers(d_model, d_ff, "dec_ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("dec_ffn", "ffn_block", d_model, d_model, rngs)
    self.norm3 = layer_norm(d_model, rngs)
    self.dropout_rate = dropout_rate

  def __call__(self, x: jax.Array, enc: jax.Array, ctx: Ctx, rows: slice | None = None) -> jax.Array:
    """x [K, B, N, d], enc [K', B, L, d] -> [K, B, N, d]; `rows` as EncoderLayer's (a last layer whose output
    is read only at these steps)."""
    p, n = self.dropout_rate, x.shape[-2]
    causal = jnp.tril(jnp.ones((n, n), bool))  # step i attends to steps <= i
    rows = rows or slice(None)
    q = x[..., rows, :]
    x = self.norm1(q + dropout(self.self_attn(q, x, ctx, mask=causal[rows]), p, ctx))
    x = self.norm2(x + dropout(self.cross_attn(x, enc, ctx), p, ctx))
    return self.norm3(x + feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block))


class Transformer(nnx.Module):
  """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, K*S, F]} -> [K, B, pred_len = S, D]."""

  # TSLib's ETTh1 settings (run.py's defaults: d_model 512, d_ff 2048, dropout 0.1, exact GELU, embed timeF).
  # label_len (known decoder steps) follows data.label_len (config_lib).
  DEFAULTS = {"d_model": 512, "d_ff": 2048, "n_heads": 8, "e_layers": 2, "d_layers": 1, "dropout": 0.1, "label_len": 48}
  GROUPS = ("ffn", "dec_ffn", "attn")
  HEAD = True  # the projection: lora_heads gives each segment its own
  MARKS = "horizon"  # the time features (and future covariates) of the look-back and of the decoder's steps
  ADAPTED_GROUPS = ("ffn", "dec_ffn")  # adapted when --config.adapt.targets is unset

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    if not 0 < cfg.label_len <= seq_len:
      raise ValueError(f"transformer.label_len must be in 1 .. seq_len={seq_len}, got {cfg.label_len}")
    self.label_len, self.pred_len, self.seq_len = cfg.label_len, pred_len, seq_len
    self.enc_embed = DataEmbedding(channels, marks, cfg.d_model, rngs=rngs)
    self.encoder = encoder_layers(cfg, rngs=rngs, make_adapter=make_adapter)
    self.enc_norm = layer_norm(cfg.d_model, rngs)
    self.dec_embed = DataEmbedding(channels, marks, cfg.d_model, rngs=rngs)
    self.decoder = nnx.List(
      [
        DecoderLayer(cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.dropout, rngs=rngs, make_adapter=make_adapter)
        for _ in range(cfg.d_layers)
      ]
    )
    self.dec_norm = layer_norm(cfg.d_model, rngs)
    self.projection = Dense(
      cfg.d_model, channels, rngs=rngs, adapter=make_adapter("head", "head", cfg.d_model, channels, rngs)
    )
    self.dropout_rate = cfg.dropout

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first encoder FFN matmul of one segment's batch: one row per look-back step."""
    return batch_size * self.seq_len, *self.encoder[0].ffn1.kernel.shape

  def decoder_inputs(self, batch: dict, ctx: Ctx) -> tuple[jax.Array, jax.Array]:
    return decoder_inputs(batch, ctx, self.label_len, self.pred_len)

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    p = self.dropout_rate
    h = self.enc_embed(batch["x"], batch["x_mark"])[None]  # [1, B, L, d]
    h = dropout(ctx.split_segments(h), p, ctx)
    enc = self.enc_norm(encode(self.encoder, h, ctx))  # [K', B, L, d]
    values, marks = self.decoder_inputs(batch, ctx)
    g = dropout(self.dec_embed(values, marks), p, ctx)  # [K, B, label_len + S, d]
    for i, layer in enumerate(self.decoder):
      # Only the last S steps are forecasts: the last layer computes no output for the label_len known steps.
      g = layer(g, enc, ctx, rows=slice(-self.pred_len, None) if i == len(self.decoder) - 1 else None)
    return self.projection(self.dec_norm(g))  # [K, B, S, D]
