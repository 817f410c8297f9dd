"""CycleNet (models/cyclenet.py): the forward pass against a numpy transcription of the official one, the cycle
following the windows, the per-segment horizon cycle of stage 2, the methods it takes and refuses, a real run."""

from __future__ import annotations

import ml_collections
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from mola_jax import config_lib, data, plan
from mola_jax.errors import ConfigError
from mola_jax.models import Ctx, adapted_groups, build, predict, predict_per_segment, validate
from mola_jax.models.adapters import no_adapter
from mola_jax.models.cyclenet import CycleNet
from mola_jax.models.techniques import HeadBank
from mola_jax.train import train_and_evaluate

L, S, D, W = 96, 8, 5, 24
# Window starts on both sides of multiples of W, far into the series, and one before row 0 (a forecast whose
# look-back starts before the training grid's first row).
T0 = np.array([0, 23, 24, 1013, 4 * W - 1, -5], np.int32)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"x": (3.0 * rng.standard_normal((len(T0), L, D)) + 1.0).astype(np.float32), "t0": T0}


def official(x, t0, table, layers, use_revin, offset=0):
  """The official CycleNet forward (models/CycleNet.py) in float64 numpy. Its loader passes the phase of the
  horizon's first row, cycle_index = (t0 + L) % W, and its model reads the look-back's rows from there, the
  horizon's from cycle_index + L; `table` is ours, rotated by L into the official one so that both store the
  same pattern. `offset`: the horizon starts `offset` steps later (stage-2 segment k: offset = kS)."""
  x, w = x.astype(np.float64), table.shape[0]
  official_table = table[(np.arange(w) - L) % w]
  cycle_index = (t0 + L) % w
  if use_revin:
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True, ddof=1) + 1e-5  # torch.var: unbiased
    x = (x - mean) / np.sqrt(var)
  x = x - official_table[(cycle_index[:, None] + np.arange(L)) % w]
  h = x.transpose(0, 2, 1)  # [B, D, L]
  for i, (kernel, bias) in enumerate(layers):
    h = h @ kernel + bias
    h = np.maximum(h, 0.0) if i < len(layers) - 1 else h
  y = h.transpose(0, 2, 1) + official_table[(cycle_index[:, None] + L + offset + np.arange(S)) % w]
  return y * np.sqrt(var) + mean if use_revin else y


def dense_layers(model):
  """[(kernel, bias)] of the map over time, first to last, as float64 numpy."""
  layers = [model.head] if model.hidden is None else [model.hidden, model.head]
  return [(np.asarray(d.kernel[...], np.float64), np.asarray(d.bias[...], np.float64)) for d in layers]


def randomise(model, seed=1):
  """Random weights and a random cycle table (PyTorch's init is already random; the table starts at zero)."""
  rng = np.random.default_rng(seed)
  model.cycle[...] = rng.standard_normal(model.cycle[...].shape).astype(np.float32)
  for d in [model.head] if model.hidden is None else [model.hidden, model.head]:
    d.kernel[...] = (0.1 * rng.standard_normal(d.kernel[...].shape)).astype(np.float32)
    d.bias[...] = rng.standard_normal(d.bias[...].shape).astype(np.float32)


def standalone(variant="linear", use_revin=True, cycle=W):
  cfg = ml_collections.ConfigDict({"variant": variant, "cycle": cycle, "d_model": 16, "revin": use_revin})
  return CycleNet(cfg, seq_len=L, pred_len=S, channels=D, marks=0, rngs=nnx.Rngs(0), make_adapter=no_adapter)


def config(variant="linear", method="mola"):
  cfg = config_lib.default()
  cfg.backbone, cfg.method = "cyclenet", method
  cfg.model.cyclenet.update(variant=variant, cycle=W, d_model=16)
  for settings in cfg.technique.values():  # small banks: two experts, rank 2
    settings.update(**{k: 2 for k in ("num_experts", "rank") if k in settings})
  return cfg


def stage2(variant, segments, method="mola"):
  """A stage-1 model (random weights and cycle) and a stage-2 model whose backbone is a copy of it."""
  cfg = config(variant, method)
  base = build(plan.model_spec(cfg), channels=D, marks=0, pred_len=S, segments=0, rngs=nnx.Rngs(0))
  randomise(base)
  model = build(plan.model_spec(cfg), channels=D, marks=0, pred_len=S, segments=segments, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  return base, model


@nnx.jit(static_argnames=("segments",))
def forward(model, x, segments=1):
  return predict(model, x, Ctx(segments=segments))


@pytest.fixture(params=[True, False], ids=["graph", "tree"])
def graph_mode(request):
  with nnx.set_graph_mode(request.param):
    yield request.param


@pytest.mark.parametrize("use_revin", [True, False], ids=["revin", "no_revin"])
@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_forward_equals_the_official_forward(variant, use_revin):
  model = standalone(variant, use_revin)
  randomise(model)
  x = batch()
  got = np.asarray(forward(model, x))[:, 0]  # [B, S, D]
  want = official(x["x"], x["t0"], np.asarray(model.cycle[...]), dense_layers(model), use_revin)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_cycle_follows_the_windows():
  """With the map over time at zero and no normalisation the forecast is the table itself, read at the rows that
  follow the look-back: (t0 + L + j) % W."""
  model = standalone("linear", use_revin=False)
  randomise(model)
  model.head.kernel[...] = np.zeros_like(model.head.kernel[...])
  model.head.bias[...] = np.zeros_like(model.head.bias[...])
  got = np.asarray(forward(model, batch()))[:, 0]  # [B, S, D]
  table = np.asarray(model.cycle[...])
  for b, t0 in enumerate(T0):
    np.testing.assert_array_equal(got[b], table[(t0 + L + np.arange(S)) % W])


def test_bad_sizes_are_clear_errors():
  with pytest.raises(ValueError, match="variant"):
    standalone("rnn")
  with pytest.raises(ValueError, match="cycle"):
    standalone(cycle=0)


@pytest.mark.parametrize("variant,method", [("linear", "mola"), ("mlp", "mola"), ("linear", "lora"), ("mlp", "fourier"),
                                            ("linear", "mofourier")])  # fmt: skip
def test_stage2_segment_k_adds_the_cycle_of_its_own_steps(variant, method, graph_mode):
  """Zero deltas (every technique that applies, at its start): segment k is the stage-1 map plus the cycle at phase
  t0 + L + kS (its steps of the horizon)."""
  base, model = stage2(variant, segments=3, method=method)
  x = batch()
  got = np.asarray(forward(model, x, segments=3))  # [B, K, S, D]
  np.testing.assert_allclose(got[:, 0], np.asarray(forward(base, x))[:, 0], rtol=1e-5, atol=1e-5)
  table, layers = np.asarray(base.cycle[...]), dense_layers(base)
  for k in range(3):
    want = official(x["x"], x["t0"], table, layers, use_revin=True, offset=k * S)
    np.testing.assert_allclose(got[:, k], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant,adapted", [("linear", ["head"]), ("mlp", ["hidden", "head"])])
def test_mola_adapts_every_dense_layer_and_the_batched_pass_equals_k_passes(variant, adapted):
  assert adapted_groups("cyclenet", "mola", None) == ("mlp", "head")
  _, model = stage2(variant, segments=3)
  assert [name for name in ("hidden", "head") if getattr(model, name) is not None] == adapted
  rng = np.random.default_rng(2)
  for name in adapted:  # nonzero deltas: every segment its own map
    bank = getattr(model, name).adapter
    bank.b[...] = (0.1 * rng.standard_normal(bank.b[...].shape)).astype(np.float32)
  x = batch()
  got = np.asarray(forward(model, x, segments=3))
  per_segment = np.asarray(predict_per_segment(model, x, Ctx(segments=3)))
  np.testing.assert_allclose(got, per_segment, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got[:, 0], got[:, 1], atol=1e-3)


@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_lora_heads_gives_each_segment_its_own_output_layer(variant):
  validate("cyclenet", "lora_heads", None, "any_improved")
  base, model = stage2(variant, segments=3, method="lora_heads")
  assert isinstance(model.head.adapter, HeadBank)
  x = batch()
  table, layers = np.asarray(base.cycle[...]), dense_layers(base)
  got = np.asarray(forward(model, x, segments=3))  # the heads start as the stage-1 head
  for k in range(3):
    want = official(x["x"], x["t0"], table, layers, use_revin=True, offset=k * S)
    np.testing.assert_allclose(got[:, k], want, rtol=1e-4, atol=1e-4)
  bank = model.head.adapter
  bank.kernel[...] = (0.1 * np.random.default_rng(3).standard_normal(bank.kernel[...].shape)).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(forward(model, x, segments=3)),
    np.asarray(predict_per_segment(model, x, Ctx(segments=3))),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize("method", ["ia3", "moia3", "adapter", "moadapter"])
def test_methods_that_need_attention_or_an_ffn_are_refused(method):
  with pytest.raises(ConfigError, match="adapts attention or FFN blocks"):
    validate("cyclenet", method, None, "any_improved")


def test_ffn_shape_is_the_first_dense_layer():
  assert standalone("linear").ffn_shape(32, D, 4) == (32 * D, L, S)
  assert standalone("mlp").ffn_shape(32, D, 4) == (32 * D, L, 16)


def test_mola_on_cyclenet_trains_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path / "nowhere"))  # synthetic data: no file is read
  cfg = config_lib.default()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.backbone, cfg.method = "cyclenet", "mola"
  cfg.model.cyclenet.cycle = 24
  cfg.horizon, cfg.segment_len = 48, 24
  cfg.pretrain.epochs, cfg.adapt.epochs = 1, 1
  cfg.pretrain.lr = cfg.adapt.lr = 0.01  # CycleNet's: the cycle table moves well away from zero in one epoch
  results = train_and_evaluate(cfg, tmp_path / "run")
  assert np.isfinite(results["test_mse"]) and results["segments"] == 2
  # A trained run forecasts new data at the phase its rows had in training: the backtest of the training table
  # from row L equals the model's forecast of that window at t0 = 0, and differs from another phase.
  from mola_jax.data.synthetic import synthetic_data
  from mola_jax.inference import load_run

  values, dates, columns = synthetic_data(cfg.data)
  frame = pd.DataFrame(values, columns=columns).assign(date=dates)
  run = load_run(tmp_path / "run")
  got = run.backtest(frame, stride=10_000)  # one origin: row L
  scaled = run.scaler.scale(values)
  marks = data.time_features(dates, "h")
  batch = lambda t0: {"x": scaled[None, :96], "x_mark": marks[None, :96], "y_mark": marks[None, 96:144],
                      "t0": np.array([t0], np.int32)}  # fmt: skip
  want = run.scaler.unscale(run.forecast(batch(0))[0])  # [T, D]
  np.testing.assert_allclose(got["forecast"].to_numpy().reshape(48, -1), want, rtol=1e-4, atol=1e-4)
  shifted = run.scaler.unscale(run.forecast(batch(5))[0])
  assert not np.allclose(shifted, want, atol=1e-3)
