"""iTransformer (Liu et al., ICLR 2024), as in the official code and TSLib: each variate's whole look-back
window is one token (the time-feature series are tokens too), attention runs across variates.

Known-future covariates (data.future_covariates, the last `covariates` columns of the marks) are tokens too, ours
beyond the paper: each is embedded from its look-back and the steps the forecast covers (`embed_future`: L + S
values), so the model reads the plan of the very steps it forecasts. In stage 2 segment k's covariate tokens hold
its own steps kS .. (k+1)S - 1, so the shared stage-1 embedding fits every segment; the encoder then runs per
segment from its first layer (with no covariates the prefix before the first adapted layer is shared)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.layers import Ctx, Dense, dropout, encode, encoder_layers, instance_norm, layer_norm


class ITransformer(nnx.Module):
  """batch {"x": [B, L, D], "x_mark": [B, L, F]} -> [K', B, pred_len, D].

  Adapted layer groups: "ffn" (both FFN dense layers of every encoder layer, the method's placement) and
  "attn" (the Q/K/V/O projections). Embedding, LayerNorms and the head are never adapted.
  """

  # The official MoLA ETTh1 sizes (docs/method.md §8): cfg.model.itransformer.
  DEFAULTS = {"d_model": 128, "d_ff": 128, "n_heads": 8, "e_layers": 2, "dropout": 0.1}
  GROUPS = ("ffn", "attn")  # the encoder FFN and attention projections
  ADAPTED_GROUPS = ("ffn",)  # the method's placement (docs/method.md §4.2); --config.adapt.targets overrides
  HEAD = True  # lora_heads gives each segment its own
  MARKS = "horizon"  # the time features over the look-back; future covariates also over the forecast's steps
  COVARIATE_TOKENS = True  # build() passes how many of the marks are future covariates

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter,
               covariates: int = 0):  # fmt: skip
    del channels  # tokens are series, so the sizes do not depend on how many there are
    self.embed = Dense(seq_len, cfg.d_model, rngs=rngs)
    self.calendar, self.covariates = marks - covariates, covariates  # marks: time features, then covariates
    if covariates:
      self.embed_future = Dense(seq_len + pred_len, cfg.d_model, rngs=rngs)
    self.layers = encoder_layers(cfg, rngs=rngs, make_adapter=make_adapter)
    self.norm = layer_norm(cfg.d_model, rngs)
    self.head = Dense(
      cfg.d_model, pred_len, rngs=rngs, adapter=make_adapter("head", "head", cfg.d_model, pred_len, rngs)
    )
    self.dropout_rate = cfg.dropout

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first FFN matmul of one segment's batch: one row per token."""
    return batch_size * (channels + marks), *self.layers[0].ffn1.kernel.shape

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    x, x_mark = batch["x"], batch["x_mark"]
    d = x.shape[-1]
    xn, mean, std = instance_norm(x)  # marks are not normalised
    tokens = jnp.concatenate([xn, x_mark[..., : self.calendar]], axis=-1).swapaxes(-1, -2)  # [B, D + F_cal, L]
    h = self.embed(tokens[None])  # [1, B, N, d_model]
    if self.covariates:
      h = jnp.concatenate([jnp.broadcast_to(h, (ctx.segments,) + h.shape[1:]), self.future_tokens(batch, ctx)], -2)
    h = dropout(ctx.split_segments(h), self.dropout_rate, ctx)
    # The head reads the D variate tokens only: in the last layer the time-feature tokens serve as keys and values
    # but need no output of their own (7 of 11 rows on ETTh1: the same numbers, less work).
    h = encode(self.layers, h, ctx, last_rows=slice(0, d))
    out = self.head(self.norm(h)).swapaxes(-1, -2)  # [K', B, S, D]
    return out * std + mean

  def future_tokens(self, batch: dict, ctx: Ctx) -> jax.Array:
    """-> [K, B, C, d_model]: each covariate's look-back and segment k's own S steps of it, embedded."""
    past = batch["x_mark"][..., self.calendar :]  # [B, L, C]
    s = self.embed_future.kernel.shape[0] - past.shape[1]
    ahead = batch["y_mark"][..., self.calendar :]  # [B, K * S, C]: the window's steps, every segment's
    ahead = ahead.reshape(ahead.shape[0], -1, s, ahead.shape[-1])[:, ctx.ids()]  # [B, K_c, S, C]
    past = jnp.broadcast_to(past[:, None], (ahead.shape[0], ahead.shape[1]) + past.shape[1:])
    series = jnp.concatenate([past, ahead], axis=2).transpose(1, 0, 3, 2)  # [K_c, B, C, L + S]
    return self.embed_future(series)
