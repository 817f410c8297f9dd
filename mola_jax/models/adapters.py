"""Adapter banks: MoLA (shared experts, per-segment mixtures) and per-segment LoRA.

Every bank is called as `bank(h, kernel, bias) -> [K, ..., d_out]`: the adapted layer's whole output for all K
segments, `h @ (kernel + delta[k]) + bias`, so `Dense` and every backbone stay unaware of which method runs. Every
bank also exposes `delta() -> [K, d_in, d_out]`, all K segments' weight deltas from one einsum (for per-segment
selection and export).

Two ways to apply a bank, with the same result up to float rounding (docs/method.md §12):
- merged: `h @ (kernel + delta[k])`, one matmul of the layer's own shape per segment, as the official code does.
  Best for small layers (iTransformer's 128 x 128): it costs what the frozen layer costs, and a separate adapter
  term would double that. In a low-precision compute dtype the delta keeps a term of its own instead
  (`h @ kernel + h @ delta[k]`): merged into a bf16 kernel, a small delta would be rounded away.
- factored: `h @ kernel + sum_p w[k, p] (h @ A_p) @ B_p`, never forming the delta. The adapter term costs
  R (d_in + d_out) per token instead of d_in d_out, R = P r (MoLA) or r (LoRA), and its backward needs no
  d_in x d_out weight gradient per segment; the frozen matmul runs once over all segments' rows. For PatchTST's
  and the Transformer's 512 x 2048 FFN layers (R = 48) that is 8x fewer FLOPs per adapter term (docs/performance.md).
A bank picks the factored form when its adapter term costs at most half the dense one.

Adapter variables are `nnx.LoRAParam`s: stage 2 trains exactly that type and nothing else. Arrays whose leading
axis is the segment axis are `SegmentParam`s, so the per-segment early stopping can freeze a stopped segment's
rows (and only those).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax import sharding


def use_factored(total_rank: int, d_in: int, d_out: int, choice: bool | None = None) -> bool:
  """choice (config mola.factored): True / False forces a form; None picks by cost."""
  return bool(choice) if choice is not None else 2 * total_rank * (d_in + d_out) <= d_in * d_out


def segment_axis(h: jax.Array) -> tuple[jax.Array, str]:
  """h [K', ..., d] -> (h, "k") when it carries the segment axis, (h[0], "") when it is a shared prefix (K' = 1),
  so that one einsum string f"{k}...i,..." serves both: the shared input is contracted once for all segments."""
  return (h[0], "") if h.shape[0] == 1 else (h, "k")


def apply_delta(h: jax.Array, delta: jax.Array) -> jax.Array:
  """h [K', ..., d_in] (K' = 1: a shared prefix feeding every segment, or K), delta [K, d_in, d_out]
  -> [K, ..., d_out]."""
  x, k = segment_axis(h)
  return jnp.einsum(f"{k}...i,kio->k...o", x, delta)


def apply_merged(h: jax.Array, kernel: jax.Array, bias: jax.Array, delta: jax.Array) -> jax.Array:
  """h @ (kernel + delta[k]) + bias -> [K, ..., d_out], the delta merged into the kernel in float32 (module
  docstring); in a lower precision the delta's term is kept apart."""
  if kernel.dtype == jnp.float32:
    return apply_delta(h, kernel + delta) + bias
  return h @ kernel + bias + apply_delta(h, delta)


class SegmentParam(nnx.LoRAParam):
  """An adapter array with a leading segment axis K; rows of stopped segments are held fixed."""


class AdapterConst(nnx.Variable):
  """A fixed array of an adapter (FourierFT's spectral positions): saved with the adapter, never trained, not part
  of the backbone."""


def segment_rows(tree, index):
  """The rows `index` (an index array or slice) of every per-segment array of `tree` (SegmentParam state)."""
  return jax.tree.map(lambda v: v[index], tree)


# Logical axes (mola_jax/sharding.py): per-segment arrays [K, ., .] and the deltas [K, d_in, d_out] they give.
PER_SEGMENT = sharding.axes("segment", None, None)
DELTA_AXES = ("segment", None, None)


class MoLABank(nnx.Module):
  """P rank-r experts shared by all segments, mixed per segment by softmax(logits[k]). No router:
  the mixture weights are free parameters, independent of the input (docs/method.md §4.3)."""

  def __init__(self, d_in, d_out, *, segments, experts, rank, a_std, rngs: nnx.Rngs, factored=None):
    bank = sharding.axes("expert", None, None)  # logical axes for the sharding rules (mola_jax/sharding.py)
    self.a = nnx.LoRAParam(a_std * jax.random.normal(rngs.params(), (experts, d_in, rank)), **bank)  # [P, d_in, r]
    self.b = nnx.LoRAParam(jnp.zeros((experts, rank, d_out)), **bank)  # [P, r, d_out]; 0: starts at the backbone
    self.logits = SegmentParam(
      jax.random.normal(rngs.params(), (segments, experts)), **sharding.axes("segment", "expert")
    )  # [K, P]
    self.factored = use_factored(experts * rank, d_in, d_out, factored)

  def __call__(
    self, h: jax.Array, kernel: jax.Array, bias: jax.Array
  ) -> jax.Array:  # [K', ..., d_in] -> [K, ..., d_out]
    if not self.factored:
      return apply_merged(h, kernel, bias, self.delta())
    mix = jax.nn.softmax(self.logits[...], axis=-1)  # [K, P]
    x, k = segment_axis(h)  # a shared prefix is projected once and mixed per segment
    z = jnp.einsum(f"{k}...i,pir->{k}...pr", x, self.a[...])  # [K', ..., P, r]
    term = jnp.einsum(f"{k}...pr,kp,pro->k...o", z, mix, self.b[...])
    return h @ kernel + bias + term  # the frozen matmul once over every segment's rows

  def delta(self) -> jax.Array:
    mix = jax.nn.softmax(self.logits[...], axis=-1)  # [K, P]
    # Scale the experts' B rows per segment first, then one contraction over (expert, rank): a single matmul
    # [d_in, P r] x [P r, K d_out]. The other order forms every expert's full [P, d_in, d_out] product.
    scaled = mix[:, :, None, None] * self.b[...]  # [K, P, r, d_out]
    delta = jnp.einsum("pir,kpro->kio", self.a[...], scaled)  # [K, d_in, d_out]
    return sharding.constrain(delta, DELTA_AXES)


class LoRABank(nnx.Module):
  """One independent rank-r LoRA per segment (the official `iTransformerLora` baseline): no sharing."""

  def __init__(self, d_in, d_out, *, segments, rank, a_std, rngs: nnx.Rngs, factored=None):
    a = a_std * jax.random.normal(rngs.params(), (segments, d_in, rank))
    self.a = SegmentParam(a, **PER_SEGMENT)  # [K, d_in, r]
    self.b = SegmentParam(jnp.zeros((segments, rank, d_out)), **PER_SEGMENT)  # [K, r, d_out]
    self.factored = use_factored(rank, d_in, d_out, factored)

  def __call__(
    self, h: jax.Array, kernel: jax.Array, bias: jax.Array
  ) -> jax.Array:  # [K', ..., d_in] -> [K, ..., d_out]
    if not self.factored:
      return apply_merged(h, kernel, bias, self.delta())
    x, k = segment_axis(h)
    z = jnp.einsum(f"{k}...i,kir->k...r", x, self.a[...])  # [K, ..., r]
    return h @ kernel + bias + jnp.einsum("k...r,kro->k...o", z, self.b[...])

  def delta(self) -> jax.Array:
    return sharding.constrain(jnp.einsum("kir,kro->kio", self.a[...], self.b[...]), DELTA_AXES)  # [K, d_in, d_out]


def no_adapter(group, role, d_in, d_out, rngs, heads=None):
  """The factory of a model without adapters (stage 1, mtf)."""
  return None


class SegmentDelta(nnx.Module):
  """Fixed per-segment weight deltas [K, d_in, d_out]. The result of per-segment selection, where segment k
  keeps the adapter state of its own best validation epoch: those states differ in the shared experts too, so
  what survives is each segment's delta, not a bank."""

  def __init__(self, delta: jax.Array):
    self.value = SegmentParam(jnp.asarray(delta), **PER_SEGMENT)  # rows per segment, like every per-segment array

  def __call__(self, h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return apply_merged(h, kernel, bias, self.value[...])

  def delta(self) -> jax.Array:
    return self.value[...]


def adapted_layers(model: nnx.Module) -> dict[str, nnx.Module]:
  """path -> every layer of `model` that carries an adapter."""
  return {
    "/".join(map(str, path)): node
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Module) and getattr(node, "adapter", None) is not None
  }


def mixture_weights(model: nnx.Module) -> dict[str, jax.Array]:
  """path -> softmax(logits) [K, P] of every mixture bank (MoLA, MoIA3, MoAdapter, MoFourier): how segment k mixes
  the P shared experts."""
  return {
    "/".join(map(str, path)): jax.nn.softmax(node.logits[...], axis=-1)
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Module) and getattr(node, "logits", None) is not None
  }


def deltas(model: nnx.Module) -> dict[str, jax.Array]:
  """path -> the layer's current per-segment deltas [K, d_in, d_out]."""
  return {path: layer.adapter.delta() for path, layer in adapted_layers(model).items()}


def bake(model: nnx.Module, values: dict | None = None) -> None:
  """Replace every adapter by a SegmentDelta holding `values[path]` (zeros if None, e.g. as a restore target)."""
  for path, layer in adapted_layers(model).items():
    delta = values[path] if values is not None else jnp.zeros(jax.eval_shape(layer.adapter.delta).shape)
    layer.adapter = SegmentDelta(delta)
