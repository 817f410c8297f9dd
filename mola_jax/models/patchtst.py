"""PatchTST (Nie et al., ICLR 2023) as TSLib implements it: channel-independent patches of the instance-normalised
series, a post-norm Transformer encoder over each channel's patches whose final norm is a BatchNorm, and a
flatten head (d_model x patches -> pred_len) shared by all channels.

Adapted layer groups: "ffn" (both FFN dense layers of every encoder layer, the placement docs/method.md §9 lists for
PatchTST) and "attn" (Q/K/V/O). The patch embedding, the norms and the flatten head are never adapted.

BatchNorm under MoLA: in stage 2 the frozen backbone stays in training mode as in the official code, so the
final BatchNorm normalises each segment with that segment's batch statistics, and its running averages keep
updating (one momentum update per segment, as the official K passes do). Evaluation uses the running averages.
The running averages are therefore not frozen in stage 2: they are part of the selected state, saved and
restored with the adapters (layers.BatchNorm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.layers import (
  BatchNorm,
  Ctx,
  Dense,
  dropout,
  encode,
  encoder_layers,
  instance_norm,
  sinusoid_positions,
  torch_uniform,
)


def num_patches(seq_len: int, patch_len: int, stride: int) -> int:
  """Patches after padding the end with `stride` copies of the last value: (L - patch_len) // stride + 2."""
  return (seq_len + stride - patch_len) // stride + 1


def patchify(x: jax.Array, patch_len: int, stride: int) -> jax.Array:
  """x [..., L] -> [..., P, patch_len]: TSLib's ReplicationPad1d((0, stride)) then unfold(patch_len, stride).
  Patch p holds padded steps p*stride ... p*stride + patch_len - 1."""
  padded = jnp.concatenate([x, jnp.repeat(x[..., -1:], stride, axis=-1)], axis=-1)
  p = num_patches(x.shape[-1], patch_len, stride)
  index = stride * jnp.arange(p)[:, None] + jnp.arange(patch_len)[None, :]  # [P, patch_len]
  return padded[..., index]


class PatchTST(nnx.Module):
  """batch {"x": [B, L, D]} -> [K', B, pred_len, D]. Time features are not read."""

  # TSLib's ETTh1 settings (scripts/long_term_forecast/ETT_script/PatchTST_ETTh1.sh on run.py's defaults):
  # n_heads 2 is the T = 96 script's (its 192/336/720 runs pass 8/8/16); dropout is also the flatten head's; the
  # stride is also the end padding (the replicated last value). Parameter counts: tests/test_backbones.py.
  DEFAULTS = {"d_model": 512, "d_ff": 2048, "n_heads": 2, "e_layers": 1, "dropout": 0.1, "patch_len": 16, "stride": 8}
  GROUPS = ("ffn", "attn")
  ADAPTED_GROUPS = ("ffn",)  # adapted when --config.adapt.targets is unset
  HEAD = True  # the flatten head: lora_heads gives each segment its own

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    del channels, marks  # channel-independent: the sizes do not depend on how many channels there are
    if seq_len < cfg.patch_len:
      raise ValueError(f"patchtst.patch_len {cfg.patch_len} is longer than the look-back {seq_len}")
    self.patch_len, self.stride = cfg.patch_len, cfg.stride
    self.patches = num_patches(seq_len, cfg.patch_len, cfg.stride)
    # Linear(patch_len -> d_model) without bias, PyTorch's default init.
    self.patch_embed = nnx.Param(torch_uniform(rngs.params(), (cfg.patch_len, cfg.d_model), cfg.patch_len))
    self.layers = encoder_layers(cfg, rngs=rngs, make_adapter=make_adapter)
    self.norm = BatchNorm(cfg.d_model)
    self.head = Dense(
      cfg.d_model * self.patches,
      pred_len,
      rngs=rngs,
      adapter=make_adapter("head", "head", cfg.d_model * self.patches, pred_len, rngs),
    )
    self.dropout_rate = cfg.dropout  # TSLib also passes it as the head dropout

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first FFN matmul of one segment's batch: one row per channel and patch."""
    return batch_size * channels * self.patches, *self.layers[0].ffn1.kernel.shape

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    xn, mean, std = instance_norm(batch["x"])  # [B, L, D]
    patches = patchify(xn.swapaxes(-1, -2), self.patch_len, self.stride)  # [B, D, P, patch_len]
    embed = self.patch_embed[...]  # [patch_len, d]
    h = patches @ embed + sinusoid_positions(self.patches, embed.shape[-1])  # [B, D, P, d]
    h = dropout(ctx.split_segments(h[None]), self.dropout_rate, ctx)  # [K', B, D, P, d]
    h = encode(self.layers, h, ctx)  # attention runs over each channel's patches; channels are a batch axis
    h = self.norm(h, ctx)  # BatchNorm1d(d_model) over (batch, channels, patches), per segment
    h = h.swapaxes(-1, -2).reshape(h.shape[:-2] + (-1,))  # [K', B, D, d * P], TSLib's flatten order
    out = dropout(self.head(h), self.dropout_rate, ctx).swapaxes(-1, -2)  # [K', B, S, D]
    return out * std + mean
