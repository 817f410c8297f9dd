"""Informer: shapes, zero-init adapters == the frozen backbone, ProbSparse attention and the distilling layer
against independent numpy computations, TSLib's parameter count, and a stage-2 train step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import new_state, tiny, train_step
from flax import nnx
from test_backbones import D, F, S, batch, count, forward, stage2

from mola_jax import config_lib, plan, steps
from mola_jax.models import Ctx, SegmentParam, adapted_groups, build, predict, predict_per_segment
from mola_jax.models.adapters import segment_rows
from mola_jax.models.informer import (
  DistilConv,
  distilled_len,
  prob_attention,
  sample_keys,
  sample_sizes,
  sparsity_measure,
)


def tiny_cfg():
  """Dropout rate 0: dropout is layers.dropout (tested with iTransformer), each dropout site costs seconds of CPU
  compile, and with one structure the tests share their compiled forward passes."""
  cfg = tiny()
  cfg.backbone = "informer"
  cfg.model.informer.update(d_model=16, d_ff=32, n_heads=2, e_layers=2, d_layers=1, dropout=0.0)
  return cfg


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


def test_shapes_and_the_adapted_layers():
  cfg = tiny_cfg()
  base, model = stage2(cfg, segments=3)
  assert forward(base, batch(1)).shape == (3, 1, S, D)
  assert forward(model, batch(3), segments=3).shape == (3, 3, S, D)
  assert adapted_groups(cfg.backbone, cfg.method, cfg.adapt.targets) == ("ffn",)
  # MoLA banks (A, B, logits) on the two FFN layers of each encoder layer and nowhere else.
  adapted = {p[:3] for p, v in nnx.iter_graph(model) if isinstance(v, nnx.LoRAParam)}
  assert adapted == {("encoder", i, f) for i in range(2) for f in ("ffn1", "ffn2")}
  assert base.ffn_shape(32, D, F) == (32 * 96, 16, 32)


def test_param_count_at_tslib_etth1_settings():
  # Hand-counted from TSLib's modules at its ETTh1 settings (pred_len 24; BatchNorm buffers excluded): 2 embeddings
  # (conv 3*7*512 + timeF 4*512); 2 encoder layers (attention 4*(512^2+512), FFN, 2 LN); 1 distilling conv
  # (3*512*512+512, BatchNorm 2*512); encoder LN; 1 decoder layer (2 attentions, FFN, 3 LN); decoder LN;
  # projection 512*7+7.
  cfg = config_lib.default()
  cfg.backbone = "informer"
  model = nnx.eval_shape(
    lambda: build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  )
  want = 2 * 12_800 + 2 * 3_152_384 + 786_944 + 1_024 + 1_024 + 4_204_032 + 1_024 + 3_591
  assert count(nnx.state(model, nnx.Param)) == want == 11_328_007


@pytest.mark.parametrize("method", ["mola", "lora"])
def test_zero_b_equals_frozen_backbone_for_every_segment(method, graph_mode):
  base, model = stage2(tiny_cfg(), segments=3, method=method)
  x = batch(3)
  got = np.asarray(forward(model, x, segments=3))  # [B, K, S, D]
  for k in range(3):  # segment k decodes with the time features of its own steps
    xk = dict(x, y=x["y"][:, k * S : (k + 1) * S], y_mark=x["y_mark"][:, k * S : (k + 1) * S])
    np.testing.assert_allclose(got[:, k], np.asarray(forward(base, xk))[:, 0], rtol=1e-5, atol=1e-5)


def test_training_pass_equals_the_official_per_segment_passes():
  """In training each segment draws its own key samples (and BatchNorm statistics) by its id: the batched pass over
  segments 1 and 2 gives what two separate passes, one per segment, give."""
  _, model = stage2(tiny_cfg(), segments=3)
  graphdef, seg, rest = nnx.split(model, SegmentParam, ...)
  model = nnx.merge(graphdef, segment_rows(seg, jnp.array([1, 2])), rest)  # as the train step computes a subset
  ctx = lambda: Ctx(key=jax.random.key(3), segments=2, segment_ids=jnp.array([1, 2]))
  both = nnx.jit(lambda m, x, f: f(m, x, ctx()), static_argnums=2)
  x = batch(3)
  got = np.asarray(both(model, x, predict))
  want = np.asarray(both(model, x, predict_per_segment))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ProbSparse attention and distilling against numpy


def test_sample_sizes_and_key_draws():
  assert sample_sizes(5, 96, 96) == (25, 25)  # 5 * ceil(ln 96) = 5 * 5
  assert sample_sizes(3, 72, 49) == (15, 12)  # the ETTh1 decoder's cross-attention at T = 24
  assert sample_sizes(5, 8, 4) == (8, 4)  # at most the length
  shape = (1, 6, 4)
  fixed = [np.asarray(sample_keys(Ctx(), 1, 6, 10, 4)) for _ in range(2)]
  np.testing.assert_array_equal(fixed[0], fixed[1])  # eval: one fixed draw
  assert fixed[0].shape == shape and fixed[0].min() >= 0 and fixed[0].max() < 10
  ctx = Ctx(key=jax.random.key(1), segments=3, segment_ids=jnp.array([0, 2, 5]))
  per_segment = np.asarray(sample_keys(ctx, 3, 6, 10, 4))
  assert per_segment.shape == (3, 6, 4) and ctx.site == 1
  assert not np.array_equal(per_segment[0], per_segment[1])  # each segment its own draw ...
  alone = Ctx(key=jax.random.key(1), segments=1, segment_ids=jnp.array([2]))
  np.testing.assert_array_equal(np.asarray(sample_keys(alone, 1, 6, 10, 4))[0], per_segment[1])  # ... by its id


@pytest.mark.parametrize("causal", [False, True])
def test_prob_attention_against_numpy(causal):
  rng = np.random.default_rng(0)
  lq, lk, e, n, u = 12, 12, 4, 5, 4
  q, k, v = (rng.standard_normal((2, length, e)).astype(np.float32) for length in (lq, lk, lk))  # 2 heads
  idx = rng.integers(0, lk, (lq, n))
  # The measure over the sampled keys: max minus sum / L_K, per head and query.
  qk = np.einsum("hqe,hke->hqk", q.astype(np.float64), k)
  sampled = np.take_along_axis(qk, np.broadcast_to(idx, (2, lq, n)), axis=-1)
  m = sampled.max(-1) - sampled.sum(-1) / lk
  np.testing.assert_allclose(np.asarray(sparsity_measure(q, k, idx)), m, rtol=1e-5, atol=1e-5)
  out, top = prob_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(idx), u=u, causal=causal)
  out, top = np.asarray(out), np.asarray(top)
  for h in range(2):
    chosen = set(np.argsort(-m[h])[:u])
    assert set(top[h]) == chosen
    for i in range(lq):
      if i in chosen:  # real attention, scaled by 1/sqrt(E), over the keys it may see
        s = qk[h, i] / math.sqrt(e)
        if causal:
          s = np.where(np.arange(lk) > i, -np.inf, s)
        w = np.exp(s - s.max())
        want = (w / w.sum()) @ v[h]
      else:  # the initial context
        want = v[h, : i + 1].sum(0) if causal else v[h].mean(0)
      np.testing.assert_allclose(out[h, i], want, rtol=1e-4, atol=1e-5)


def test_distil_conv_against_numpy_and_tslib_lengths():
  # TSLib: Conv1d(kernel 3, padding 2) gives L + 2*2 - 3 + 1 steps, MaxPool1d(3, 2, padding 1) (that + 2 - 3)//2 + 1.
  for length in (96, 49, 25, 10, 7):
    assert distilled_len(length) == ((length + 2 * 2 - 3 + 1) + 2 * 1 - 3) // 2 + 1
  assert distilled_len(96) == 49
  d, length = 3, 10
  layer = DistilConv(d, rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).standard_normal((1, 2, length, d)).astype(np.float32)  # [K', B, L, d]
  got = np.asarray(layer(jnp.asarray(x), Ctx()))  # eval: the initial running statistics (mean 0, var 1)
  assert got.shape == (1, 2, distilled_len(length), d)
  w = np.asarray(layer.kernel[...], np.float64).reshape(3, d, d)  # [tap, in, out]
  padded = np.concatenate([x[..., -2:, :], x, x[..., :2, :]], axis=-2)  # circular padding 2
  conv = sum(padded[..., t : t + length + 2, :] @ w[t] for t in range(3)) + np.asarray(layer.bias[...])
  y = conv / np.sqrt(1.0 + 1e-5)
  y = np.where(y > 0, y, np.expm1(y))  # ELU
  y = np.pad(y, ((0, 0), (0, 0), (1, 1), (0, 0)), constant_values=-np.inf)
  want = np.stack([y[..., 2 * i : 2 * i + 3, :].max(-2) for i in range(distilled_len(length))], axis=-2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The stage-2 step (the training path: per-segment key draws and BatchNorm statistics): only adapters train; the
# distilling BatchNorm's running statistics update


def test_stage2_step_trains_only_the_adapters():
  _, model = stage2(tiny_cfg(), segments=2)
  frozen_weights = lambda m: [
    np.asarray(v) for v in jax.tree.leaves(nnx.state(m, nnx.Not(nnx.Any(nnx.LoRAParam, nnx.BatchStat))))
  ]
  before = frozen_weights(model)
  stats_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
  adapters_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))]
  assert len(stats_before) == 2  # one distilling BatchNorm: running mean and variance
  state, step = new_state(model), train_step(2, groups=1)
  for _ in range(2):
    state, loss = step(state, batch(2), steps.training_segments([True, True]))
  assert np.isfinite(float(loss))
  after = state.model()
  for a, b in zip(before, frozen_weights(after), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(stats_before, jax.tree.leaves(state.stats), strict=True):
    assert not np.array_equal(a, np.asarray(b))
  moved = [
    not np.array_equal(a, np.asarray(b))
    for a, b in zip(adapters_before, jax.tree.leaves(nnx.state(after, nnx.LoRAParam)), strict=True)
  ]
  assert any(moved)
