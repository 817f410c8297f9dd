"""OLinear (Yue et al., NeurIPS 2025), as in the official code (model/OLinear.py): a linear forecaster that works in
an orthogonally transformed domain.

OrthoTrans: each channel's look-back, embedded, is expressed in an orthogonal basis of R^L (the eigenvectors of the
series' lag correlation matrix, computed once from the training data: `orthogonal_basis`), the model forecasts the
horizon's coefficients in the basis of R^S built the same way, and the inverse transform returns them to time. In
between, per-variate tokens (iTransformer's layout) go through NormLin layers: a channel-mixing linear map whose
weight is softplus'd and row-normalised, in place of attention, and a position-wise FFN. A two-layer MLP over the
horizon (steps x embedding -> steps) reads the result, and instance normalisation (RevIN, affine) wraps it all.

The two bases are data constants (`Basis`): not trained, part of the frozen backbone, saved in its checkpoints.
They start at the identity; `set_basis` fills them from the training rows. A correlation basis of a stationary series
does not depend on where a window starts, so in stage 2 every segment's S steps use the same output basis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mola_jax.models.layers import Ctx, Dense, dropout, feed_forward, ffn_layers, gelu, instance_norm, layer_norm

MIN_LAG_VARIANCE = 1e-4  # the official notebook leaves out a channel whose lagged variance is under this


class Basis(nnx.Variable):
  """An orthogonal matrix computed from the training data (OrthoTrans): a constant of the backbone. Neither an
  nnx.Param nor an nnx.LoRAParam, so no stage trains it; it is saved and restored with the backbone."""


def _lagged_covariance(x: np.ndarray, length: int) -> np.ndarray:
  """x [rows] -> [length, length]: np.cov of the lagged windows (variable i: x[i], x[i + 1], ..., one value per
  window of `length` steps). Built from prefix sums of the lagged products, O(length * rows): the windows' Gram
  matrix costs O(length^2 * rows), minutes for long horizons on wide data sets."""
  n = len(x) - length + 1  # windows
  prefix = np.concatenate([[0.0], np.cumsum(x)])
  mean = (prefix[n : n + length] - prefix[:length]) / n  # [length]: the mean of variable i over the windows
  gram = np.empty((length, length))
  for lag in range(length):
    products = np.concatenate([[0.0], np.cumsum(x[: len(x) - lag] * x[lag:])])  # prefix sums of x[t] x[t + lag]
    rows = np.arange(length - lag)
    # sum over the windows of x[t + i] x[t + i + lag], for every i the lag allows
    gram[rows, rows + lag] = gram[rows + lag, rows] = products[n + rows] - products[rows]
  return (gram - n * np.outer(mean, mean)) / (n - 1)


def lag_correlation(values: np.ndarray, length: int) -> np.ndarray:
  """values [rows, D] -> [length, length]: the official notebook's temporal correlation matrix. Per channel, the
  covariance of `length` lagged copies of the series with each column divided by its variance (cov[i, j] / var[j],
  not quite symmetric), averaged over the channels whose lagged variances are all at least MIN_LAG_VARIANCE.
  Invariant to each channel's scale and offset, except through that rule."""
  values = np.nan_to_num(np.asarray(values, np.float64))  # the notebook fills gaps with 0
  if values.ndim != 2 or values.shape[0] <= length:
    raise ValueError(f"need training rows [rows, channels] with more than {length} rows, got shape {values.shape}")
  kept = []
  for series in values.T:
    cov = _lagged_covariance(series, length)
    var = np.diag(cov)
    if (var >= MIN_LAG_VARIANCE).all():
      kept.append(cov / var)
  if not kept:
    raise ValueError(f"every channel has a lagged variance under {MIN_LAG_VARIANCE}: no correlation to diagonalise")
  return np.mean(kept, axis=0)


def orthogonal_basis(values: np.ndarray, length: int) -> np.ndarray:
  """values [rows, D] (training rows) -> Q [length, length], orthogonal: row k is the eigenvector of the lag
  correlation matrix with the k-th largest eigenvalue, so Q x holds a window's coefficients and Q^T c maps them
  back. Each eigenvector's sign is LAPACK's, as in the official files."""
  # The lower triangle, as the official call reads it (numpy's default): the matrix is not exactly symmetric.
  _, vectors = np.linalg.eigh(lag_correlation(values, length), UPLO="L")  # ascending eigenvalues
  return np.ascontiguousarray(vectors.T[::-1])


class Mixing(nnx.Module):
  """NormLin's weight: out[i] = sum_j A[i, j] v[j] over the channels, A = softplus(W) with each row divided by its
  sum (its L1 norm), so every output is a weighted mean of the channels. W starts at I + N(0, 1).

  An adapter bank (group "mix", role "linear") adds its weight delta to A: segment k mixes with A + delta[k]^T
  (delta in the kernel orientation of every bank, [input channel, output channel]). Dropout drops entries of the
  mixing matrix, one mask for the whole batch as in the official code, and one per segment once the segments split.
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs, adapter: nnx.Module | None = None):
    self.weight = nnx.Param(jnp.eye(channels) + jax.random.normal(rngs.params(), (channels, channels)))  # [D, D]
    self.adapter = adapter

  def matrix(self) -> jax.Array:  # [D, D]
    a = jax.nn.softplus(self.weight[...])
    return a / jnp.maximum(a.sum(axis=-1, keepdims=True), 1e-12)  # torch's F.normalize(p=1): rows are positive

  def __call__(self, v: jax.Array, rate: float, ctx: Ctx) -> jax.Array:  # v: [K', B, D, d] -> [K' or K, B, D, d]
    a = self.matrix()[None]  # [1, D, D]
    if self.adapter is not None:
      a = a + self.adapter.delta().swapaxes(-1, -2)  # [K, D, D]
    segments = max(a.shape[0], v.shape[0])
    a = dropout(jnp.broadcast_to(a, (segments,) + a.shape[1:]), rate, ctx)
    return a[:, None] @ v


class NormLinLayer(nnx.Module):
  """The official LinearEncoder: x = LN1(x + Drop(W_o Mix(W_v x))); out = LN2(x + FFN(x)). Group "mix": the value
  projection (role "v"), the mixing matrix ("linear") and the output projection ("o"); group "ffn": the FFN."""

  def __init__(self, cfg, channels: int, *, rngs: nnx.Rngs, make_adapter):
    d = cfg.d_model
    self.value = Dense(d, d, rngs=rngs, adapter=make_adapter("mix", "v", d, d, rngs))
    self.mix = Mixing(channels, rngs=rngs, adapter=make_adapter("mix", "linear", channels, channels, rngs))
    self.out = Dense(d, d, rngs=rngs, adapter=make_adapter("mix", "o", d, d, rngs))
    self.norm1 = layer_norm(d, rngs)
    self.ffn1, self.ffn2 = ffn_layers(d, cfg.d_ff, "ffn", rngs=rngs, make_adapter=make_adapter)
    self.ffn_block = make_adapter("ffn", "ffn_block", d, d, rngs)
    self.norm2 = layer_norm(d, rngs)
    self.dropout_rate = cfg.dropout

  def __call__(self, x: jax.Array, ctx: Ctx) -> jax.Array:  # x: [K', B, D, d] -> [K' or K, B, D, d]
    p = self.dropout_rate
    mixed = self.mix(self.value(x), p, ctx)
    x = self.norm1(x + dropout(self.out(mixed), p, ctx))
    return self.norm2(x + feed_forward(self.ffn1, self.ffn2, x, p, ctx, self.ffn_block))


class OLinear(nnx.Module):
  """batch {"x": [B, L, D]} -> [K', B, pred_len, D]. Time features are not read.

  Layer groups: "ffn" (the FFN of every NormLin layer, adapted by default, as MoLA adapts iTransformer's), "mix"
  (NormLin's value/output projections and its D x D mixing matrix, whose size follows the channel count), "fc" (the
  MLP over the horizon after the inverse transform) and the head (the projection from d_model to the horizon's
  coefficients). The RevIN affine, the embedding, the input projection and the bases are never adapted.
  """

  # The official ETTh1 script (scripts/OLinear/ETTh1_orthoLinear.sh): cfg.model.olinear. embed_size: the width E
  # of the per-step embedding (1: none).
  DEFAULTS = {"d_model": 512, "d_ff": 512, "e_layers": 2, "dropout": 0.2, "embed_size": 16}
  GROUPS = ("ffn", "mix", "fc")
  ADAPTED_GROUPS = ("ffn",)
  HEAD = True  # lora_heads gives each segment its own projection to the horizon
  MARKS = "none"
  FROM_DATA = True  # build(..., train_values=...) fills the bases from the training rows (set_basis)

  def __init__(self, cfg, *, seq_len: int, pred_len: int, channels: int, marks: int, rngs: nnx.Rngs, make_adapter):
    del marks
    made = []  # whether each place an adapter may go got one

    def make_adapter(*args, _make=make_adapter, **kwargs):
      bank = _make(*args, **kwargs)
      made.append(bank is not None)
      return bank

    e, d = cfg.embed_size, cfg.d_model
    if not (isinstance(e, int) and e >= 1):
      raise ValueError(f"olinear.embed_size must be a positive integer, got {e!r}")
    self.basis_in, self.basis_out = Basis(jnp.eye(seq_len)), Basis(jnp.eye(pred_len))  # [L, L], [S, S]
    self.revin_scale, self.revin_shift = nnx.Param(jnp.ones((channels,))), nnx.Param(jnp.zeros((channels,)))
    self.token = nnx.Param(jax.random.normal(rngs.params(), (e,))) if e > 1 else None  # [E]
    # Learned offsets of the coefficients, per channel (the official delta1, delta2).
    self.offset_in = nnx.Param(jnp.zeros((channels, seq_len)))  # [D, L]
    self.offset_out = nnx.Param(jnp.zeros((channels, pred_len)))  # [D, S]
    self.embed = Dense(seq_len * e, d, rngs=rngs)
    self.layers = nnx.List(
      [NormLinLayer(cfg, channels, rngs=rngs, make_adapter=make_adapter) for _ in range(cfg.e_layers)]
    )
    self.norm = layer_norm(d, rngs)
    self.head = Dense(d, pred_len * e, rngs=rngs, adapter=make_adapter("head", "head", d, pred_len * e, rngs))
    self.fc1 = Dense(
      pred_len * e, cfg.d_ff, rngs=rngs, adapter=make_adapter("fc", "linear", pred_len * e, cfg.d_ff, rngs)
    )
    self.fc2 = Dense(cfg.d_ff, pred_len, rngs=rngs, adapter=make_adapter("fc", "linear", cfg.d_ff, pred_len, rngs))
    self.dropout_rate = cfg.dropout
    self.embed_size, self.pred_len = e, pred_len
    # Stage 2 with adapters elsewhere (the FFN under MoLA) leaves head -> output basis -> offset -> fc1 frozen and
    # linear end to end: one map (fold_head), not four ops (at T = 720 those are two thirds of the forward's FLOPs).
    self.folded = any(made) and self.head.adapter is None and self.fc1.adapter is None

  def fold_head(self) -> tuple[jax.Array, jax.Array]:
    """The frozen chain from the normed tokens to fc1's pre-activation as one affine map per channel:
    u = norm(h) @ kernel + bias[channel], kernel [d_model, d_ff], bias [D, d_ff]. The head's output (coefficients
    [E, S]) goes back to time through the output basis, gets the channel's offset, is laid out steps major and
    multiplied by fc1; each of those is linear, so the head's kernel and bias take the same path."""
    e, s = self.embed_size, self.pred_len
    w1 = self.fc1.kernel[...]  # [S * E, d_ff]

    def to_time(c):  # [..., E * S] coefficients -> [..., S * E] values, steps major (no offset)
      y = c.reshape(c.shape[:-1] + (e, s)) @ self.basis_out[...]
      return y.swapaxes(-1, -2).reshape(c.shape[:-1] + (-1,))

    offset = self.offset_out[...]  # [D, S]: the same for every embedding slot
    offset = jnp.broadcast_to(offset[:, :, None], offset.shape + (e,)).reshape(offset.shape[0], -1)  # [D, S * E]
    kernel = to_time(self.head.kernel[...]) @ w1
    bias = (to_time(self.head.bias[...]) + offset) @ w1 + self.fc1.bias[...]
    return kernel, bias

  def set_basis(self, values_train: np.ndarray) -> None:
    """Both bases from the training rows values_train [rows, D] (the look-back's and the horizon's lengths)."""
    for basis in (self.basis_in, self.basis_out):
      basis[...] = jnp.asarray(orthogonal_basis(values_train, basis[...].shape[0]), jnp.float32)

  def ffn_shape(self, batch_size: int, channels: int, marks: int) -> tuple[int, int, int]:
    """(rows, d_in, d_out) of the first FFN matmul of one segment's batch: one row per channel."""
    return batch_size * channels, *self.layers[0].ffn1.kernel.shape

  def __call__(self, batch: dict, ctx: Ctx) -> jax.Array:
    x, mean, std = instance_norm(batch["x"])  # [B, L, D]
    x = x * self.revin_scale[...] + self.revin_shift[...]
    coef = x.swapaxes(-1, -2) @ self.basis_in[...].T  # [B, D, L]: each channel's look-back in the basis
    # The embedding scales every step by the same vector, so it commutes with the transform: embed the coefficients.
    z = self.embedded(coef) + self.offset_in[:, None, :]  # [B, D, E, L]
    h = ctx.split_segments(self.embed(z.reshape(z.shape[:-2] + (-1,)))[None])  # [K', B, D, d_model]
    for layer in self.layers:
      h = layer(h, ctx)
    y = self.fc2(gelu(self.hidden(self.norm(h)))).swapaxes(-1, -2)  # [K', B, S, D]
    y = dropout(y, self.dropout_rate, ctx)
    y = (y - self.revin_shift[...]) / (self.revin_scale[...] + 1e-10)  # RevIN's denorm: eps^2 on the scale
    return y * std + mean

  def hidden(self, h: jax.Array) -> jax.Array:
    """h [K', B, D, d_model] -> fc1's pre-activation [K', B, D, d_ff]: the head's coefficients of the horizon, back
    to time, offset, steps major, through fc1; one folded map where that chain is frozen (fold_head)."""
    if self.folded:
      kernel, bias = self.fold_head()
      return h @ kernel + bias
    c = self.head(h)  # [K', B, D, E * S]: the horizon's coefficients
    c = c.reshape(c.shape[:-1] + (self.embed_size, self.pred_len))  # [K', B, D, E, S]
    y = c @ self.basis_out[...] + self.offset_out[:, None, :]  # back to time
    y = y.swapaxes(-1, -2).reshape(y.shape[:-2] + (-1,))  # [K', B, D, S * E], steps major
    return self.fc1(y)

  def embedded(self, coef: jax.Array) -> jax.Array:
    """coef [B, D, L] -> [B, D, E, L]: every value times the token vector (E = 1: the values themselves)."""
    if self.token is None:
      return coef[..., None, :]
    return self.token[...][:, None] * coef[..., None, :]
