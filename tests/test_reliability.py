"""Interrupted runs resume to the same result, existing runs are protected, divergence stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import REPO, forecast_cli

SYNTHETIC = ["--config", str(REPO / "configs" / "synthetic.py"), "--config.checkpoint_every_steps=7"]


def cli(workdir, *overrides, check=True):
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.train", *SYNTHETIC, *overrides, "--workdir", str(workdir)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  if check and proc.returncode != 0:
    raise AssertionError(proc.stderr[-2000:])
  return proc


def kill_when(workdir, resume_dir: str, min_steps: int, timeout=240):
  """Start a run, kill -9 it once `resume_dir` holds a checkpoint of at least `min_steps` steps."""
  proc = subprocess.Popen(
    [sys.executable, "-m", "mola_jax.train", *SYNTHETIC, "--workdir", str(workdir)],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  deadline = time.time() + timeout
  target = workdir / "checkpoints" / resume_dir
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in target.glob("*") if p.name.isdigit()] if target.is_dir() else []
    if steps and max(steps) >= min_steps:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      return
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f"the run ended or stalled before {target} reached step {min_steps}")


def metrics_of(workdir) -> dict:
  r = json.loads((workdir / "results.json").read_text())
  return {k: r[k] for k in ("test_mse", "test_mae", "val_mse", "per_step_test_mse", "num_test_windows")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """One uninterrupted run, the reference for every interrupted one (timed, after a first run that fills the
  compilation cache, so the time is what the killed runs will take)."""
  cli(tmp_path_factory.mktemp("warm"))
  workdir = tmp_path_factory.mktemp("straight")
  t0 = time.perf_counter()
  cli(workdir)
  return workdir, time.perf_counter() - t0


def assert_same_run(got_dir, want_dir) -> None:
  """results.json equal to 1e-6, and the metrics log holds each epoch once and no partial line."""
  want, got = metrics_of(want_dir), metrics_of(got_dir)
  assert got["num_test_windows"] == want["num_test_windows"]
  for key in ("test_mse", "test_mae", "val_mse"):
    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6)
  np.testing.assert_allclose(got["per_step_test_mse"], want["per_step_test_mse"], rtol=1e-6, atol=1e-6)
  lines = lambda w: [(r["stage"], r.get("epoch")) for r in map(json.loads, (w / "metrics.jsonl").open())]
  assert lines(got_dir) == lines(want_dir)


# Kill moments spread evenly over a whole run (stage 1, stage 2, the test pass, inside checkpoint writes alike).
# The suite runs a handful; MOLA_KILL_POINTS=24 python -m pytest tests/test_reliability.py -k anywhere runs more.
KILL_POINTS = int(os.environ.get("MOLA_KILL_POINTS", "4"))


@pytest.mark.parametrize("point", range(KILL_POINTS))
def test_killed_anywhere_the_rerun_ends_with_the_uninterrupted_result(point, straight, tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(
    [sys.executable, "-m", "mola_jax.train", *SYNTHETIC, "--workdir", str(workdir)],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  time.sleep(straight[1] * (point + 1) / (KILL_POINTS + 1))
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  cli(workdir)  # the same command again
  assert_same_run(workdir, straight[0])


@pytest.mark.parametrize(
  "resume_dir,min_steps", [("pretrain_resume", 14), ("adapt_resume", 7)], ids=["killed-in-stage1", "killed-in-stage2"]
)
def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path, straight, resume_dir, min_steps):
  kill_when(tmp_path / "killed", resume_dir, min_steps)
  assert not (tmp_path / "killed" / "results.json").exists()
  cli(tmp_path / "killed")
  assert_same_run(tmp_path / "killed", straight[0])


def test_a_workdir_of_another_config_is_refused_unless_overwritten(tmp_path):
  cli(tmp_path, "--config.adapt.epochs=1", "--config.pretrain.epochs=1")
  before = {p: p.read_bytes() for p in (tmp_path / "config.json", tmp_path / "results.json")}
  proc = cli(tmp_path, "--config.horizon=72", check=False)
  assert proc.returncode == 2
  assert "different config" in proc.stderr and "horizon" in proc.stderr
  assert all(p.read_bytes() == b for p, b in before.items())
  cli(tmp_path, "--config.horizon=72", "--overwrite")
  assert json.loads((tmp_path / "results.json").read_text())["horizon"] == 72


def test_a_non_finite_loss_stops_with_the_step_and_keeps_earlier_checkpoints(tmp_path):
  proc = cli(tmp_path, "--config.adapt.lr=1e30", check=False)
  assert proc.returncode == 3
  line = proc.stderr.strip().splitlines()[-1]
  assert "[adapt] non-finite training loss at step" in line and "adapt.lr" in line
  assert (tmp_path / "checkpoints" / "pretrain").is_dir()  # stage 1 is intact and reusable
  assert not (tmp_path / "results.json").exists()


def test_an_unreadable_latest_resume_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  import jax.numpy as jnp

  from mola_jax import checkpointing

  state = {"w": jnp.arange(4.0), "key": jnp.zeros(2, jnp.uint32)}
  mngr = checkpointing.resume_manager(tmp_path / "resume")
  checkpointing.save_resume(mngr, 10, state, {"step": 10})
  checkpointing.save_resume(mngr, 20, {"w": state["w"] + 1, "key": state["key"]}, {"step": 20})
  mngr.wait_until_finished()
  for f in (tmp_path / "resume" / "20" / "state").rglob("*"):  # damage every file of the newest one
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level("WARNING"):
    restored, loop = checkpointing.restore_resume(mngr, state)
  assert loop == {"step": 10} and np.array_equal(restored["w"], np.arange(4.0))
  assert any("unreadable" in r.message and "falling back" in r.message for r in caplog.records)
  mngr.close()


def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_stale_lock_is_not(tmp_path):
  from mola_jax import workdir

  with workdir.locked(tmp_path):  # this process holds the workdir, as a running training would
    proc = cli(tmp_path, "--config.adapt.epochs=1", "--config.pretrain.epochs=1", check=False)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert "in use by another run" in proc.stderr and str(os.getpid()) in proc.stderr
  assert not (tmp_path / "config.json").exists()
  # A lock file left behind by a killed run names a process that holds nothing: the rerun goes ahead.
  (tmp_path / ".lock").write_text("999999 some-host\n")
  cli(tmp_path, "--config.adapt.epochs=1", "--config.pretrain.epochs=1")
  assert (tmp_path / "results.json").is_file()


def truncate_newest(directory) -> int:
  """Cut every file of the newest checkpoint in `directory` to half its size; returns how many it holds."""
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  for f in (directory / str(steps[-1])).rglob("*"):
    if f.is_file() and f.stat().st_size > 1 and f.name != "_CHECKPOINT_METADATA":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  return len(steps)


def test_a_damaged_stage1_checkpoint_falls_back_or_fails_in_one_line(tmp_path):
  """Stage 2 never adapts a damaged stage-1 state: it takes the earlier intact one, with a warning; with none
  left, one line and exit 2."""
  cli(
    tmp_path / "s1",
    "--config.stage=pretrain",
    "--config.pretrain.epochs=3",
    "--config.pretrain.patience=3",
    "--config.pretrain.lr=3e-3",
  )
  pretrain = tmp_path / "s1" / "checkpoints" / "pretrain"
  assert truncate_newest(pretrain) == 2  # both kept best states: the newest damaged, the one before intact
  adapt = ["--config.stage=adapt", f"--config.init_from={tmp_path / 's1'}"]
  proc = cli(tmp_path / "s2", *adapt)
  assert "unreadable" in proc.stderr and "falling back to an earlier one" in proc.stderr
  assert json.loads((tmp_path / "s2" / "results.json").read_text())["test_mse"] < 2.0
  truncate_newest(pretrain)
  for f in (pretrain / sorted(p.name for p in pretrain.iterdir() if p.name.isdigit())[0]).rglob("*"):
    if f.is_file() and f.name != "_CHECKPOINT_METADATA":
      f.write_bytes(b"")
  proc = cli(tmp_path / "s3", *adapt, check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no readable checkpoint")
  assert not (tmp_path / "s3" / "results.json").exists()


def test_the_forecast_cli_falls_back_from_a_damaged_checkpoint(tmp_path):
  cli(tmp_path / "run", "--config.adapt.epochs=3", "--config.adapt.patience=3", "--config.adapt.lr=3e-3")
  adapt = tmp_path / "run" / "checkpoints" / "adapt"
  if truncate_newest(adapt) < 2:
    pytest.skip("stage 2 kept one best state only")
  import pandas as pd

  from mola_jax.data import synthetic

  rows = types.SimpleNamespace(synthetic_rows=300, synthetic_channels=7)  # the synthetic config's channels
  values, dates, columns = synthetic.synthetic_data(rows)
  frame = pd.DataFrame(values, columns=list(columns))
  frame.insert(0, "date", dates)
  frame.to_csv(tmp_path / "new.csv", index=False)
  proc = forecast_cli(
    "--workdir", str(tmp_path / "run"), "--csv", str(tmp_path / "new.csv"), "--out", str(tmp_path / "f.csv")
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "falling back to an earlier one" in proc.stderr and (tmp_path / "f.csv").is_file()
