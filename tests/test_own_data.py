"""A user's own data: target and feature modes, the calendar of the data's own frequency, known-future covariates,
gaps (missing cells and rows) kept out of every loss and score, and many series in a long table; the examples of
docs/your_data.md run as written on the benchmark files."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, new_state, tiny
from flax import nnx

from mola_jax import data, plan, steps
from mola_jax.data import DataError
from mola_jax.errors import CheckpointError
from mola_jax.models import build
from mola_jax.models.techniques import TECHNIQUES
from mola_jax.state import TrainState
from mola_jax.train import train_and_evaluate


def data_cfg(**keys):
  """A data config as load_series reads it."""
  base = {"name": "x", "path": None, "seq_len": 24, "freq": None, "parity_quirk": False, "target": None,
          "features": "M", "future_covariates": (), "missing": "error"}  # fmt: skip
  return types.SimpleNamespace(**(base | keys))


@pytest.fixture(scope="module")
def etth1(data_dir) -> pd.DataFrame:
  return pd.read_csv(data_dir / "ETTh1.csv")


# ----------------------------------------------------------------------------------------------------------------
# The examples of docs/your_data.md, as written


def example_blocks() -> list[tuple[str, str]]:
  text = (REPO / "docs" / "your_data.md").read_text()
  section = text[text.index("## Examples") :].split("\n## ")[0]  # the section alone, up to the next one
  return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory, data_dir):
  """Every block of the section in order, in one folder holding ETTh1.csv -> (folder, {block index: stdout})."""
  here = tmp_path_factory.mktemp("own")
  (here / "ETTh1.csv").symlink_to(data_dir / "ETTh1.csv")
  env = dict(os.environ, PYTHONPATH=str(REPO), MOLA_DATA_DIR=str(data_dir))
  outputs = {}
  for i, (kind, code) in enumerate(example_blocks()):
    if kind == "bash":  # `python` in the examples is the interpreter that runs the suite
      args = ["bash", "-euo", "pipefail", "-c", code.replace("python -m", f"{sys.executable} -m")]
    else:
      args = [sys.executable, "-c", code]
    proc = subprocess.run(args, cwd=here, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (i, code, proc.stderr[-3000:])
    outputs[i] = proc.stdout + proc.stderr
  return here, outputs


def read(here, run, name):
  return json.loads((here / "runs" / run / name).read_text())


def test_example_ms_and_s_on_etth1(example_runs):
  here, _ = example_runs
  ms, s = read(here, "ms", "scaler.json"), read(here, "s", "scaler.json")
  assert ms["columns"][-1] == "OT" and len(ms["columns"]) == 7  # MS: every series in, OT last
  assert s["columns"] == ["OT"]  # S: the target alone, its scaler fitted on it
  assert ms["freq"] == s["freq"] == "h" and ms["grid"] == "h"  # the file's own frequency: hourly
  for run in ("ms", "s"):
    results = read(here, run, "results.json")
    assert results["num_test_windows"] == 800 - 96 + 1 and np.isfinite(results["test_mse"])  # 7:1:2 of 4000 rows
    assert len(json.loads((here / "runs" / run / "conformal.json").read_text())["multiplier"][0][0]) == 1


def test_example_national_illness_gets_its_weekly_calendar(example_runs):
  here, _ = example_runs
  scaler = read(here, "ili_weekly", "scaler.json")
  assert scaler["freq"] == "W-TUE" and scaler["marks"] == 2  # day of month, week of year


def test_example_gaps_are_filled_and_left_out(example_runs):
  here, outputs = example_runs
  assert "24 row(s) of the hourly (h) series are missing" in "".join(outputs.values())
  assert np.isfinite(read(here, "gaps", "results.json")["test_mse"])
  assert read(here, "gaps", "scaler.json")["rows"] == 4000  # the missing day is back, filled


def test_example_covariates_and_long_tables(example_runs):
  here, outputs = example_runs
  text = "".join(outputs.values())
  assert "OT_lower_80" in text and "unique_id" in text
  assert read(here, "plan", "scaler.json")["covariates"] == ["HUFL"]
  assert read(here, "long", "scaler.json")["long"] is True


def test_example_a_panel_is_scored_and_forecast_per_series(example_runs):
  here, outputs = example_runs
  results, scaler = read(here, "panel", "results.json"), read(here, "panel", "scaler.json")
  lengths = {name: 700 + 150 * i for i, name in enumerate(["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"])}
  assert scaler["panel"] is True and dict(zip(scaler["ids"], scaler["rows"], strict=True)) == lengths
  per = results["per_series"]
  assert results["series"] == 7 and results["num_test_windows"] == 7 and per["ids"] == sorted(scaler["ids"])
  assert all(np.isfinite(per[k]).all() for k in ("mse", "mae", "mase", "smape"))
  assert results["test_smape"] == per["pooled"]["smape"] and results["test_mase"] == per["pooled"]["mase"]
  text = "".join(outputs.values())
  for uid in scaler["ids"]:  # the forecast: 96 steps after each series' own last date
    assert re.search(rf"^{uid}\s.*\s96$", text, re.M), uid


# ----------------------------------------------------------------------------------------------------------------
# Filled values: in no loss and no score


def masked_batch(seed=0, b=4, seq_len=96, t=8, d=3):
  rng = np.random.default_rng(seed)
  batch = {
    "x": rng.normal(size=(b, seq_len, d)).astype(np.float32),
    "x_mark": rng.normal(size=(b, seq_len, 4)).astype(np.float32),
    "y": rng.normal(size=(b, t, d)).astype(np.float32),
    "y_mark": rng.normal(size=(b, t, 4)).astype(np.float32),
    "t0": np.arange(b, dtype=np.int32),
    "y_observed": rng.random((b, t, d)) > 0.3,
  }
  return batch


def test_a_filled_target_changes_neither_the_loss_nor_the_scores():
  """Two batches that differ only in their filled target values (y_observed False) give the same loss, the same
  trained parameters and the same eval sums; an observed value changes them."""
  cfg = tiny()
  model = build(plan.model_spec(cfg), channels=3, marks=4, pred_len=4, segments=2, rngs=nnx.Rngs(0))
  state = new_state(model)
  step = jax.jit(steps.train_step_fn(steps.train_forecast(), steps.StepOptions(2)))
  evaluate = jax.jit(steps.eval_step_fn(steps.StepOptions(2)))
  a = masked_batch()
  b = dict(a, y=np.where(a["y_observed"], a["y"], 1e6).astype(np.float32))  # wild values where filled
  c = dict(a, y=np.where(a["y_observed"], a["y"] + 1.0, a["y"]).astype(np.float32))  # observed ones moved
  segs = (np.arange(2, dtype=np.int32), np.ones(2, bool))
  results = [step(jax.tree.map(np.copy, state), batch, segs) for batch in (a, b, c)]
  np.testing.assert_array_equal(results[0][1], results[1][1])
  for x, y in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
    np.testing.assert_array_equal(x, y)
  assert results[0][1] != results[2][1]
  sums = [evaluate(state.forecaster(), dict(batch, mask=np.ones(4, bool))) for batch in (a, b, c)]
  for key in ("sq", "abs", "scored"):
    np.testing.assert_array_equal(sums[0][key], sums[1][key])
  np.testing.assert_array_equal(sums[0]["scored"], a["y_observed"].sum(axis=(0, 2)))
  assert not np.array_equal(sums[0]["sq"], sums[2]["sq"])


def test_ms_scores_the_target_alone():
  """Under MS (target_only) the eval sums read the last channel only: an error in another channel is unseen."""
  cfg = tiny()
  model = build(plan.model_spec(cfg), channels=3, marks=4, pred_len=8, segments=0, rngs=nnx.Rngs(0))
  states = TrainState.create(model, "pretrain")
  batch = dict(masked_batch(), mask=np.ones(4, bool))
  del batch["y_observed"]
  moved = dict(batch, y=batch["y"] + np.array([5.0, 5.0, 0.0], np.float32))  # every channel but the target
  ms = jax.jit(steps.eval_step_fn(steps.StepOptions(1, target_only=True)))
  m = jax.jit(steps.eval_step_fn(steps.StepOptions(1)))
  np.testing.assert_array_equal(ms(states, batch)["sq"], ms(states, moved)["sq"])
  assert not np.array_equal(m(states, batch)["sq"], m(states, moved)["sq"])
  pred = np.asarray(steps.make_predict_step(segments=1)(states, batch))
  np.testing.assert_allclose(ms(states, batch)["sq"], ((pred[..., -1] - batch["y"][..., -1]) ** 2).sum(0), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Tables: gaps, grids, covariates, long layout


def test_missing_rows_and_cells_of_an_ett_file(etth1):
  gappy = etth1.iloc[:3000].drop(index=range(1000, 1024)).copy()
  gappy.loc[[200, 2500], "OT"] = np.nan
  with pytest.raises(DataError, match=r"24 row\(s\) of the hourly \(h\) series are missing, the first 24 after "):
    data.read_table(gappy, "ett", data_cfg(), regular=True)
  table = data.read_table(gappy, "ett", data_cfg(missing="interpolate"), regular=True)
  assert len(table.values) == 3000 and table.grid.freq == "h"
  np.testing.assert_array_equal(table.dates, pd.to_datetime(etth1["date"].iloc[:3000]).to_numpy())
  filled = np.flatnonzero(~table.observed.all(axis=1))
  np.testing.assert_array_equal(filled, [200, *range(1000, 1024), 2500])
  assert table.observed[200].tolist() == [True] * 6 + [False]  # one cell: the other channels were there
  real = ~np.isin(np.arange(3000), filled)
  np.testing.assert_array_equal(table.values[real], etth1.iloc[:3000].to_numpy()[real, 1:].astype(float))
  # Linear interpolation across the missing day, per channel; ffill repeats the last value.
  ot = etth1["OT"].to_numpy()
  np.testing.assert_allclose(table.values[1012, -1], ot[999] + (ot[1024] - ot[999]) * 13 / 25)
  ffill = data.read_table(gappy, "ett", data_cfg(missing="ffill"), regular=True)
  np.testing.assert_array_equal(ffill.values[1000:1024, -1], ot[999])


def test_filled_values_stay_out_of_the_scaler(etth1):
  df = etth1.iloc[:2000].copy()
  df.loc[100:199, "OT"] = np.nan
  s = data.build_series(data.read_table(df, "ett", data_cfg(missing="ffill"), regular=True), name="e",
                        split="ratio", seq_len=24)  # fmt: skip
  train = etth1["OT"].iloc[: s.borders["train"][1]].drop(index=range(100, 200))
  np.testing.assert_allclose(s.scaler.mean[-1], train.mean())
  np.testing.assert_allclose(s.scaler.std[-1], train.std(ddof=0))
  window = data.window_source(s, "train", 24, 8)[180 - 24]  # targets at rows 180..187: filled
  assert not window["y_observed"][:, -1].any() and window["y_observed"][:, :-1].all()


def test_grids_of_other_frequencies():
  cases = {
    "W-TUE": pd.date_range("2002-01-01", periods=60, freq="W-TUE"),
    "15min": pd.date_range("2020-01-01", periods=200, freq="15min"),
    "MS": pd.date_range("2000-01-01", periods=40, freq="MS"),
    "B": pd.bdate_range("2021-01-01", periods=100),
  }
  for freq, dates in cases.items():
    holes = dates.delete([5, 6, 30])  # missing rows: the grid is still found
    assert data.infer_grid(holes.to_numpy(), "t").freq == data.infer_grid(dates.to_numpy(), "t").freq
    assert len(data.infer_grid(holes.to_numpy(), "t").dates()) == len(dates), freq
  assert data.time_features(cases["W-TUE"], "W-TUE").shape == (60, 2)
  assert data.time_features(cases["MS"], "MS").shape == (40, 1)
  assert data.time_features(cases["15min"], "15min").shape == (200, 5)
  odd = cases["15min"].insert(50, pd.Timestamp("2020-01-01 12:20"))
  with pytest.raises(DataError, match="not on a regular grid.*data row 50 comes 0 days 00:05:00"):
    data.infer_grid(odd.to_numpy(), "t")


def test_positions_count_rows_on_the_grid():
  dates = pd.date_range("2020-01-01", periods=10, freq="h").to_numpy()
  np.testing.assert_array_equal(data.positions(dates, dates[-1], 109, "h"), np.arange(100, 110))
  months = pd.date_range("2020-01-01", periods=5, freq="MS").to_numpy()
  np.testing.assert_array_equal(data.positions(months[3:], months[0], 0, "MS"), [3, 4])
  quarters = pd.date_range("2016-07-01", periods=400, freq="15min").to_numpy()  # a benchmark file: no grid kept
  np.testing.assert_array_equal(data.positions(quarters[:50], quarters[-1], 399, None), np.arange(50))


def test_covariates_become_marks(etth1):
  df = etth1.iloc[:2000]
  cfg = data_cfg(future_covariates=("HUFL", "HULL"), features="MS")
  table = data.read_table(df, "ett", cfg, regular=True)
  assert table.columns == ("MUFL", "MULL", "LUFL", "LULL", "OT") and table.covariate_names == ("HUFL", "HULL")
  s = data.build_series(table, name="e", split="ratio", seq_len=24, freq="h")
  assert s.marks.shape == (2000, 6)
  train = df["HUFL"].iloc[: s.borders["train"][1]]
  np.testing.assert_allclose(s.marks[:, 4], (df["HUFL"] - train.mean()) / train.std(ddof=0), rtol=1e-5, atol=1e-6)
  with pytest.raises(DataError, match="future covariate.*'price'.*not columns"):
    data.read_table(df, "ett", data_cfg(future_covariates=("price",)), regular=True)
  with pytest.raises(DataError, match="unknown data.target 'oil'"):
    data.read_table(df, "ett", data_cfg(target="oil", features="S"), regular=True)


def test_a_long_table_is_the_wide_one(etth1):
  wide = etth1.iloc[:500]
  long = wide.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
  a = data.read_table(long.sample(frac=1.0, random_state=0), "long", data_cfg(), regular=True)  # any row order
  b = data.read_table(wide, "wide", data_cfg(), regular=True)
  assert a.long and a.columns == ("HUFL", "HULL", "LUFL", "LULL", "MUFL", "MULL", "OT")  # sorted ids, OT last
  np.testing.assert_array_equal(a.values, b.values[:, [b.columns.index(c) for c in a.columns]])
  with pytest.raises(DataError, match=r"series 'HUFL' has two rows for ds"):
    data.read_table(pd.concat([long, long.iloc[:1]]), "long", data_cfg(), regular=True)
  with pytest.raises(DataError, match="do not cover the same dates.*trim them"):
    data.read_table(long.drop(index=long.index[long["unique_id"] == "OT"][:5]), "long", data_cfg(), regular=True)
  with pytest.raises(DataError, match="'extra'.*neither unique_id, ds, y nor a future covariate"):
    data.read_table(long.assign(extra=1.0), "long", data_cfg(), regular=True)
  with pytest.raises(DataError, match="set data.target to one of the long table's ids"):
    data.read_table(long, "long", data_cfg(features="MS"), regular=True)


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])
def test_itransformer_segments_read_their_own_covariate_steps(graph):
  """With future covariates, stage 2's segment k (zero adapters) forecasts as the stage-1 model does from the same
  look-back with the covariates of steps kS .. (k+1)S - 1; the batched pass equals K separate passes."""
  from mola_jax.models import Ctx, predict, predict_per_segment

  cfg = tiny()
  spec = plan.model_spec(cfg)
  with nnx.set_graph_mode(graph):
    one = build(spec, channels=3, marks=5, pred_len=4, segments=0, rngs=nnx.Rngs(0), covariates=1)
    two = build(spec, channels=3, marks=5, pred_len=4, segments=2, rngs=nnx.Rngs(1), covariates=1)
    nnx.update(two, nnx.state(one))  # the frozen backbone of stage 2 is stage 1's
    batch = masked_batch(t=8)
    batch["x_mark"] = np.random.default_rng(1).normal(size=(4, 96, 5)).astype(np.float32)
    batch["y_mark"] = np.random.default_rng(2).normal(size=(4, 8, 5)).astype(np.float32)
    both = np.asarray(predict(two, batch, Ctx(segments=2)))  # [B, 2, S, D]
    for k in range(2):
      alone = dict(batch, y_mark=batch["y_mark"][:, 4 * k : 4 * k + 4])
      np.testing.assert_allclose(both[:, k], np.asarray(predict(one, alone, Ctx()))[:, 0], rtol=1e-5, atol=1e-6)
    moved = dict(batch, y_mark=batch["y_mark"].copy())
    moved["y_mark"][:, 4:, 4] += 1.0  # segment 1's covariate steps only
    after = np.asarray(predict(two, moved, Ctx(segments=2)))
    np.testing.assert_array_equal(after[:, 0], both[:, 0])
    assert not np.allclose(after[:, 1], both[:, 1])
    np.testing.assert_allclose(np.asarray(predict_per_segment(two, batch, Ctx(segments=2))), both, rtol=1e-5, atol=1e-6)


def test_covariates_absent_from_the_horizon_are_one_line(example_runs, tmp_path):
  """The forecast CLI of a run with future covariates: a --future file that lacks a step, or none at all, ends
  with one error line naming the covariate, exit code 2, and no output."""
  here, _ = example_runs
  df = pd.read_csv(here / "ett.csv").iloc[:3800]
  df.to_csv(tmp_path / "hist.csv", index=False)
  plan_rows = pd.read_csv(here / "ett.csv").iloc[3800:3895][["date", "HUFL"]]  # one step short of 96
  plan_rows.to_csv(tmp_path / "short.csv", index=False)
  for extra in (["--future", str(tmp_path / "short.csv")], []):
    out = tmp_path / "fc.csv"
    proc = subprocess.run(
      [sys.executable, "-m", "mola_jax.forecast", "--workdir", str(here / "runs" / "plan"), "--csv",
       str(tmp_path / "hist.csv"), "--out", str(out), *extra],
      capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "future covariate(s) HUFL" in lines[0], proc.stderr[-800:]
    assert not out.exists()
  pd.read_csv(here / "ett.csv").iloc[3800:3896][["date", "HUFL"]].to_csv(tmp_path / "plan.csv", index=False)
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.forecast", "--workdir", str(here / "runs" / "plan"), "--csv",
     str(tmp_path / "hist.csv"), "--out", str(tmp_path / "ok.csv"), "--future", str(tmp_path / "plan.csv")],
    capture_output=True, text=True, cwd=REPO, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-1500:]
  assert list(pd.read_csv(tmp_path / "ok.csv").columns)[:3] == ["origin", "date", "OT"]


@pytest.mark.parametrize("method", sorted(m for m in TECHNIQUES if m != "mtf"))
def test_every_technique_trains_on_the_target_alone_under_ms(method):
  """MS: a stage-2 step of every technique reads the target channel alone: the other channels' truths change
  neither its loss nor its update; under M they do."""
  cfg = tiny()
  cfg.method = method
  model = build(plan.model_spec(cfg), channels=3, marks=4, pred_len=4, segments=2, rngs=nnx.Rngs(0))
  state = new_state(model)
  batch = masked_batch()
  del batch["y_observed"]
  moved = dict(batch, y=batch["y"] + np.array([3.0, -2.0, 0.0], np.float32))  # every channel but the target
  segs = (np.arange(2, dtype=np.int32), np.ones(2, bool))
  for target_only, same in ((True, True), (False, False))[: 2 if method == "mola" else 1]:  # M's side: once
    step = jax.jit(steps.train_step_fn(steps.train_forecast(), steps.StepOptions(2, target_only=target_only)))
    (_, a), (_, b) = (step(jax.tree.map(np.copy, state), x, segs) for x in (batch, moved))
    assert np.isfinite(a) and (a == b) == same, (method, target_only, a, b)


def test_a_long_csv_through_the_forecast_cli(example_runs, tmp_path):
  """The forecast CLI on a long CSV answers long (origin, unique_id, ds, forecast, bounds) and plots each series."""
  here, _ = example_runs
  wide = pd.read_csv(here / "ett.csv").iloc[:1000]
  long = wide.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
  long.to_csv(tmp_path / "long.csv", index=False)
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.forecast", "--workdir", str(here / "runs" / "long"), "--csv",
     str(tmp_path / "long.csv"), "--out", str(tmp_path / "out" / "fc.csv"), "--roll"],
    capture_output=True, text=True, cwd=REPO, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-1500:]
  out = pd.read_csv(tmp_path / "out" / "fc.csv", parse_dates=["origin", "ds"])
  assert list(out.columns) == ["origin", "unique_id", "ds", "forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
  last = out[out["origin"] == out["origin"].max()]
  assert sorted(last["unique_id"].unique()) == sorted(wide.columns[1:]) and len(last) == 7 * 96
  assert (last["lower_80"] < last["forecast"]).all() and (last["forecast"] < last["upper_80"]).all()
  assert len(list((tmp_path / "out").glob("forecast_*.png"))) == 7


def test_the_exported_forecaster_takes_raw_covariates(example_runs, tmp_path):
  """An exported S run with a future covariate: the covariate goes in in original units, after the time features,
  and the export forecasts what run.predict forecasts."""
  import mola_jax

  here, _ = example_runs
  out = tmp_path / "plan.jaxexport"
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.export", "--workdir", str(here / "runs" / "plan"), "--out", str(out)],
    capture_output=True, text=True, cwd=REPO, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-1500:]
  side = json.loads(pathlib.Path(f"{out}.json").read_text())
  assert side["outputs"] == ["OT"] and side["covariates"] == ["HUFL"]
  df = pd.read_csv(here / "ett.csv")
  hist, plan_rows = df.iloc[:3800], df.iloc[3800:3896]
  dates = pd.to_datetime(df["date"]).to_numpy()
  marks = lambda rows: np.concatenate(  # time features, then the raw covariate
    [data.time_features(dates[rows], side["freq"]), df["HUFL"].to_numpy(np.float32)[rows, None]], axis=1
  )
  x = hist[["OT"]].to_numpy(np.float32)[-96:][None]
  args = (x, marks(slice(3704, 3800))[None], marks(slice(3800, 3896))[None])
  got = np.asarray(jax.export.deserialize(bytearray(out.read_bytes())).call(*args))[0, :, 0]
  want = mola_jax.load_run(here / "runs" / "plan").predict(hist, future=plan_rows[["date", "HUFL"]])["OT"].to_numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_workdir_refuses_to_resume_on_other_data(tmp_path):
  """A DataFrame run records its series' sha256: the same call again is the same run (it resumes, here: is done),
  the same config on changed data is refused in one line, and nothing of the first run is touched."""
  rng = np.random.default_rng(0)
  dates = pd.date_range("2021-01-01", periods=900, freq="h")
  df = pd.DataFrame({"date": dates, "a": np.sin(np.arange(900) / 4.0), "OT": rng.normal(size=900)})
  cfg = tiny()
  cfg.method, cfg.horizon, cfg.data.seq_len = "mtf", 24, 48
  first = train_and_evaluate(cfg, tmp_path / "run", data=df)
  before = (tmp_path / "run" / "results.json").read_bytes()
  assert train_and_evaluate(cfg, tmp_path / "run", data=df)["test_mse"] == first["test_mse"]
  changed = df.assign(OT=df["OT"] + 1.0)
  with pytest.raises(CheckpointError, match="on other data"):
    train_and_evaluate(cfg, tmp_path / "run", data=changed)
  assert (tmp_path / "run" / "results.json").read_bytes() == before
