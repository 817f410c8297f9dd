"""Autoformer: shapes and declared adapters, zero-init MoLA/LoRA == the frozen backbone, TSLib's parameter count,
and its pieces (auto-correlation, delay selection and aggregation, my_Layernorm, the decoder's inputs) against
independent numpy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import new_state, tiny, train_step
from flax import nnx

from mola_jax import config_lib, plan, steps
from mola_jax.models import Ctx, adapted_groups, build, predict
from mola_jax.models.autoformer import (
  AutoCorrelation,
  SeasonalLayerNorm,
  autocorrelation,
  delay_aggregate,
  num_delays,
  top_delays,
)
from mola_jax.models.dlinear import decompose

L, D, F, S = 96, 7, 4, 8


def tiny_cfg():
  cfg = tiny()
  cfg.backbone = "autoformer"
  cfg.model.autoformer.update(d_model=16, d_ff=32, n_heads=2, e_layers=2, d_layers=1)
  return cfg


def batch(k=1, b=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.standard_normal((b, L, D), np.float32),
    "x_mark": rng.uniform(-0.5, 0.5, (b, L, F)).astype(np.float32),
    "y": rng.standard_normal((b, k * S, D), np.float32),
    "y_mark": rng.uniform(-0.5, 0.5, (b, k * S, F)).astype(np.float32),
  }


@nnx.jit(static_argnames=("segments",))
def forward(model, x, segments=1):
  """predict() in eval, in one compiled program (tiny models compile faster whole than op by op). Tests that use
  the same config and shapes share its compiled programs."""
  return predict(model, x, Ctx(segments=segments))


def stage2(cfg, segments, *, method="mola"):
  """A stage-1 model and a stage-2 model whose backbone is a copy of it (adapters as initialised: B = 0)."""
  cfg.method = method
  base = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  model = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=segments, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  return base, model


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


def softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# The model: shapes, adapters, parameter count, MoLA with B = 0


def test_shapes_and_the_declared_adapted_layers():
  cfg = tiny_cfg()
  base, model = stage2(cfg, segments=3)
  assert forward(base, batch(1)).shape == (3, 1, S, D)
  assert forward(model, batch(3), segments=3).shape == (3, 3, S, D)
  # Targets unset: the two FFN layers of both encoder layers get a bank (A, B, logits), nothing else.
  assert adapted_groups(cfg.backbone, cfg.method, cfg.adapt.targets) == ("ffn",)
  assert len([v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.LoRAParam)]) == 3 * 2 * 2
  assert model.ffn_shape(32, D, F) == (32 * L, 16, 32)
  # Every group offered can be targeted: 4 auto-correlations x 4 projections, 3 FFNs x 2 layers.
  cfg.adapt.targets = ("ffn", "dec_ffn", "attn")
  everything = nnx.eval_shape(
    lambda: build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=3, rngs=nnx.Rngs(0))
  )
  assert len([v for _, v in nnx.iter_graph(everything) if isinstance(v, nnx.LoRAParam)]) == 3 * (4 * 4 + 3 * 2)


def test_param_count_at_tslib_etth1_settings():
  # Hand-counted from the MoLA fork's modules at TSLib's ETTh1 settings, pred_len = 24: 2 embeddings (conv
  # 3*7*512 + timeF 4*512); per encoder layer an auto-correlation 4*(512^2+512) and the fork's biased FFN
  # 512*2048+2048+2048*512+512; my_Layernorm 2*512; the decoder layer's 2 auto-correlations, bias-free FFN
  # 2*512*2048 and trend conv 3*512*7; my_Layernorm; projection 512*7+7.
  want = 2 * 12_800 + 2 * (1_050_624 + 2_099_712) + 1_024 + (2 * 1_050_624 + 2_097_152 + 10_752) + 1_024 + 3_591
  cfg = config_lib.default()
  cfg.backbone = "autoformer"
  model = nnx.eval_shape(
    lambda: build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  )
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == want == 10_541_063


def test_zero_b_equals_frozen_backbone_for_every_segment(graph_mode):
  """In eval, a stage-2 model (mola and lora, B = 0) forecasts segment k exactly as the stage-1 model does with
  segment k's time features."""
  cfg = tiny_cfg()
  x = batch(3)
  base, mola = stage2(cfg, segments=3)
  _, lora = stage2(cfg, segments=3, method="lora")
  for model in (mola, lora):
    got = np.asarray(forward(model, x, segments=3))  # [B, K, S, D]
    for k in range(3):
      xk = dict(x, y=x["y"][:, k * S : (k + 1) * S], y_mark=x["y_mark"][:, k * S : (k + 1) * S])
      np.testing.assert_allclose(got[:, k], np.asarray(forward(base, xk))[:, 0], rtol=1e-5, atol=1e-5)


def test_decoder_inputs_are_the_decomposed_window():
  cfg = tiny_cfg()
  model = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  x = jnp.asarray(batch(1)["x"])
  seasonal, trend = (np.asarray(a)[0] for a in model.decoder_inputs(x))  # [B, 48 + S, D]
  want_seasonal, want_trend = (np.asarray(a) for a in decompose(x, 25))
  assert seasonal.shape == trend.shape == (3, 48 + S, D)
  np.testing.assert_array_equal(seasonal[:, :48], want_seasonal[:, -48:])
  np.testing.assert_array_equal(seasonal[:, 48:], 0.0)
  np.testing.assert_array_equal(trend[:, :48], want_trend[:, -48:])
  np.testing.assert_allclose(trend[:, 48:], np.broadcast_to(np.asarray(x).mean(1, keepdims=True), (3, S, D)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Auto-correlation pieces against independent computations


def test_autocorrelation_against_the_direct_sum_and_numpy_fft():
  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((2, 3, 20, 5)), rng.standard_normal((1, 3, 20, 5))  # leading axes broadcast
  got = np.asarray(autocorrelation(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)))
  # R[tau] = mean over channels of sum_t q[(t + tau) mod L] k[t]: q rolled back by tau, against k.
  direct = np.stack([(np.roll(q, -tau, axis=-2) * k).sum(-2).mean(-1) for tau in range(20)], axis=-1)
  fft = np.fft.irfft(np.fft.rfft(q, axis=-2) * np.conj(np.fft.rfft(k, axis=-2)), n=20, axis=-2).mean(-1)
  assert got.shape == (2, 3, 20)
  np.testing.assert_allclose(direct, fft, atol=1e-9)
  np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)
  # An odd length keeps every delay (TSLib's irfft would return L - 1 of them).
  assert autocorrelation(jnp.ones((7, 2)), jnp.ones((7, 2))).shape == (7,)


def test_a_series_of_period_12_correlates_most_at_multiples_of_12():
  t = np.arange(L)
  rng = np.random.default_rng(0)
  series = np.sin(2 * np.pi * t / 12)[:, None] * np.array([1.0, 2.0, -0.5]) + 0.05 * rng.standard_normal((L, 3))
  v = jnp.asarray(series[None], jnp.float32)  # [B = 1, L, c]
  corr = autocorrelation(v, v)  # [1, L]
  want = np.fft.irfft(np.abs(np.fft.rfft(series, axis=0)) ** 2, n=L, axis=0).mean(-1)
  np.testing.assert_allclose(np.asarray(corr)[0], want, rtol=1e-4, atol=1e-4)
  top_k = num_delays(L, 3)
  assert top_k == int(3 * np.log(96)) == 13
  delays, weights = top_delays(corr, top_k, training=False)
  delays = np.asarray(delays)[0]
  # 96 steps hold 8 whole periods: the 8 best delays are 0, 12, ..., 84, the lag 0 (the series itself) first.
  assert delays[0] == 0 and sorted(delays[:8]) == list(range(0, L, 12))
  assert all(d % 12 in (1, 11) for d in delays[8:])  # then the neighbours of the peaks
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)


def test_top_delays_per_sample_in_eval_and_per_batch_in_training():
  corr = np.random.default_rng(1).standard_normal((2, 5, 20)).astype(np.float32)  # [K', B, L]: no ties
  # Eval: each sample's own 4 best delays, softmax of their correlations.
  delays, weights = top_delays(jnp.asarray(corr), 4, training=False)
  own = np.argsort(-corr, axis=-1)[..., :4]
  np.testing.assert_array_equal(np.asarray(delays), own)
  np.testing.assert_allclose(np.asarray(weights), softmax(np.take_along_axis(corr, own, -1)), rtol=1e-5)
  # Training: the 4 best delays of each segment's batch mean, shared by its samples, weighted per sample.
  delays, weights = top_delays(jnp.asarray(corr), 4, training=True)
  shared = np.broadcast_to(np.argsort(-corr.mean(1), axis=-1)[:, None, :4], (2, 5, 4))
  np.testing.assert_array_equal(np.asarray(delays), shared)
  np.testing.assert_allclose(np.asarray(weights), softmax(np.take_along_axis(corr, shared, -1)), rtol=1e-5)
  assert not np.array_equal(own, shared)


def test_delay_aggregate_against_numpy_roll_and_weight():
  rng = np.random.default_rng(2)
  v = rng.standard_normal((2, 3, 10, 4)).astype(np.float32)  # [K', B, L, c]
  delays = np.stack([[rng.permutation(10)[:3] for _ in range(3)] for _ in range(2)])  # [K', B, 3], distinct
  weights = softmax(rng.standard_normal((2, 3, 3))).astype(np.float32)
  got = np.asarray(delay_aggregate(jnp.asarray(v), jnp.asarray(delays), jnp.asarray(weights)))
  want = np.zeros_like(v)
  for i in range(2):
    for b in range(3):
      for j in range(3):  # TSLib: torch.roll(values, -delay) along time, weighted
        want[i, b] += weights[i, b, j] * np.roll(v[i, b], -delays[i, b, j], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_only_training_forecasts_depend_on_the_rest_of_the_batch():
  """The eval aggregation is per sample; the training one picks its delays from the whole batch."""
  layer = AutoCorrelation(8, 2, 1, rngs=nnx.Rngs(0), make_adapter=None)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 4, 24, 8)), jnp.float32)  # [K', B, L, d]
  for ctx, same in ((Ctx(), True), (Ctx(key=jax.random.key(0)), False)):
    whole, alone = np.asarray(layer(x, x, ctx))[:, :1], np.asarray(layer(x[:, :1], x[:, :1], ctx))
    assert np.allclose(whole, alone, rtol=1e-5, atol=1e-5) == same
  # Cross-correlation with longer keys: keys and values cut to the queries' length; shorter ones padded.
  assert layer(x[..., :10, :], x, Ctx()).shape == (1, 4, 10, 8)
  assert layer(x, x[..., :10, :], Ctx()).shape == (1, 4, 24, 8)


def test_seasonal_layer_norm_has_zero_mean_over_time():
  norm = SeasonalLayerNorm(8, nnx.Rngs(0))
  x = np.random.default_rng(4).normal(3.0, 2.0, (2, 3, 10, 8)).astype(np.float32)
  out = np.asarray(norm(jnp.asarray(x)))
  np.testing.assert_allclose(out.mean(axis=-2), 0.0, atol=1e-5)
  ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)  # scale 1, bias 0 at init
  np.testing.assert_allclose(out, ln - ln.mean(-2, keepdims=True), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# The stage-2 train step


def test_stage2_train_step_trains_only_the_adapters():
  cfg = tiny_cfg()
  # One encoder layer and no dropout (layers.dropout, tested elsewhere): each op costs CPU compile time here.
  cfg.model.autoformer.update(e_layers=1, dropout=0.0)
  _, model = stage2(cfg, segments=2)
  leaves = lambda m, kind: [np.asarray(v) for v in jax.tree.leaves(nnx.state(m, kind))]
  frozen_before, adapters_before = leaves(model, nnx.Not(nnx.LoRAParam)), leaves(model, nnx.LoRAParam)
  state, step = new_state(model), train_step(2)
  for _ in range(2):
    state, loss = step(state, batch(2), steps.training_segments([True, True]))
  assert np.isfinite(float(loss))
  after = state.model()
  for a, b in zip(frozen_before, leaves(after, nnx.Not(nnx.LoRAParam)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(adapters_before, leaves(after, nnx.LoRAParam), strict=True))
