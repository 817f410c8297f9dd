"""OLinear (models/olinear.py): the orthogonal basis against a numpy transcription of the official notebook, the
forward pass against a numpy transcription of the official model, stage 2 (zero deltas, the batched pass against K
passes, lora_heads, the other techniques), the bases in the frozen backbone, and a real run."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from mola_jax import config_lib, data, plan
from mola_jax.inference import load_run
from mola_jax.models import Ctx, build, layer_groups, predict, predict_per_segment, validate
from mola_jax.models.adapters import SegmentDelta, no_adapter
from mola_jax.models.olinear import Mixing, OLinear, lag_correlation, orthogonal_basis
from mola_jax.models.techniques import HeadBank
from mola_jax.state import TrainState
from mola_jax.train import train_and_evaluate

L, S, D, E = 96, 8, 5, 3  # the config's look-back L; E: the embedding width


def series(rows=400, channels=D, seed=0):
  """[rows, channels]: an AR(1) process plus a daily-like cycle per channel, each at its own scale and offset."""
  rng = np.random.default_rng(seed)
  out = np.zeros((rows, channels))
  for t in range(1, rows):
    out[t] = 0.8 * out[t - 1] + rng.standard_normal(channels)
  out += 2.0 * np.sin(2 * np.pi * np.arange(rows) / 24)[:, None]
  return out * rng.uniform(0.5, 3.0, channels) + rng.uniform(-5.0, 5.0, channels)


def official_basis(values, length):
  """The official notebook (dataset/Generate_corrmat.ipynb, its first cell) in numpy: per channel, `length` lagged
  copies of the series, np.cov of them with each column divided by its variance, channels with a variance under
  1e-4 left out, the mean over channels; its eigenvectors as rows, largest eigenvalue first."""
  mats = []
  for j in range(values.shape[1]):
    lagged = np.array([values[i : len(values) - length + i + 1, j] for i in range(length)])  # [length, windows]
    cov = np.cov(lagged)
    diag = np.diag(cov)
    if (diag < 1e-4).any():
      continue
    mats.append(cov / diag)
  sigma = np.mean(mats, axis=0)
  _, vectors = np.linalg.eigh(sigma)
  return sigma, np.flip(vectors.T, axis=0)


def softplus(x):
  return np.logaddexp(0.0, x)


def gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x, norm):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * f64(norm.scale) + f64(norm.bias)


def f64(var):
  return np.asarray(var[...], np.float64)


def linear(x, dense):
  return x @ f64(dense.kernel) + f64(dense.bias)


def official_layer(h, layer):
  """The official LinearEncoder in eval: NormLin (softplus, rows L1-normalised), residual, LN, FFN, residual, LN."""
  a = softplus(f64(layer.mix.weight))
  a = a / np.abs(a).sum(-1, keepdims=True)
  h = layer_norm(h + linear(a @ linear(h, layer.value), layer.out), layer.norm1)
  return layer_norm(h + linear(gelu(linear(h, layer.ffn1)), layer.ffn2), layer.norm2)


def official(x, model):
  """The official OLinear forward (model/OLinear.py, RevIN, Encoder_ori) in float64 numpy, eval, read from the
  weights of `model`. The embedding is applied to the values before the transform, as the official code does."""
  x = x.astype(np.float64)
  b = x.shape[0]
  mean, std = x.mean(1, keepdims=True), np.sqrt(x.var(1, keepdims=True) + 1e-5)
  x = (x - mean) / std * f64(model.revin_scale) + f64(model.revin_shift)
  tokens = x.transpose(0, 2, 1)[..., None]  # [B, D, L, 1]
  tokens = tokens if model.token is None else tokens * f64(model.token)  # [B, D, L, E]
  z = tokens.swapaxes(-1, -2) @ f64(model.basis_in).T + f64(model.offset_in)[None, :, None, :]  # [B, D, E, L]
  h = linear(z.reshape(b, D, -1), model.embed)
  for layer in model.layers:
    h = official_layer(h, layer)
  c = linear(layer_norm(h, model.norm), model.head).reshape(b, D, -1, S)  # [B, D, E, S]
  y = c @ f64(model.basis_out) + f64(model.offset_out)[None, :, None, :]
  y = y.swapaxes(-1, -2).reshape(b, D, -1)  # [B, D, S * E]
  y = linear(gelu(linear(y, model.fc1)), model.fc2).transpose(0, 2, 1)  # [B, S, D]
  y = (y - f64(model.revin_shift)) / (f64(model.revin_scale) + 1e-10)
  return y * std + mean


def batch(seed=1):
  return {"x": series(rows=4 * L, seed=seed)[: 4 * L].reshape(4, L, D).astype(np.float32)}


def randomise(model, seed=2):
  """Every weight moved off its initialisation (LayerNorm and RevIN scales off 1, offsets off 0), and both bases
  from a synthetic series: a stage-1 model with nothing at a special value."""
  rng = np.random.default_rng(seed)
  noise = lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
  nnx.update(model, jax.tree.map(noise, nnx.state(model, nnx.Param)))
  model.set_basis(series(seed=seed))


def standalone(embed_size=E):
  cfg = config_lib.default().model.olinear
  cfg.update(d_model=16, d_ff=12, embed_size=embed_size)
  return OLinear(cfg, seq_len=L, pred_len=S, channels=D, marks=0, rngs=nnx.Rngs(0), make_adapter=no_adapter)


def config(method="mola", targets=None):
  cfg = config_lib.default()
  cfg.backbone, cfg.method = "olinear", method
  cfg.adapt.targets = targets
  cfg.model.olinear.update(d_model=16, d_ff=12, embed_size=E)
  for settings in cfg.technique.values():  # small banks: two experts, rank 2
    settings.update(**{k: 2 for k in ("num_experts", "rank") if k in settings})
  return cfg


def stage2(segments, method="mola", targets=None):
  """A stage-1 model (random weights, a non-identity basis) and a stage-2 model whose backbone is a copy of it."""
  cfg = config(method, targets)
  base = build(plan.model_spec(cfg), channels=D, marks=0, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  randomise(base)
  model = build(plan.model_spec(cfg), channels=D, marks=0, pred_len=S, segments=segments, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  return base, model


def perturb_banks(model, seed=3):
  """Nonzero B of every LoRA / MoLA bank: every segment its own weights."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.LoRAParam) and path[-1] == "b":
      var[...] = (0.1 * rng.standard_normal(var[...].shape)).astype(np.float32)


@nnx.jit(static_argnames=("segments", "train"))
def forward(model, x, segments=1, train=False):
  return predict(model, x, Ctx(key=jax.random.key(0) if train else None, segments=segments))


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


def test_orthogonal_basis_is_the_official_one():
  values = series(rows=300, channels=4)
  values[:, 3] = 1e-3 * values[:, 3]  # a lagged variance under 1e-4: the official rule leaves this channel out
  sigma, want = official_basis(values, 16)
  np.testing.assert_allclose(lag_correlation(values, 16), sigma, rtol=1e-9, atol=1e-12)
  q = orthogonal_basis(values, 16)
  np.testing.assert_allclose(q @ q.T, np.eye(16), atol=1e-10)
  sign = np.sign(np.sum(q * want, axis=1, keepdims=True))  # an eigenvector's sign is arbitrary
  np.testing.assert_allclose(q, sign * want, atol=1e-8)
  # It diagonalises the matrix eigh reads (the lower triangle), largest eigenvalue first.
  diag = q @ (np.tril(sigma) + np.tril(sigma, -1).T) @ q.T
  np.testing.assert_allclose(diag, np.diag(np.diag(diag)), atol=1e-10)
  assert np.all(np.diff(np.diag(diag)) <= 0)
  # Each channel's scale and offset do not matter: standardised training rows give the same basis.
  kept = values[:, :3]
  standardised = (kept - kept.mean(0)) / kept.std(0)
  np.testing.assert_allclose(np.abs(np.sum(orthogonal_basis(standardised, 16) * q, axis=1)), 1.0, atol=1e-8)


def test_orthogonal_basis_needs_enough_rows_and_some_variance():
  with pytest.raises(ValueError, match="more than 16 rows"):
    orthogonal_basis(series(rows=16), 16)
  with pytest.raises(ValueError, match="every channel"):
    orthogonal_basis(np.ones((100, 3)), 16)


@pytest.mark.parametrize("embed_size", [E, 1])
def test_forward_equals_the_official_forward(embed_size, graph_mode):
  model = standalone(embed_size)
  randomise(model)
  assert not np.allclose(model.basis_in[...], np.eye(L), atol=0.1)
  x = batch()
  got = np.asarray(forward(model, x))[:, 0]  # [B, S, D]
  np.testing.assert_allclose(got, official(x["x"], model), rtol=1e-4, atol=1e-4)


def test_set_basis_fills_both_bases_from_the_training_rows():
  model, values = standalone(), series(seed=5)
  model.set_basis(values)
  np.testing.assert_allclose(model.basis_in[...], orthogonal_basis(values, L), atol=1e-6)
  np.testing.assert_allclose(model.basis_out[...], orthogonal_basis(values, S), atol=1e-6)


def test_the_bases_belong_to_the_frozen_backbone():
  base, model = stage2(segments=2)
  for m, stage in ((base, "pretrain"), (model, "adapt")):
    state = TrainState.create(m, stage)
    assert {"basis_in", "basis_out"} <= set(state.frozen)
    assert not {"basis_in", "basis_out"} & (set(state.train) | set(state.seg))


def test_groups_and_ffn_shape():
  assert layer_groups("olinear") == (("ffn", "mix", "fc", "head"), ("ffn",))
  model = standalone()
  assert model.ffn_shape(32, D, 0) == (32 * D, 16, 12)


def test_stage2_zero_deltas_give_k_copies_of_the_stage1_forecast(graph_mode):
  base, model = stage2(segments=3, targets=("ffn", "mix", "fc", "head"))
  x = batch()
  got = np.asarray(forward(model, x, segments=3))  # [B, K, S, D]
  want = official(x["x"], base)
  for k in range(3):
    np.testing.assert_allclose(got[:, k], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "dropout"])
def test_the_batched_pass_equals_k_passes(train):
  """Nonzero deltas in every group: the batched pass equals the official K passes, with dropout too (each segment
  draws its own masks, of the mixing matrix included)."""
  _, model = stage2(segments=3, targets=("ffn", "mix", "fc", "head"))
  perturb_banks(model)
  x = batch()
  ctx = lambda: Ctx(key=jax.random.key(4) if train else None, segments=3)
  got = np.asarray(predict(model, x, ctx()))
  np.testing.assert_allclose(got, np.asarray(predict_per_segment(model, x, ctx())), rtol=1e-5, atol=1e-5)
  assert not np.allclose(got[:, 0], got[:, 1], atol=1e-3)
  if train:  # dropout is on
    assert not np.allclose(got, np.asarray(predict(model, x, Ctx(segments=3))), atol=1e-3)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "dropout"])
def test_stage2_folds_its_frozen_head_chain_into_one_map(train):
  """MoLA on the FFN (the default) leaves head -> output basis -> offset -> fc1 frozen and linear: the stage-2
  model runs them as one folded map and forecasts what the chain forecasts (the official model at zero deltas);
  stage 1, and a stage 2 that adapts the head or fc, keep the chain."""
  base, model = stage2(segments=3)
  assert model.folded and not base.folded
  x = batch()
  np.testing.assert_allclose(np.asarray(forward(model, x, segments=3))[:, 1], official(x["x"], base), rtol=1e-4,
                             atol=1e-4)  # fmt: skip
  perturb_banks(model)
  folded = np.asarray(forward(model, x, segments=3, train=train))
  model.folded = False
  np.testing.assert_allclose(folded, np.asarray(forward(model, x, segments=3, train=train)), rtol=1e-5, atol=1e-5)
  assert not any(stage2(segments=3, targets=targets)[1].folded for targets in (("ffn", "head"), ("ffn", "fc")))


def test_the_mixing_matrix_of_segment_k_is_the_normalised_weight_plus_its_delta():
  rng = np.random.default_rng(6)
  delta = (0.1 * rng.standard_normal((3, D, D))).astype(np.float32)  # [K, input channel, output channel]
  mix = Mixing(D, rngs=nnx.Rngs(0), adapter=SegmentDelta(delta))
  v = rng.standard_normal((1, 2, D, 4)).astype(np.float32)  # [K' = 1, B, D, d]: a shared prefix
  a = softplus(f64(mix.weight))
  a = a / a.sum(-1, keepdims=True)
  np.testing.assert_allclose(a.sum(-1), 1.0)
  got = np.asarray(mix(v, 0.5, Ctx(segments=3)))  # eval: no dropout
  for k in range(3):
    np.testing.assert_allclose(got[k], (a + delta[k].T) @ v[0], rtol=1e-5, atol=1e-5)


def test_lora_heads_gives_each_segment_its_own_projection_to_the_horizon():
  validate("olinear", "lora_heads", None, "any_improved")
  base, model = stage2(segments=3, method="lora_heads")
  assert isinstance(model.head.adapter, HeadBank)
  x = batch()
  got = np.asarray(forward(model, x, segments=3))  # the heads start as the stage-1 head
  np.testing.assert_allclose(got, np.repeat(official(x["x"], base)[:, None], 3, axis=1), rtol=1e-4, atol=1e-4)
  bank = model.head.adapter
  bank.kernel[...] = (0.1 * np.random.default_rng(3).standard_normal(bank.kernel[...].shape)).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(forward(model, x, segments=3)),
    np.asarray(predict_per_segment(model, x, Ctx(segments=3))),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize("method", ["ia3", "moadapter", "mofourier"])
def test_the_other_techniques_start_at_the_frozen_model(method):
  validate("olinear", method, None, "any_improved")
  base, model = stage2(segments=2, method=method)
  x = batch()
  got = np.asarray(forward(model, x, segments=2))
  np.testing.assert_allclose(got, np.repeat(np.asarray(forward(base, x)), 2, axis=1), rtol=1e-5, atol=1e-5)


def test_mola_on_olinear_trains_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))  # synthetic data: no file is read
  cfg = config()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.horizon, cfg.segment_len = 48, 24
  cfg.pretrain.epochs, cfg.adapt.epochs = 1, 1
  cfg.pretrain.loss = cfg.adapt.loss = "weighted_l1"  # OLinear's own loss, end to end
  results = train_and_evaluate(cfg, tmp_path / "run")
  assert np.isfinite(results["test_mse"]) and results["segments"] == 2
  # The bases came from the training rows in stage 1 and came back with the backbone in stage 2.
  series = data.load_series(cfg.data)
  rows = series.values[slice(*series.borders["train"])]
  model = load_run(tmp_path / "run").model
  np.testing.assert_allclose(np.asarray(model.basis_in[...]), orthogonal_basis(rows, 96), atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.basis_out[...]), orthogonal_basis(rows, 24), atol=1e-5)
