"""The forecast CLI: a trained run forecasts the steps after a file's end, in original units, on its
training scaler; on a series with a known pattern the forecast matches the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import forecast_cli, tiny

from mola_jax.forecast import forecast_csv
from mola_jax.inference import load_run
from mola_jax.train import train_and_evaluate


def pattern(rows: int) -> pd.DataFrame:
  """Three channels of exact daily and weekly cycles in their own units (no noise): a forecastable truth."""
  t = np.arange(rows)[:, None]
  values = (
    np.array([10.0, -3.0, 200.0])
    + np.array([2.0, 0.5, 30.0]) * np.sin(2 * np.pi * t / 24 + np.array([0, 1, 2]))
    + np.array([1.0, 0.2, 10.0]) * np.sin(2 * np.pi * t / 168)
  )
  frame = pd.DataFrame(values, columns=["a", "b", "OT"])
  frame.insert(0, "date", pd.date_range("2021-03-01", periods=rows, freq="h"))
  return frame


def test_forecast_of_a_known_pattern_matches_the_truth(tmp_path):
  full = pattern(1700)
  full.iloc[:1500].to_csv(tmp_path / "train.csv", index=False)
  cfg = tiny()
  cfg.data.path, cfg.method, cfg.horizon = str(tmp_path / "train.csv"), "mtf", 48
  cfg.model.itransformer.update(d_model=32, d_ff=32)
  cfg.pretrain.update(epochs=8, lr=3e-3)
  train_and_evaluate(cfg, tmp_path / "run")

  full.iloc[:1600].to_csv(tmp_path / "new.csv", index=False)  # forecast rows 1600..1647, never seen
  out = forecast_csv(load_run(tmp_path / "run"), tmp_path / "new.csv")
  truth = full.iloc[1600:1648]
  assert list(out.columns)[:5] == ["origin", "date", "a", "b", "OT"] and len(out) == 48
  for level in ("80", "95"):  # interval bounds around every channel's forecast
    for ch in ("a", "b", "OT"):
      assert (out[f"{ch}_lower_{level}"] < out[ch]).all() and (out[ch] < out[f"{ch}_upper_{level}"]).all()
  assert (out["date"].to_numpy() == truth["date"].to_numpy()).all()  # hourly stamps continue the file
  amplitude = np.array([2.0, 0.5, 30.0])  # errors relative to each channel's daily swing, in its own units
  rel = (out[["a", "b", "OT"]].to_numpy() - truth[["a", "b", "OT"]].to_numpy()) / amplitude
  assert np.sqrt(np.mean(rel**2)) < 0.15


def test_forecast_cli_on_etth1(data_dir, tmp_path):
  cfg = tiny()
  cfg.method, cfg.horizon, cfg.segment_len = "mola", 48, 24
  train_and_evaluate(cfg, tmp_path / "run")
  raw = pd.read_csv(data_dir / "ETTh1.csv")
  raw.iloc[:500].to_csv(tmp_path / "new.csv", index=False)
  proc = forecast_cli(
    "--workdir",
    str(tmp_path / "run"),
    "--csv",
    str(tmp_path / "new.csv"),
    "--out",
    str(tmp_path / "out" / "fc.csv"),
    "--roll",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = pd.read_csv(tmp_path / "out" / "fc.csv", parse_dates=["origin", "date"])
  assert list(out.columns)[: len(raw.columns) + 1] == ["origin"] + list(raw.columns)
  assert {"OT_lower_80", "OT_upper_80", "OT_lower_95", "OT_upper_95"} <= set(out.columns)
  last = out[out["origin"] == out["origin"].max()]
  assert len(last) == 48 and last["origin"].iloc[0] == pd.Timestamp(raw["date"].iloc[499])
  assert last["date"].iloc[0] == pd.Timestamp(raw["date"].iloc[499]) + pd.Timedelta(hours=1)
  assert out["origin"].nunique() == len(range(96, 500, 48)) + 1  # the backtest origins plus the file's end
  # Original units: oil temperature forecasts sit in the range the file itself spans, not around 0.
  assert raw["OT"].iloc[:500].min() - 10 < last["OT"].mean() < raw["OT"].iloc[:500].max() + 10
  assert len(list((tmp_path / "out").glob("forecast_*.png"))) == 7

  raw.iloc[:500, :-1].to_csv(tmp_path / "fewer.csv", index=False)
  proc = forecast_cli(
    "--workdir", str(tmp_path / "run"), "--csv", str(tmp_path / "fewer.csv"), "--out", str(tmp_path / "bad.csv")
  )
  assert proc.returncode == 2 and "same columns" in proc.stderr and not (tmp_path / "bad.csv").exists()
  # The training data's checks apply to the forecast CSV too: one line, exit 2, no output.
  bad = {"inf.csv": raw.iloc[:500].replace({raw["OT"].iloc[300]: np.inf}), "back.csv": raw.iloc[:500].iloc[::-1]}
  for name, frame in bad.items():
    frame.to_csv(tmp_path / name, index=False)
    proc = forecast_cli(
      "--workdir", str(tmp_path / "run"), "--csv", str(tmp_path / name), "--out", str(tmp_path / f"{name}.out")
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr[-500:])
    assert not (tmp_path / f"{name}.out").exists()
