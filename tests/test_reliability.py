"""Interrupted runs resume to the same result, existing runs are protected, divergence stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

SYNTHETIC = ["--config", str(REPO / "configs" / "synthetic.py"), "--config.checkpoint_every_steps=7"]


def cli(workdir, *overrides, check=True):
  proc = subprocess.run([sys.executable, "-m", "mola_jax.train", *SYNTHETIC, *overrides, "--workdir", str(workdir)],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(proc.stderr[-2000:])
  return proc


def kill_when(workdir, resume_dir: str, min_steps: int, timeout=240):
  """Start a run, kill -9 it once `resume_dir` holds a checkpoint of at least `min_steps` steps."""
  proc = subprocess.Popen([sys.executable, "-m", "mola_jax.train", *SYNTHETIC, "--workdir", str(workdir)],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
  """One uninterrupted run, the reference for every interrupted one."""
  workdir = tmp_path_factory.mktemp("straight")
  cli(workdir)
  return workdir


@pytest.mark.parametrize("resume_dir,min_steps", [("pretrain_resume", 14), ("adapt_resume", 7)],
                         ids=["killed-in-stage1", "killed-in-stage2"])
def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path, straight, resume_dir, min_steps):
  kill_when(tmp_path / "killed", resume_dir, min_steps)
  assert not (tmp_path / "killed" / "results.json").exists()
  cli(tmp_path / "killed")
  want, got = metrics_of(straight), metrics_of(tmp_path / "killed")
  assert got["num_test_windows"] == want["num_test_windows"]
  for key in ("test_mse", "test_mae", "val_mse"):
    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6)
  np.testing.assert_allclose(got["per_step_test_mse"], want["per_step_test_mse"], rtol=1e-6, atol=1e-6)
  # The metrics log holds each epoch once, as an uninterrupted run's does.
  lines = lambda w: [(r["stage"], r.get("epoch")) for r in map(json.loads, (w / "metrics.jsonl").open())]
  assert lines(tmp_path / "killed") == lines(straight)


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
  assert "[stage2] non-finite training loss at step" in line and "adapt.lr" in line
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
