"""What a user sees around a run: the README's Python API snippet, prediction intervals and their coverage on
ETTh1, the exported forecaster, TensorBoard summaries and profiler traces."""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import REPO


def readme_snippet() -> str:
  text = (REPO / "README.md").read_text()
  section = text[text.index("## Python API") :]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, data_dir):
  """The README's snippet, run as written in a fresh process from a folder holding ETTh1.csv."""
  here = tmp_path_factory.mktemp("api")
  (here / "ETTh1.csv").symlink_to(data_dir / "ETTh1.csv")
  proc = subprocess.run(
    [sys.executable, "-c", readme_snippet()],
    cwd=here,
    capture_output=True,
    text=True,
    timeout=900,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return here, proc.stdout


def test_the_readme_snippet_trains_predicts_and_backtests(api_run):
  here, stdout = api_run
  assert (here / "runs" / "api" / "results.json").is_file()
  assert "OT_lower_80" in stdout and "error" in stdout


def test_split_conformal_intervals_cover_the_test_split_near_nominal(api_run):
  """Calibrated on the validation windows only; the empirical coverage on ETTh1's test split is within a few
  points of each level."""
  here, _ = api_run
  coverage = json.loads((here / "runs" / "api" / "results.json").read_text())["interval_coverage"]
  assert abs(coverage["0.8"]["coverage"] - 0.80) < 0.05, coverage
  assert abs(coverage["0.95"]["coverage"] - 0.95) < 0.03, coverage
  assert coverage["0.95"]["mean_width"] > coverage["0.8"]["mean_width"] > 0


def test_the_exported_forecaster_matches_run_predict(api_run, tmp_path):
  """python -m mola_jax.export writes a file that jax alone loads and calls; on the same input it gives what
  run.predict gives."""
  import mola_jax
  from mola_jax import data

  here, _ = api_run
  out = tmp_path / "etth1.jaxexport"
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.export", "--workdir", str(here / "runs" / "api"), "--out", str(out)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  side = json.loads(pathlib.Path(f"{out}.json").read_text())
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  df = pd.read_csv(here / "ETTh1.csv").iloc[:3000]
  values, dates, columns = data.checked_frame(df, "ETTh1")
  seq_len, horizon = side["seq_len"], side["horizon"]
  one = (
    values[-seq_len:].astype(np.float32),
    data.time_features(dates[-seq_len:], side["freq"]),
    data.time_features(data.following(dates, horizon), side["freq"]),
  )
  x, x_mark, y_mark = (np.stack([a, a]) for a in one)  # a batch of 2: the batch size is symbolic
  got = np.asarray(exported.call(x, x_mark, y_mark))
  want = mola_jax.load_run(here / "runs" / "api").predict(df)[list(columns)].to_numpy()
  assert got.shape == (2, horizon, len(columns))
  for row in got:
    np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  print(f"export round trip: max abs diff {np.abs(got[0] - want).max():.2e} (forecast scale {np.abs(want).max():.1f})")


def event_tags(directory: pathlib.Path) -> set[str]:
  """Tags of every summary in the TensorBoard event files under `directory` (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2

  tags = set()
  for path in directory.rglob("events.out.tfevents.*"):
    raw = path.read_bytes()
    pos = 0
    while pos + 12 <= len(raw):
      (length,) = struct.unpack("<Q", raw[pos : pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 12 + length + 4
  return tags


def test_tensorboard_summaries_and_a_profile_on_request(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "mola_jax.train",
      "--config",
      "synthetic",
      "--workdir",
      str(tmp_path / "run"),
      "--config.profile_steps=3",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  tags = event_tags(tmp_path / "run" / "tb")
  for tag in (
    "pretrain/train_loss",
    "pretrain/val_mse",
    "pretrain/lr",
    "adapt/val_mse_per_segment/segment_1",
    "adapt/train_loss",
    "adapt/lr",
    "test/per_step_mse",
  ):
    assert tag in tags, (tag, sorted(tags)[:20])
  mixtures = [t for t in tags if t.startswith("adapt/mixture/")]  # P weights per segment and adapted layer
  assert mixtures and all(re.fullmatch(r"adapt/mixture/.+/segment_\d+/expert_\d+", t) for t in mixtures)
  for stage in ("pretrain", "adapt"):
    assert list((tmp_path / "run" / "profile" / stage).rglob("*.xplane.pb")), stage
