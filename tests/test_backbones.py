"""PatchTST, DLinear and the vanilla Transformer: shapes, the adapted layers each declares, zero-init MoLA ==
frozen backbone, TSLib's parameter counts, and forward pieces against independent computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import new_state, tiny, train_step
from flax import nnx

from mola_jax import config_lib, plan, steps
from mola_jax.models import Ctx, adapted_groups, build, predict
from mola_jax.models.dlinear import decompose
from mola_jax.models.layers import BatchNorm
from mola_jax.models.patchtst import num_patches, patchify

NAMES = ["patchtst", "dlinear", "transformer"]
L, D, F, S = 96, 7, 4, 8


def tiny_cfg(name: str):
  cfg = tiny()
  cfg.backbone = name
  cfg.model.patchtst.update(d_model=16, d_ff=32, n_heads=2, e_layers=2)
  cfg.model.transformer.update(d_model=16, d_ff=32, n_heads=2, e_layers=2, d_layers=1)
  return cfg


def batch(k=1, b=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.standard_normal((b, L, D), np.float32),
    "x_mark": rng.uniform(-0.5, 0.5, (b, L, F)).astype(np.float32),
    "y": rng.standard_normal((b, k * S, D), np.float32),
    "y_mark": rng.uniform(-0.5, 0.5, (b, k * S, F)).astype(np.float32),
  }


@nnx.jit(static_argnames=("segments", "train"))
def forward(model, x, segments=1, train=False):
  """predict() in one compiled program: tiny models compile faster whole than op by op."""
  return predict(model, x, Ctx(key=jax.random.key(0) if train else None, segments=segments))


def stage2(cfg, segments, *, method="mola"):
  """A stage-1 model and a stage-2 model whose backbone is a copy of it (adapters as initialised: B = 0)."""
  cfg.method = method
  base = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  model = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=segments, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  return base, model


def count(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


# ---------------------------------------------------------------------------------------------------------------
# Shapes, declared adapters, parameter counts


@pytest.mark.parametrize("name,banks", [("patchtst", 2 * 2), ("dlinear", 2), ("transformer", 2 * (2 + 1))])
def test_shapes_and_the_declared_adapted_layers(name, banks):
  cfg = tiny_cfg(name)
  base, model = stage2(cfg, segments=3)
  assert forward(base, batch(1)).shape == (3, 1, S, D)
  assert forward(model, batch(3), segments=3).shape == (3, 3, S, D)
  # The training path (segments split after the embedding, BatchNorm on batch statistics). Dropout rate 0:
  # dropout is layers.dropout, tested with iTransformer, and each dropout site costs seconds of CPU compile.
  cfg.model[name].dropout = 0.0
  _, model = stage2(cfg, segments=3)
  assert forward(model, batch(3), segments=3, train=True).shape == (3, 3, S, D)
  # With targets unset, every dense layer of the declared groups and no other gets a bank (A, B, logits).
  adapters = [p for p, v in nnx.iter_graph(model) if isinstance(v, nnx.LoRAParam)]
  assert len(adapters) == 3 * banks
  groups = {"patchtst": ("ffn",), "dlinear": ("linear",), "transformer": ("ffn", "dec_ffn")}[name]
  assert adapted_groups(cfg.backbone, cfg.method, cfg.adapt.targets) == groups


def test_dlinear_individual_has_one_adapted_pair_per_channel():
  cfg = tiny_cfg("dlinear")
  cfg.model.dlinear.individual = True
  _, model = stage2(cfg, segments=2)
  assert forward(model, batch(2), segments=2).shape == (3, 2, S, D)
  assert len([v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.LoRAParam)]) == 3 * 2 * D


@pytest.mark.parametrize(
  "name,params",
  [
    # Hand-counted from TSLib's modules at its ETTh1 settings with pred_len = 24 (BatchNorm buffers excluded):
    # patch embedding 16*512; attention 4*(512^2+512); FFN 512*2048+2048+2048*512+512; 2 LayerNorms; BatchNorm
    # 2*512; flatten head 512*12*24+24.
    ("patchtst", 8_192 + 1_050_624 + 2_099_712 + 2_048 + 1_024 + 147_480),
    ("dlinear", 2 * (96 * 24 + 24)),
    # 2 embeddings (conv 3*7*512 + timeF 4*512); 2 encoder layers; encoder LN; 1 decoder layer (2 attentions,
    # FFN, 3 LN); decoder LN; projection 512*7+7.
    ("transformer", 2 * 12_800 + 2 * 3_152_384 + 1_024 + 4_204_032 + 1_024 + 3_591),
  ],
)
def test_param_count_at_tslib_etth1_settings(name, params):
  cfg = config_lib.default()
  cfg.backbone = name
  model = nnx.eval_shape(
    lambda: build(plan.model_spec(cfg), channels=7, marks=4, pred_len=24, segments=0, rngs=nnx.Rngs(0))
  )
  assert count(nnx.state(model, nnx.Param)) == params


# ---------------------------------------------------------------------------------------------------------------
# MoLA with B = 0 is the frozen backbone


@pytest.mark.parametrize("name", NAMES)
def test_zero_b_equals_frozen_backbone_for_every_segment(name, graph_mode):
  base, model = stage2(tiny_cfg(name), segments=3)
  x = batch(3)
  got = np.asarray(forward(model, x, segments=3))  # [B, K, S, D]
  for k in range(3):
    # Segment k of the Transformer decodes with the time features of its own steps; the others ignore them.
    xk = dict(x, y=x["y"][:, k * S : (k + 1) * S], y_mark=x["y_mark"][:, k * S : (k + 1) * S])
    want = np.asarray(forward(base, xk))[:, 0]
    np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Forward pieces against independent computations


def test_dlinear_decomposition_and_forward_against_numpy():
  x = batch(1)["x"].astype(np.float64)
  kernel = 25
  # The trend: edge-replicated series, averaged over every window of 25 steps (a 'valid' convolution).
  padded = np.pad(x, ((0, 0), (12, 12), (0, 0)), mode="edge")
  trend = np.array(
    [[np.convolve(padded[b, :, c], np.ones(kernel) / kernel, mode="valid") for c in range(D)] for b in range(len(x))]
  ).swapaxes(1, 2)  # [B, L, D]
  seasonal, trend_jax = decompose(jnp.asarray(x, jnp.float32), kernel)
  np.testing.assert_allclose(np.asarray(trend_jax), trend, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(seasonal), x - trend, rtol=1e-5, atol=1e-5)

  cfg = tiny_cfg("dlinear")
  model = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  model.seasonal[0].kernel[...] = jax.random.normal(jax.random.key(0), (L, S))  # not the constant init
  ws, bs = (np.asarray(v[...], np.float64) for v in (model.seasonal[0].kernel, model.seasonal[0].bias))
  wt, bt = (np.asarray(v[...], np.float64) for v in (model.trend[0].kernel, model.trend[0].bias))
  np.testing.assert_allclose(wt, 1.0 / L)  # TSLib's initialisation
  want = np.einsum("bld,ls->bsd", x - trend, ws) + np.einsum("bld,ls->bsd", trend, wt) + (bs + bt)[:, None]
  got = np.asarray(forward(model, batch(1)))[:, 0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_patchtst_patching_against_a_hand_built_case():
  x = jnp.arange(10.0)  # L = 10, patch_len 4, stride 2: pad the end with two copies of the last value
  want = [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9], [8, 9, 9, 9]]
  np.testing.assert_array_equal(np.asarray(patchify(x, 4, 2)), want)
  # TSLib's head size formula int((L - patch_len) / stride + 2) agrees.
  assert num_patches(10, 4, 2) == 5 and num_patches(96, 16, 8) == int((96 - 16) / 8 + 2) == 12
  series = jnp.arange(96.0)
  patches = np.asarray(patchify(series, 16, 8))
  assert patches.shape == (12, 16)
  np.testing.assert_array_equal(patches[0], np.arange(16))
  np.testing.assert_array_equal(patches[-1], np.r_[np.arange(88, 96), np.full(8, 95)])


def test_batchnorm_per_segment_statistics_and_sequential_running_updates():
  bn = BatchNorm(3)
  h = np.random.default_rng(0).normal(2.0, 3.0, (2, 4, 5, 3)).astype(np.float32)  # [K, B, N, d]
  out = np.asarray(bn(jnp.asarray(h), Ctx(key=jax.random.key(0), segments=2)))
  running_mean, running_var = np.zeros(3), np.ones(3)
  for k in range(2):  # what two official passes, one per segment, do to a PyTorch BatchNorm1d
    seg = h[k].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(
      out[k].reshape(-1, 3), (seg - seg.mean(0)) / np.sqrt(seg.var(0) + 1e-5), rtol=1e-4, atol=1e-4
    )
    running_mean = 0.9 * running_mean + 0.1 * seg.mean(0)
    running_var = 0.9 * running_var + 0.1 * seg.var(0, ddof=1)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), running_mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.var[...]), running_var, rtol=1e-5)
  evaluated = np.asarray(bn(jnp.asarray(h), Ctx()))  # eval: the running averages, which stay put
  np.testing.assert_allclose(evaluated, (h - running_mean) / np.sqrt(running_var + 1e-5), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), running_mean, rtol=1e-5)


def test_transformer_decoder_is_causal_and_reads_its_segment_marks():
  cfg = tiny_cfg("transformer")
  model = build(plan.model_spec(cfg), channels=D, marks=F, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  x = batch(1)
  out = np.asarray(forward(model, x))[:, 0]
  late = dict(x, y_mark=x["y_mark"].copy())
  late["y_mark"][:, -1] += 1.0  # the time features of the last forecast step only
  changed = np.asarray(forward(model, late))[:, 0]
  np.testing.assert_array_equal(changed[:, :-1], out[:, :-1])  # earlier steps cannot see it
  assert not np.allclose(changed[:, -1], out[:, -1])


# ---------------------------------------------------------------------------------------------------------------
# The stage-2 step with BatchNorm: the backbone stays frozen, its running statistics are carried and updated


def test_patchtst_stage2_step_updates_batch_stats_and_freezes_the_backbone(graph_mode):
  """After stage-2 steps, the model rebuilt from what the step returned has every backbone weight unchanged and
  new running statistics; the adapters moved."""
  cfg = tiny_cfg("patchtst")
  cfg.model.patchtst.update(e_layers=1, dropout=0.0)  # dropout sites only add CPU compile time here
  _, model = stage2(cfg, segments=2)
  weights = lambda m: [
    np.asarray(v) for v in jax.tree.leaves(nnx.state(m, nnx.Not(nnx.Any(nnx.LoRAParam, nnx.BatchStat))))
  ]
  before, stats_before = weights(model), [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
  adapters_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))]
  assert len(stats_before) == 2  # running mean and variance
  state, step = new_state(model), train_step(2)
  for _ in range(2):
    state, loss = step(state, batch(2), steps.training_segments([True, True]))
  assert np.isfinite(float(loss))
  after = state.model()
  for a, b in zip(before, weights(after), strict=True):
    np.testing.assert_array_equal(a, b)
  assert all(
    not np.array_equal(a, np.asarray(b)) for a, b in zip(stats_before, jax.tree.leaves(state.stats), strict=True)
  )
  assert any(
    not np.array_equal(a, np.asarray(b))
    for a, b in zip(adapters_before, jax.tree.leaves(nnx.state(after, nnx.LoRAParam)), strict=True)
  )
