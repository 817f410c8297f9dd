"""Panels: many series, each with its own dates, trained as one global channel-independent model. A panel cut from
the benchmark files (exchange_rate's 8 daily series and weather's 21 ten-minute ones, each a stretch of its own)
trains, is scored per series and forecasts per series; grain's order; the same results under device and host
placement; a kill -9 in the middle of an epoch under host placement resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, forecast_cli, tiny

from mola_jax import config_lib, data
from mola_jax.data import panel
from mola_jax.errors import ConfigError, DataError
from mola_jax.inference import load_run
from mola_jax.train import train_and_evaluate

L, T, S = 48, 24, 12  # look-back, horizon, segment: short, so that the cut series are short and the runs quick


def panel_cfg(**data_keys):
  """A data config as load_series reads it."""
  base = {"name": "x", "path": None, "seq_len": L, "freq": None, "parity_quirk": False, "target": None,
          "features": "M", "future_covariates": (), "missing": "error", "panel": False,
          "short_series": "error"}  # fmt: skip
  return types.SimpleNamespace(**(base | data_keys))


def cut(data_dir, lengths=(150, 400), seed=0) -> pd.DataFrame:
  """A long table of exchange_rate's 8 and weather's 21 series, each a stretch of its own length and start."""
  rng, parts = np.random.default_rng(seed), []
  for file, prefix in (("exchange_rate.csv", "fx"), ("weather.csv", "wx")):
    wide = pd.read_csv(data_dir / file).drop_duplicates("date")  # weather.csv repeats one time stamp
    for j, column in enumerate(c for c in wide.columns if c != "date"):
      n = int(rng.integers(*lengths))
      part = wide.iloc[(start := int(rng.integers(0, len(wide) - n))) : start + n]
      parts.append(pd.DataFrame({"unique_id": f"{prefix}{j}", "ds": part["date"].to_numpy(), "y": part[column]}))
  return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def long(data_dir) -> pd.DataFrame:
  return cut(data_dir)


def run_cfg(placement="device", backbone="cyclenet"):
  """The panel runs' config: CycleNet (it reads each window's phase, t0) with MoLA, both stages, one epoch each."""
  cfg = tiny(config_lib.load("etth1"))
  cfg.backbone, cfg.data.seq_len, cfg.horizon, cfg.segment_len = backbone, L, T, S
  cfg.model.patchtst.update(d_model=16, d_ff=16, n_heads=2)
  cfg.data.placement, cfg.chunk_steps, cfg.checkpoint_every_steps = placement, 8, 16
  cfg.tensorboard = False
  return cfg


# ----------------------------------------------------------------------------------------------------------------
# Layout and split


def test_each_series_is_split_and_scaled_on_its_own(long):
  p = data.load_series(panel_cfg(), long, horizon=T)
  assert isinstance(p, data.Panel) and len(p.ids) == 29 and p.ids[:2] == ("fx0", "fx1")
  assert p.freqs[0] == "D" and p.freqs[-1] == "10min" and p.values.shape == (len(long), 1)
  for s, uid in enumerate(p.ids):
    y = long.loc[long["unique_id"] == uid, "y"].to_numpy()
    n, rows = len(y), slice(p.offsets[s], p.offsets[s + 1])
    train = y[: n - 2 * T]  # the last T steps are the test split, the T before them validation
    np.testing.assert_allclose(p.scaler.mean[s, 0], train.mean())
    np.testing.assert_allclose(p.values[rows, 0], (y - train.mean()) / (train.std() or 1.0), rtol=1e-5, atol=1e-5)
  for split, windows in (("train", None), ("val", 1), ("test", 1)):
    w = p.windows(split, L, T)
    rows, series = w.rows(np.arange(len(w))), w.series_of(np.arange(len(w)))
    first = w.first[series]
    ends = np.append(w.first[1:], len(w.values))[series]  # no window reaches past its own series
    assert (rows >= first).all() and (rows + L + T <= ends).all()
    if windows:
      assert len(w) == 29 * windows  # one T-step window per series
  test = p.windows("test", L, T)
  for s in (0, 28):  # a test window's targets are its series' last T values
    np.testing.assert_array_equal(
      test.batch(test.rows(np.array([s])))["y"][0, :, 0], p.values[p.offsets[s + 1] - T : p.offsets[s + 1], 0]
    )


def test_an_aligned_long_table_stays_multivariate_unless_asked(data_dir):
  wide = pd.read_csv(data_dir / "ETTh1.csv").iloc[:600]
  aligned = wide.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
  assert isinstance(data.load_series(panel_cfg(), aligned, horizon=T), data.Series)
  p = data.load_series(panel_cfg(panel=True), aligned, horizon=T)
  assert isinstance(p, data.Panel) and len(p.ids) == 7 and p.freqs == ("h",) * 7
  assert np.array_equal(data.load_series(panel_cfg(panel=True), wide, horizon=T).values, p.values)  # wide too


def test_short_series_are_refused_in_one_line_or_skipped(long):
  shorter = long.groupby("unique_id").head(L + 3 * T - 1)  # every series one row short ...
  mixed = pd.concat([long[~long["unique_id"].isin(["fx3", "wx7", "wx12"])], shorter[shorter["unique_id"].isin(
    ["fx3", "wx7", "wx12"])]])  # fmt: skip  # ... three of them
  with pytest.raises(DataError) as refused:
    data.load_series(panel_cfg(), mixed, horizon=T)
  text = str(refused.value)
  assert "\n" not in text and "3 of 29 series are shorter than" in text and "'fx3' (119 rows)" in text
  assert "data.short_series=skip" in text
  p = data.load_series(panel_cfg(short_series="skip"), mixed, horizon=T)
  assert len(p.ids) == 26 and p.skipped == ("fx3", "wx12", "wx7") and "fx3" not in p.ids


def test_gaps_in_a_series_are_filled_and_marked(long):
  gappy = long.drop(index=long.index[long["unique_id"] == "fx2"][10:13])
  with pytest.raises(DataError, match="series 'fx2': 3 value\\(s\\) of its daily"):
    data.load_series(panel_cfg(), gappy, horizon=T)
  p = data.load_series(panel_cfg(missing="interpolate"), gappy, horizon=T)
  s = p.ids.index("fx2")
  assert p.lengths[s] == (long["unique_id"] == "fx2").sum()
  assert not p.observed[p.offsets[s] + 10 : p.offsets[s] + 13].any()
  assert p.observed.sum() == len(p.values) - 3


def test_season_and_naive_scale_follow_m4():
  assert [panel.season(f) for f in ("h", "10min", "15min", "D", "B", "W-SUN", "MS", "QS", "YS")] == [
    24, 144, 96, 1, 1, 1, 12, 4, 1]  # fmt: skip
  y = np.array([1.0, 3.0, 2.0, 6.0, 4.0])
  assert panel.naive_scale(y, None, 2) == pytest.approx((1 + 3 + 2) / 3)  # |2-1|, |6-3|, |4-2|
  assert np.isnan(panel.naive_scale(np.ones(5), None, 1))  # a constant part has no MASE


# ----------------------------------------------------------------------------------------------------------------
# grain's order and the host gather


def test_grains_order_is_a_shuffle_that_resumes_and_both_gathers_agree(long):
  p = data.load_series(panel_cfg(), long, horizon=T)
  split = p.windows("train", L, S)
  order = data.PanelOrder(split, 32, seed=7, chunk=5, host=False)
  epoch = np.concatenate([c.idx[: c.n] for c in order.chunks(1, 0)])  # [steps, B] rows
  assert epoch.shape == (order.steps_per_epoch, 32) and len(np.unique(epoch)) == epoch.size  # no window twice
  assert set(epoch.ravel()) <= set(split.rows(np.arange(len(split))))
  again = [c.idx for c in data.PanelOrder(split, 32, seed=7, chunk=5, host=False).chunks(1, 0)]
  assert np.array_equal(np.concatenate([c[: min(5, len(epoch) - 5 * i)] for i, c in enumerate(again)]), epoch)
  other = np.concatenate([c.idx[: c.n] for c in order.chunks(2, 0)])
  assert not np.array_equal(other, epoch)  # each epoch its own order
  chunks = order.chunks(1, 0)
  next(chunks), next(chunks)
  state = order.state()
  assert state == {"next_index": 10}  # batches consumed: the resume record's
  resumed = data.PanelOrder(split, 32, seed=7, chunk=5, host=True)
  host = list(resumed.chunks(1, 10, state))
  assert host[0].first == 10 and len(host) == -(-(order.steps_per_epoch - 10) // 5)
  device = data.DeviceWindows(split)
  for chunk in host[:2]:
    rows = epoch[chunk.first : chunk.first + chunk.n]
    for c in range(chunk.n):  # the host's batch is the device gather of the same windows
      want = data.gather(device.arrays, rows[c], seq_len=L, pred_len=S)
      for key in ("x", "y", "t0", "x_mark", "y_mark"):
        np.testing.assert_array_equal(chunk.batch[key][c], np.asarray(want[key]))


# ----------------------------------------------------------------------------------------------------------------
# Training, scores and forecasts


@pytest.fixture(scope="module")
def device_run(long, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("panel_device")
  return workdir, train_and_evaluate(run_cfg("device"), workdir, data=long)


def test_a_panel_trains_and_is_scored_per_series(device_run, long):
  workdir, results = device_run
  per = results["per_series"]
  assert results["series"] == 29 and results["num_test_windows"] == 29 and len(per["mse"]) == 29
  assert per["pooled"]["mse"] == pytest.approx(results["test_mse"], rel=1e-5)
  assert results["test_smape"] == pytest.approx(np.mean(per["smape"]), rel=1e-6)
  # Every score again from the run's own forecasts of each series' last T steps (the test split), on the host.
  run = load_run(workdir)
  tails = long.groupby("unique_id", sort=False).tail(L + T)
  errors = run.backtest(tails, stride=T)  # one origin a series: L rows, then its last T
  record = json.loads((workdir / "scaler.json").read_text())
  for s, uid in enumerate(per["ids"]):
    one = errors[errors["unique_id"] == uid]
    y = long.loc[long["unique_id"] == uid, "y"].to_numpy()
    e, std = one["error"].to_numpy(), record["std"][s][0]
    assert len(one) == T and np.allclose(one["actual"], y[-T:])
    np.testing.assert_allclose(per["mse"][s], np.mean((e / std) ** 2), rtol=2e-4, atol=1e-7)
    smape = np.mean(200 * np.abs(e) / (np.abs(one["forecast"]) + np.abs(one["actual"])))
    np.testing.assert_allclose(per["smape"][s], smape, rtol=2e-4)
    scale = panel.naive_scale(y[: len(y) - 2 * T], None, panel.season(record["freqs"][s]))
    if np.isfinite(scale):
      np.testing.assert_allclose(per["mase"][s], np.mean(np.abs(e)) / scale, rtol=2e-4)
    else:
      assert per["mase"][s] is None


def test_the_same_run_under_host_placement_gives_the_same_results(device_run, long, tmp_path):
  host = train_and_evaluate(run_cfg("host"), tmp_path, data=long)
  device = device_run[1]
  for key in ("test_mse", "test_mae", "val_mse", "test_mase", "test_smape"):
    assert host[key] == pytest.approx(device[key], rel=1e-6, abs=1e-6)
  np.testing.assert_allclose(host["per_series"]["mse"], device["per_series"]["mse"], rtol=1e-6, atol=1e-6)


def test_forecasts_are_per_series_after_each_ones_last_date(device_run, long, tmp_path):
  workdir, _ = device_run
  run = load_run(workdir)
  given = long[long["unique_id"].isin(["fx1", "wx4", "wx20"])]
  out = run.predict(given)
  assert list(out.columns) == ["unique_id", "ds", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
  for uid, part in out.groupby("unique_id"):
    dates = pd.to_datetime(given.loc[given["unique_id"] == uid, "ds"])
    step = dates.diff().median()
    assert len(part) == T and part["ds"].iloc[0] == dates.max() + step and part["ds"].diff().iloc[1:].eq(step).all()
    assert np.isfinite(part["forecast"]).all() and (part["lower_80"] <= part["upper_80"]).all()
  with pytest.raises(DataError, match="1 series the run was not trained on \\('new'\\)"):
    run.predict(pd.concat([given, given[given["unique_id"] == "fx1"].assign(unique_id="new")]))
  with pytest.raises(DataError, match="1 of 3 series are shorter than the look-back = 48 rows: 'fx1'"):
    run.predict(pd.concat([given[given["unique_id"] != "fx1"], given[given["unique_id"] == "fx1"].head(40)]))
  given.to_csv(tmp_path / "panel.csv", index=False)
  proc = forecast_cli("--workdir", str(workdir), "--csv", str(tmp_path / "panel.csv"), "--out", str(tmp_path / "f.csv"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  cli = pd.read_csv(tmp_path / "f.csv", parse_dates=["ds"])
  np.testing.assert_allclose(cli["forecast"], out["forecast"], rtol=1e-5)
  assert len(list(tmp_path.glob("forecast_*.png"))) == 3


def test_a_backbone_that_mixes_channels_is_refused_in_one_line(long, tmp_path):
  with pytest.raises(ConfigError) as refused:
    train_and_evaluate(run_cfg(backbone="itransformer"), tmp_path, data=long)
  assert "\n" not in str(refused.value) and "use one of patchtst, dlinear, cyclenet, olinear" in str(refused.value)
  assert not (tmp_path / "config.json").exists()


def test_mtf_and_patchtst_train_on_a_panel(long, tmp_path):
  cfg = run_cfg(backbone="patchtst")
  cfg.method = "mtf"
  results = train_and_evaluate(cfg, tmp_path, data=long)
  assert results["method"] == "mtf" and np.isfinite(results["test_mse"]) and len(results["per_series"]["mase"]) == 29


# ----------------------------------------------------------------------------------------------------------------
# A kill -9 in the middle of an epoch under host placement


def train_cli(csv, workdir, *extra) -> list[str]:
  keys = {
    "backbone": "cyclenet",
    "data.path": csv,
    "data.seq_len": L,
    "horizon": T,
    "segment_len": S,
    "data.placement": "host",
    "chunk_steps": 8,
    "checkpoint_every_steps": 16,
    "tensorboard": False,
    "data.eval_batch_size": 512,
    "model.itransformer.d_model": 16,
    "model.itransformer.d_ff": 16,
    "model.itransformer.n_heads": 2,
    "model.itransformer.e_layers": 1,
    "pretrain.epochs": 1,
    "adapt.epochs": 1,
    "technique.mola.num_experts": 2,
    "technique.mola.rank": 2,
  }  # tiny(), as run_cfg
  flags = [f"--config.{k}={v}" for k, v in keys.items()]
  return [sys.executable, "-m", "mola_jax.train", "--config", "etth1", *flags, "--workdir", str(workdir), *extra]


def test_killed_mid_epoch_under_host_placement_resumes_to_the_same_result(device_run, long, tmp_path):
  csv = tmp_path / "panel.csv"
  long.to_csv(csv, index=False)
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(train_cli(csv, workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # fmt: skip
  resume, deadline = workdir / "checkpoints" / "pretrain_resume", time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    saved = [int(p.name) for p in resume.glob("*") if p.name.isdigit()] if resume.is_dir() else []
    if saved and max(saved) >= 32:  # the epoch has 160 steps: this is its middle
      os.killpg(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended or stalled before its resume point"
  rerun = subprocess.run(train_cli(csv, workdir), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "[pretrain] resuming at epoch 1, batch" in rerun.stdout  # tqdm.write: stdout
  got, want = json.loads((workdir / "results.json").read_text()), device_run[1]
  for key in ("test_mse", "test_mae", "val_mse", "test_mase", "test_smape"):
    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6)
  lines = [(r["stage"], r.get("epoch")) for r in map(json.loads, (workdir / "metrics.jsonl").open())]
  assert lines == [("pretrain", 1), ("adapt", 0), ("adapt", 1), ("test", None)]


def test_a_panel_studys_table_reports_mase_and_smape():
  from mola_jax.lab import reproduce

  runs = {("mola", 24, 12, seed): {"dataset": "dataframe", "test_mse": 0.5 + seed, "test_mae": 0.4, "val_mse": 0.3,
                                   "test_mase": mase, "test_smape": 10.0 * (seed + 1)}
          for seed, mase in ((0, 1.0), (1, 3.0))}  # fmt: skip
  book = types.SimpleNamespace(chosen={("mola", 24): 12}, results=runs)
  rows = reproduce.table_rows(types.SimpleNamespace(backbone="cyclenet"), book, [0, 1], [24], ["mola"])
  assert rows[0]["test_mase_mean"] == 2.0 and rows[0]["test_smape_mean"] == 15.0
  text = reproduce.table_markdown(rows)
  assert "test MASE (±95% CI) | test sMAPE (±95% CI) |" in text and "| 2.000 ± " in text and "| 15.00 ± " in text
  wide = {k: {key: v for key, v in r.items() if key not in ("test_mase", "test_smape")} for k, r in runs.items()}
  rows = reproduce.table_rows(types.SimpleNamespace(backbone="cyclenet"), types.SimpleNamespace(
    chosen=book.chosen, results=wide), [0, 1], [24], ["mola"])  # fmt: skip
  assert "test_smape_mean" not in rows[0] and "MASE" not in reproduce.table_markdown(rows)  # a wide table's study
