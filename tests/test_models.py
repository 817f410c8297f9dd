"""Backbone shapes and the MoLA mechanism: zero-init identity, the single-einsum mixture, the batched K axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny
from flax import nnx

from mola_jax import config_lib, plan
from mola_jax.models import Ctx, build, predict, predict_per_segment
from mola_jax.models.adapters import LoRABank, MoLABank, SegmentParam, segment_rows


def batch(b=3, length=96, d=7, f=4, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.standard_normal((b, length, d), np.float32),
    "x_mark": rng.uniform(-0.5, 0.5, (b, length, f)).astype(np.float32),
  }


def adapted(cfg, segments, *, seed=1, method="mola"):
  """A stage-2 model whose backbone is a copy of a stage-1 model's; adapters B set to random values."""
  cfg.method = method
  base = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=segments, rngs=nnx.Rngs(seed))
  nnx.update(model, nnx.state(base))
  return base, model


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


def test_itransformer_shapes_and_param_count():
  cfg = config_lib.default()  # ETTh1 sizes
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  assert predict(model, batch(), Ctx()).shape == (3, 1, 24, 7)
  # docs/method.md §4.5: the official iTransformer on ETTh1 with S = 24 has 214,936 parameters.
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == 214_936
  cfg.method = "mola"
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=4, rngs=nnx.Rngs(0))
  assert predict(model, batch(), Ctx(segments=4)).shape == (3, 4, 24, 7)
  # 4 adapted 128x128 matrices: 4·P·r·(128+128) + 4·K·P adapter parameters.
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) == 4 * 6 * 8 * 256 + 4 * 4 * 6


@pytest.mark.parametrize("method", ["mola", "lora"])
def test_zero_b_equals_frozen_backbone_for_every_segment(method, graph_mode):
  base, model = adapted(tiny(), segments=4, method=method)  # B = 0 as initialised
  x = batch()
  want = np.asarray(predict(base, x, Ctx()))[:, 0]  # [B, S, D]
  got = np.asarray(predict(model, x, Ctx(segments=4)))  # [B, K, S, D]
  # Equal to float32 rounding, not bitwise: after the first adapted layer the activations carry K rows where
  # the backbone has one, and XLA's matmul and reduction kernels may accumulate differently for other shapes.
  # The adapter term itself is exactly zero (Dense adds it separately; see its docstring).
  for k in range(4):
    np.testing.assert_allclose(got[:, k], want, rtol=1e-6, atol=1e-6)


def test_mixture_einsum_equals_per_segment_reference():
  bank = MoLABank(5, 6, segments=3, experts=4, rank=2, a_std=0.01, rngs=nnx.Rngs(0))
  bank.b[...] = jax.random.normal(jax.random.key(1), bank.b[...].shape)
  a, b, logits = (np.asarray(v[...], np.float64) for v in (bank.a, bank.b, bank.logits))
  for k in range(3):
    w = np.exp(logits[k]) / np.exp(logits[k]).sum()
    ref = sum(w[p] * a[p] @ b[p] for p in range(4))
    np.testing.assert_allclose(np.asarray(bank.delta()[k]), ref, rtol=1e-5, atol=1e-7)
  lora = LoRABank(5, 6, segments=3, rank=2, a_std=0.01, rngs=nnx.Rngs(0))
  lora.b[...] = jax.random.normal(jax.random.key(2), lora.b[...].shape)
  for k in range(3):
    np.testing.assert_allclose(np.asarray(lora.delta()[k]), np.asarray(lora.a[...][k] @ lora.b[...][k]), rtol=1e-5)


@pytest.mark.parametrize("method", ["mola", "lora"])
def test_factored_application_equals_dense_delta(method):
  """Big layers apply a bank factored, h @ W + sum_p w[k,p] (h A_p) B_p, never forming the delta: same outputs
  and gradients as the merged h @ (W + delta[k]), for a shared-prefix input [1, ...] and a per-segment one [K, ...]."""
  make = {
    "mola": lambda: MoLABank(64, 256, segments=3, experts=4, rank=2, a_std=0.1, rngs=nnx.Rngs(0)),
    "lora": lambda: LoRABank(64, 256, segments=3, rank=2, a_std=0.1, rngs=nnx.Rngs(0)),
  }[method]
  bank = make()
  assert bank.factored  # 2 R (d_in + d_out) <= d_in d_out here
  bank.b[...] = jax.random.normal(jax.random.key(1), bank.b[...].shape)
  graphdef, state = nnx.split(bank)

  kernel = 0.1 * jax.random.normal(jax.random.key(7), (64, 256))  # a frozen layer of the usual scale
  bias = 0.1 * jax.random.normal(jax.random.key(8), (256,))

  def out(state, h, factored):
    m = nnx.merge(graphdef, state)
    m.factored = factored
    return m(h, kernel, bias)

  for lead in (1, 3):
    h = jax.random.normal(jax.random.key(lead), (lead, 5, 7, 64))  # [K', B, tokens, d_in]
    weights = np.asarray(kernel, np.float64) + np.asarray(bank.delta(), np.float64)  # [K, d_in, d_out]
    want = np.einsum("kbti,kio->kbto", np.broadcast_to(np.asarray(h, np.float64), (3, 5, 7, 64)), weights) + np.asarray(
      bias, np.float64
    )
    for factored in (True, False):
      np.testing.assert_allclose(np.asarray(out(state, h, factored)), want, rtol=1e-4, atol=1e-4)
    g_fact, g_dense = (jax.grad(lambda st, f, h=h: jnp.sum(jnp.sin(out(st, h, f))))(state, f) for f in (True, False))
    for gf, gd in zip(jax.tree.leaves(g_fact), jax.tree.leaves(g_dense), strict=True):
      np.testing.assert_allclose(np.asarray(gf), np.asarray(gd), rtol=1e-4, atol=1e-4)
  # Small layers (iTransformer's 128 x 128 with 6 rank-8 experts) keep the dense form.
  assert not MoLABank(128, 128, segments=2, experts=6, rank=8, a_std=0.01, rngs=nnx.Rngs(0)).factored
  forced = MoLABank(128, 128, segments=2, experts=6, rank=8, a_std=0.01, rngs=nnx.Rngs(0), factored=True)
  assert forced.factored  # --config.technique.mola.factored=True


def test_batched_segments_equal_one_pass_per_segment(graph_mode):
  """The K-axis forward (shared prefix, one einsum) equals K separate passes, each a K=1 model holding only
  segment k's mixture, as the official per-segment loop computes it."""
  cfg = tiny()
  cfg.adapt.targets = ("ffn", "attn")  # the K axis then starts in the first attention block
  _, model = adapted(cfg, segments=3)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.LoRAParam) and path[-1] == "b":
      var[...] = 0.1 * jax.random.normal(jax.random.key(len(path)), var[...].shape)
  x = batch()
  got = np.asarray(predict(model, x, Ctx(segments=3)))
  _, single = adapted(cfg, segments=1)
  nnx.update(single, nnx.state(model, nnx.Not(SegmentParam)))  # same backbone and same shared experts
  for k in range(3):
    nnx.update(single, segment_rows(nnx.state(model, SegmentParam), slice(k, k + 1)))  # logits row k
    np.testing.assert_allclose(np.asarray(predict(single, x, Ctx()))[:, 0], got[:, k], rtol=1e-5, atol=1e-5)
  # The library's own per-segment loop and the unshared prefix (benchmark variants) compute the same numbers.
  np.testing.assert_allclose(np.asarray(predict_per_segment(model, x, Ctx(segments=3))), got, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(predict(model, x, Ctx(segments=3, share_prefix=False))), got, rtol=1e-5, atol=1e-5
  )


def test_instance_norm_makes_the_forecast_affine_equivariant():
  model = build(plan.model_spec(tiny()), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  x = batch()
  out = np.asarray(predict(model, x, Ctx()))
  shifted = dict(x, x=3.0 * x["x"] + 5.0)
  np.testing.assert_allclose(np.asarray(predict(model, shifted, Ctx())), 3.0 * out + 5.0, rtol=1e-4, atol=1e-3)


def test_dropout_is_active_in_training_and_off_in_eval():
  model = build(plan.model_spec(tiny()), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  x = batch()
  eval1, eval2 = (np.asarray(predict(model, x, Ctx())) for _ in range(2))
  np.testing.assert_array_equal(eval1, eval2)
  train = np.asarray(predict(model, x, Ctx(key=jax.random.key(0))))
  assert not np.allclose(train, eval1)


def test_dropout_masks_keep_the_rate_and_are_independent_across_segments_steps_and_sites():
  """layers.keep_mask: P(keep) = 1 - rate to 1e-3; segments, call sites and keys draw unrelated masks; the same
  key draws the same masks; a segment's mask follows its id, not its position among the computed segments."""
  from mola_jax.models.layers import keep_mask

  rate, shape = 0.1, (4, 64, 11, 128)  # [K, B, tokens, d]: 360k elements per segment
  ctx = Ctx(key=jax.random.key(0), segments=4)
  first, second = keep_mask(ctx, shape, rate), keep_mask(ctx, shape, rate)  # two sites of one pass
  m = np.asarray(first).reshape(4, -1)
  assert abs(m.mean() - (1 - rate)) < 1e-3
  assert np.abs(m.mean(axis=1) - (1 - rate)).max() < 2e-3  # each segment on its own
  # Independence: two different masks are both kept with probability (1 - rate)^2, and their correlation is ~0.
  pairs = [
    (m[0], m[1]),
    (m[2], m[3]),
    (m[0], np.asarray(second).reshape(4, -1)[0]),
    (m[0], np.asarray(keep_mask(Ctx(key=jax.random.key(1), segments=4), shape, rate)).reshape(4, -1)[0]),
  ]
  for a, b in pairs:  # segments, sites (layers) and keys (steps)
    assert abs((a & b).mean() - (1 - rate) ** 2) < 2e-3
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
  # Reproducible, and segment 2 draws the same mask computed alone or beside the others.
  again = keep_mask(Ctx(key=jax.random.key(0), segments=4), shape, rate)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
  alone = keep_mask(Ctx(key=jax.random.key(0), segments=1, segment_ids=jnp.array([2])), (1,) + shape[1:], rate)
  np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(first)[2])


def test_training_pass_equals_one_pass_per_segment_with_dropout():
  """With dropout on, the batched pass and the official K separate passes draw the same masks for each segment
  (they follow the segment ids), so they compute the same training forecast; so does a pass over a subset."""
  cfg = tiny()
  _, model = adapted(cfg, segments=3)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.LoRAParam) and path[-1] == "b":
      var[...] = 0.1 * jax.random.normal(jax.random.key(len(path)), var[...].shape)
  x = batch()
  key = jax.random.key(3)
  got = np.asarray(predict(model, x, Ctx(key=key, segments=3)))
  assert not np.allclose(got, np.asarray(predict(model, x, Ctx(segments=3))))  # dropout is on
  np.testing.assert_allclose(
    np.asarray(predict_per_segment(model, x, Ctx(key=key, segments=3))), got, rtol=1e-5, atol=1e-5
  )
  graphdef, seg, rest = nnx.split(model, SegmentParam, ...)
  ids = jnp.array([0, 2])
  subset = nnx.merge(graphdef, jax.tree.map(lambda v: v[ids], seg), rest)
  part = np.asarray(predict(subset, x, Ctx(key=key, segments=2, segment_ids=ids)))
  np.testing.assert_allclose(part, got[:, [0, 2]], rtol=1e-5, atol=1e-5)
