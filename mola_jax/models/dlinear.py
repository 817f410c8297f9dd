"""DLinear (Zeng et al., AAAI 2023), as in TSLib: a moving-average decomposition of the input window into trend
and seasonal parts, one linear map over time for each, their sum is the forecast. No normalisation, no dropout.

A linear model has no FFN, so under MoLA the adapted layers are its two linear maps themselves (group "linear"):
segment k forecasts with `W + ΔW_k` for both maps. docs/method.md §13 calls MoLA undefined for DLinear; this is
the natural reading of "adapt the dense layers" for it, and what `--config.backbone=dlinear` runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.layers import Ctx, Dense


def moving_average(x: jax.Array, kernel: int) -> jax.Array:
  """TSLib's `moving_avg` with stride 1 over time (x: [B, L, D]): repeat the first and last rows (kernel-1)/2
  times at either end, then average every window of `kernel` rows. Same length as x for an odd kernel."""
  pad = (kernel - 1) // 2
  length = x.shape[-2]
  padded = jnp.concatenate(
    [jnp.repeat(x[..., :1, :], pad, axis=-2), x, jnp.repeat(x[..., -1:, :], pad, axis=-2)], axis=-2
  )
  return sum(padded[..., i : i + length, :] for i in range(kernel)) / kernel


def decompose(x: jax.Array, kernel: int) -> tuple[jax.Array, jax.Array]:
  """-> (seasonal, trend), seasonal = x - trend: TSLib's `series_decomp`."""
  trend = moving_average(x, kernel)
  return x - trend, trend


class DLinear(nnx.Module):
  """batch {"x": [B, L, D]} -> [K', B, pred_len, D]. Time features are not read.

  individual=False (TSLib's default): one pair of maps shared by all channels. individual=True: one pair per
  channel, each with its own adapters.
  """

  # moving_avg: the odd kernel of the trend moving average; individual: one pair of linear maps per channel.
  DEFAULTS = {"moving_avg": 25, "individual": False}
  GROUPS = ("linear",)  # every dense layer of the model: the two maps over time
  ADAPTED_GROUPS = ("linear",)  # adapted when --config.adapt.targets is unset

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    del marks
    if cfg.moving_avg % 2 == 0 or not cfg.moving_avg > 0:
      raise ValueError(
        f"dlinear.moving_avg must be odd and positive (TSLib's decomposition keeps the length "
        f"only then), got {cfg.moving_avg}"
      )

    def linear() -> Dense:
      layer = Dense(seq_len, pred_len, rngs=rngs, adapter=make_adapter("linear", "linear", seq_len, pred_len, rngs))
      layer.kernel[...] = jnp.full((seq_len, pred_len), 1.0 / seq_len)  # TSLib's init: every step = the mean
      return layer

    n = channels if cfg.individual else 1
    self.seasonal = nnx.List([linear() for _ in range(n)])
    self.trend = nnx.List([linear() for _ in range(n)])
    self.kernel_size = cfg.moving_avg

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the seasonal map's matmul for one segment's batch: one row per channel."""
    return batch_size * channels, *self.seasonal[0].kernel.shape

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    del ctx  # no dropout; the decomposition is the shared prefix, computed once for all segments
    seasonal, trend = decompose(batch["x"], self.kernel_size)  # [B, L, D] each
    seasonal, trend = seasonal.swapaxes(-1, -2)[None], trend.swapaxes(-1, -2)[None]  # [1, B, D, L]
    if len(self.seasonal) == 1:
      out = self.seasonal[0](seasonal) + self.trend[0](trend)  # [K', B, D, S]
    else:
      out = jnp.concatenate(
        [
          s(seasonal[..., i : i + 1, :]) + t(trend[..., i : i + 1, :])
          for i, (s, t) in enumerate(zip(self.seasonal, self.trend, strict=True))
        ],
        axis=-2,
      )
    return out.swapaxes(-1, -2)  # [K', B, S, D]
