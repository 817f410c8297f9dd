"""Stage-2 options beyond the official recipe (docs/method.md §13, docs/results.md §15), each behind a config key
whose default keeps the official behaviour:

* `adapt.segment_heads`: every segment also gets its own full-rank change of the head, D_k [d_in, d_out], zero at
  the start (so stage 2 still starts at the copied stage-1 forecast), added to whatever the method's bank does to
  the head. As the official `iTransformerLoraHeader`'s per-segment heads, without their fresh initialisation and
  without a per-segment bias: the change is a weight delta, so per-segment selection and export keep working.
* `technique.mola.experts_per_segment` and `rank_per_segment`: the number of experts P, or their rank r, grows
  with the number of segments K: at least ceil(x K) (0: P and r as set).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mola_jax.models.adapters import PER_SEGMENT, SegmentParam, apply_merged


def per_segment_size(base: int, per_segment: float, segments: int) -> int:
  """`base`, or at least ceil(per_segment * segments) when per_segment > 0."""
  return max(base, math.ceil(per_segment * segments)) if per_segment else base


class SegmentHeadBank(nnx.Module):
  """The head of segment k: h @ (W + delta_k) + b with delta_k = D_k (own, full rank, zero at the start) plus the
  method's own change of the head (`inner`, a bank with a delta: MoLA's on CycleNet, whose head is adapted by
  default), if any. D_k rows stop with their segment (SegmentParam)."""

  def __init__(self, d_in: int, d_out: int, *, segments: int, inner: nnx.Module | None = None):
    self.inner = inner
    self.own = SegmentParam(jnp.zeros((segments, d_in, d_out)), **PER_SEGMENT)  # [K, d_in, d_out]

  def __call__(self, h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:  # -> [K, ..., d_out]
    return apply_merged(h, kernel, bias, self.delta())

  def delta(self) -> jax.Array:  # [K, d_in, d_out]
    own = self.own[...]
    return own if self.inner is None else self.inner.delta() + own


def segment_head(inner: nnx.Module | None, d_in: int, d_out: int, segments: int) -> SegmentHeadBank:
  """The head's bank under adapt.segment_heads: a per-segment full-rank change on top of `inner` (the method's
  bank of the head, or None). A bank whose change is not a weight delta cannot be summed with one."""
  if inner is not None and not hasattr(inner, "delta"):
    raise ValueError(f"adapt.segment_heads cannot add to a head bank without a weight delta ({type(inner).__name__})")
  return SegmentHeadBank(d_in, d_out, segments=segments, inner=inner)
