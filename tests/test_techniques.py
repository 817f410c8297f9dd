"""Every fine-tuning technique as a per-segment bank and as a per-segment mixture (models/techniques.py): the frozen
model at the start (unless the official initialisation is asked for), each bank's arithmetic against a hand
computation, the backbones where a technique does not apply, and a real stage-2 fit of each."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny
from flax import nnx

from mola_jax import config_lib, plan
from mola_jax.errors import ConfigError
from mola_jax.models import Ctx, build, predict, techniques
from mola_jax.train import train_and_evaluate

METHODS = [name for name, t in techniques.TECHNIQUES.items() if t.two_stage]  # every stage-2 method


def models(method: str, backbone: str = "itransformer", official: bool = False, segments: int = 3):
  cfg = tiny()
  cfg.method, cfg.backbone, cfg.adapt.official_init = method, backbone, official
  cfg.model.patchtst.update(d_model=16, d_ff=32, n_heads=2, e_layers=1)
  cfg.model.transformer.update(d_model=16, d_ff=32, n_heads=2, e_layers=1, d_layers=1)
  cfg.model.informer.update(d_model=16, d_ff=32, n_heads=2, e_layers=2, d_layers=1)
  cfg.model.autoformer.update(d_model=16, d_ff=32, n_heads=2, e_layers=1, d_layers=1)
  base = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=0, rngs=nnx.Rngs(0))
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=segments, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))  # the trained backbone, the adapters as initialised
  return base, model


def batch(b=2, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.standard_normal((b, 96, 7), np.float32), "x_mark": rng.uniform(-0.5, 0.5, (b, 96, 4)).astype("f"),
          "y_mark": rng.uniform(-0.5, 0.5, (b, 8 * k, 4)).astype("f")}  # fmt: skip


@nnx.jit(static_argnames=("segments",))
def forward(model, x, segments=1):
  return predict(model, x, Ctx(segments=segments))


def frozen(base, x, k):
  """The stage-1 model's forecast of segment k: one segment, fed segment k's own future time features (the
  encoder-decoder backbones read them)."""
  return np.asarray(forward(base, dict(x, y_mark=x["y_mark"][:, 8 * k : 8 * k + 8])))[:, 0]


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


@pytest.mark.parametrize("method", METHODS)
def test_every_technique_starts_at_the_frozen_model(method, graph_mode):
  base, model = models(method)
  x = batch()
  got = np.asarray(forward(model, x, segments=3))
  assert sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) > 0  # something to train
  for k in range(3):
    np.testing.assert_allclose(got[:, k], frozen(base, x, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone,method", [("patchtst", "moia3"), ("patchtst", "adapter"),
                                             ("transformer", "moadapter"), ("transformer", "lora_heads"),
                                             ("dlinear", "mofourier"), ("informer", "ia3"), ("informer", "moadapter"),
                                             ("informer", "mofourier"), ("informer", "lora_heads"),
                                             ("autoformer", "moia3"), ("autoformer", "adapter"),
                                             ("autoformer", "fourier"), ("autoformer", "lora_heads")])  # fmt: skip
def test_other_backbones_start_at_the_frozen_model_too(backbone, method):
  base, model = models(method, backbone)
  x = batch()
  got = np.asarray(forward(model, x, segments=3))
  for k in range(3):
    np.testing.assert_allclose(got[:, k], frozen(base, x, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["adapter", "fourier", "lora_heads"])
def test_the_official_initialisation_does_not_start_at_the_frozen_model(method):
  base, model = models(method, official=True)
  x = batch()
  assert not np.allclose(np.asarray(forward(model, x, segments=3))[:, 0], np.asarray(forward(base, x))[:, 0], atol=1e-4)


def test_ia3_scales_queries_values_and_the_ffn_hidden_activation():
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.standard_normal((3, 2, 5, 8)), jnp.float32)  # [K, B, tokens, d]
  w, b = jnp.asarray(rng.standard_normal((8, 8)), jnp.float32), jnp.asarray(rng.standard_normal(8), jnp.float32)
  out = techniques.IA3Bank(8, where="output", segments=3, experts=0, heads=2, rngs=nnx.Rngs(0))
  out.scale[...] = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)  # [K, d_head]
  scale = np.tile(np.asarray(out.scale[...]), (1, 2))  # the same vector for both heads
  np.testing.assert_allclose(
    np.asarray(out(h, w, b)),
    (np.asarray(h) @ np.asarray(w) + np.asarray(b)) * scale[:, None, None],
    rtol=1e-5,
    atol=1e-5,
  )
  mixed = techniques.IA3Bank(8, where="input", segments=3, experts=4, heads=None, rngs=nnx.Rngs(0))
  mixed.scale[...] = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)  # P shared vectors
  logits = np.asarray(mixed.logits[...])
  weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # [K, P]
  want = (np.asarray(h) * (weights @ np.asarray(mixed.scale[...]))[:, None, None]) @ np.asarray(w) + np.asarray(b)
  np.testing.assert_allclose(np.asarray(mixed(h, w, b)), want, rtol=1e-4, atol=1e-4)


def test_fourier_delta_is_the_real_inverse_fft_of_the_sparse_spectrum():
  bank = techniques.FourierBank(
    6, 10, segments=2, experts=0, n=7, scale=1.0, official_init=True, rngs=nnx.Rngs(3)
  )  # non-square
  pos, coef = np.asarray(bank.positions[...]), np.asarray(bank.coef[...])
  assert pos.shape == (7, 2) and (pos[:, 0] < 6).all() and (pos[:, 1] < 10).all() and coef.shape == (2, 7)
  assert len({tuple(p) for p in pos}) == 7  # distinct positions, over the whole non-square grid
  assert pos[:, 0].max() * 10 + pos[:, 1].max() >= 10  # not only the first row (the official square-only split)
  for k in range(2):
    spectrum = np.zeros((6, 10), complex)
    spectrum[pos[:, 0], pos[:, 1]] = coef[k]
    np.testing.assert_allclose(np.asarray(bank.delta()[k]), np.fft.ifft2(spectrum).real, rtol=1e-5, atol=1e-7)
  mixed = techniques.FourierBank(6, 10, segments=3, experts=2, n=7, scale=1.0, official_init=True, rngs=nnx.Rngs(3))
  w = np.asarray(jax.nn.softmax(mixed.logits[...], axis=-1))  # [K, P]
  per_expert = np.asarray(bank.delta())  # same seed: same positions and spectra, one per expert
  np.testing.assert_allclose(np.asarray(mixed.delta()), np.einsum("kp,pio->kio", w, per_expert), rtol=1e-5, atol=1e-6)
  scaled = techniques.FourierBank(6, 10, segments=2, experts=0, n=7, official_init=True, rngs=nnx.Rngs(3), scale=150.0)
  np.testing.assert_allclose(np.asarray(scaled.delta()), 150.0 * np.asarray(bank.delta()), rtol=1e-5, atol=1e-6)


def test_a_bottleneck_adapter_adds_its_term_to_the_ffn_output():
  rng = np.random.default_rng(1)
  bank = techniques.BottleneckBank(8, 3, segments=2, experts=0, dropout_rate=0.0, official_init=True, rngs=nnx.Rngs(0))
  y = jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32)  # [K, rows, d]
  got = np.asarray(bank(y, Ctx(segments=2)))
  gelu = lambda z: np.asarray(jax.nn.gelu(jnp.asarray(z), approximate=False))
  for k in range(2):
    hidden = gelu(np.asarray(y[k]) @ np.asarray(bank.w1[...][k]) + np.asarray(bank.b1[...][k]))
    want = np.asarray(y[k]) + hidden @ np.asarray(bank.w2[...][k]) + np.asarray(bank.b2[...][k])
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,backbone,message", [
  ("ia3", "dlinear", "adapts attention or FFN blocks"), ("adapter", "dlinear", "adapts attention or FFN blocks"),
  ("lora_heads", "dlinear", "no separate head"), ("fourier", "nosuch", "unknown backbone")])  # fmt: skip
def test_a_technique_where_it_does_not_apply_is_one_clear_error(method, backbone, message):
  cfg = config_lib.default()
  cfg.method, cfg.backbone = method, backbone
  with pytest.raises(config_lib.ConfigError, match=message):
    plan.make(cfg)
  cfg.backbone, cfg.method, cfg.adapt.selection = "itransformer", "ia3", "per_segment"
  with pytest.raises(config_lib.ConfigError, match="per_segment"):
    plan.make(cfg)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("stage1")
  cfg = synthetic()
  cfg.stage = "pretrain"
  train_and_evaluate(cfg, workdir)
  return workdir


def synthetic():
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.horizon, cfg.segment_len = 48, 16
  cfg.adapt.update(epochs=1, lr=3e-3)
  return cfg


@pytest.mark.parametrize("method", METHODS)
def test_each_technique_trains_in_stage2_from_one_stage1_model(method, stage1, tmp_path, monkeypatch):
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))
  cfg = synthetic()
  cfg.method, cfg.stage, cfg.init_from = method, "adapt", str(stage1)
  results = train_and_evaluate(cfg, tmp_path)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [r["val_mse"] for r in records if r["stage"] == "adapt"]  # epoch 0 (the frozen model) and epoch 1
  assert len(val) == 2 and val[1] != val[0]  # the adapters moved the forecast
  assert np.isfinite(results["test_mse"]) and results["segments"] == 3


@pytest.mark.parametrize("backbone", ["itransformer", "patchtst"])
def test_the_head_can_be_adapted_as_one_more_dense_layer(backbone):
  """--config.adapt.targets=('ffn', 'head'): the head gets the method's bank too, starting at the frozen model."""
  cfg = tiny()
  cfg.backbone, cfg.adapt.targets = backbone, ("ffn", "head")
  cfg.model.patchtst.update(d_model=16, d_ff=32, n_heads=2, e_layers=1)
  plan.make(cfg)  # a valid config
  base = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=0, rngs=nnx.Rngs(0))
  model = build(plan.model_spec(cfg), channels=7, marks=4, pred_len=8, segments=3, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  assert model.head.adapter is not None and sum(v.size for v in jax.tree.leaves(nnx.state(model.head, nnx.LoRAParam)))
  x = batch()
  got = np.asarray(forward(model, x, segments=3))
  for k in range(3):
    np.testing.assert_allclose(got[:, k], frozen(base, x, k), rtol=1e-5, atol=1e-5)
  cfg.backbone = "dlinear"
  with pytest.raises(ConfigError, match="head"):
    plan.make(cfg)
