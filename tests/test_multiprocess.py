"""A pod run on one machine: 2 processes x 2 CPU devices that find each other through jax.distributed
(launch/local.sh with PROCESSES=2), both stages with prediction intervals and TensorBoard, straight and killed
with SIGKILL in stage 2 and rerun, data parallel and with a table that shards weights across the processes.
Each must end with the results of one process on one device, and the files written once, by process 0."""

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
DATA_PARALLEL = ["--config.mesh.shape=(-1,1)"]
TIMEOUT = 100


def launch(*args, processes: int = 2, popen: bool = False):
  """`PROCESSES=2 launch/local.sh 4 python ARGS` (all processes in one session, so one killpg stops them all)."""
  cmd = [str(REPO / "launch" / "local.sh"), "4", sys.executable, *args]
  env = dict(os.environ, PROCESSES=str(processes))
  if popen:
    return subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  except subprocess.TimeoutExpired as e:  # a process that died leaves the others waiting for it: show why
    pytest.fail(f"timed out after {TIMEOUT} s:\n{(e.stderr or b'').decode()[-3000:]}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def train(workdir, *overrides, processes: int = 2, popen: bool = False):
  args = ["-m", "mola_jax.train", *SYNTHETIC, *overrides, "--workdir", str(workdir)]
  return launch(*args, processes=processes, popen=popen)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The reference: one process, one device, no mesh."""
  workdir = tmp_path_factory.mktemp("single")
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.train", *SYNTHETIC, "--workdir", str(workdir)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=TIMEOUT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def results(workdir) -> dict:
  return json.loads((workdir / "results.json").read_text())


def assert_same_results(got_dir, want_dir, logged=("pretrain", "adapt", "test")) -> None:
  """results.json equal to 1e-6 (the intervals too), and `logged` stages' records each once in metrics.jsonl."""
  got, want = results(got_dir), results(want_dir)
  assert got["num_test_windows"] == want["num_test_windows"]
  for key in ("test_mse", "test_mae", "val_mse"):
    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), key
  np.testing.assert_allclose(got["per_step_test_mse"], want["per_step_test_mse"], rtol=1e-6, atol=1e-6)
  for level, cov in want["interval_coverage"].items():
    assert got["interval_coverage"][level]["coverage"] == pytest.approx(cov["coverage"], abs=1e-6)
    assert got["interval_coverage"][level]["mean_width"] == pytest.approx(cov["mean_width"], rel=1e-5)
  records = lambda w: [json.loads(line) for line in (w / "metrics.jsonl").open()]
  epochs = lambda w: [(r["stage"], r.get("epoch")) for r in records(w) if r["stage"] in logged]
  assert epochs(got_dir) == epochs(want_dir)  # every record once: process 0 alone writes


@pytest.fixture(scope="module")
def straight(tmp_path_factory, single):
  workdir = tmp_path_factory.mktemp("two_processes")
  train(workdir, *DATA_PARALLEL)
  return workdir


def test_two_processes_train_both_stages_as_one_process_does(straight, single):
  assert_same_results(straight, single)
  got = results(straight)
  assert got["processes"] == 2 and got["devices"] == 4 and results(single)["processes"] == 1
  assert len(list((straight / "tb").glob("events.out.tfevents.*"))) == 1  # one writer of the summaries
  assert json.loads((straight / "conformal.json").read_text())["windows"] > 0


def test_forecast_and_export_on_two_processes_write_what_one_process_writes(straight, single, tmp_path, data_dir):
  import pandas as pd

  from mola_jax.data import synthetic

  values, dates, columns = synthetic.synthetic_data(type("Rows", (), {"synthetic_rows": 300, "synthetic_channels": 7}))
  frame = pd.DataFrame(values, columns=list(columns))
  frame.insert(0, "date", dates)
  frame.to_csv(tmp_path / "new.csv", index=False)
  for name, run, procs in (("one", single, 1), ("two", straight, 2)):
    launch("-m", "mola_jax.forecast", "--workdir", str(run), "--csv", str(tmp_path / "new.csv"),
           "--out", str(tmp_path / name / "f.csv"), processes=procs)  # fmt: skip
    launch("-m", "mola_jax.export", "--workdir", str(run), "--out", str(tmp_path / name / "m.jaxexport"),
           processes=procs)  # fmt: skip
  one, two = (pd.read_csv(tmp_path / n / "f.csv") for n in ("one", "two"))
  assert list(one.columns) == list(two.columns) and len(one) == len(two) == 48
  np.testing.assert_allclose(two[list(columns)].to_numpy(), one[list(columns)].to_numpy(), rtol=1e-5, atol=1e-5)
  assert (tmp_path / "two" / "m.jaxexport").stat().st_size > 0
  assert not list((tmp_path / "two").glob(".*tmp*"))  # no second writer left a temporary file


def test_killed_on_every_process_in_stage2_the_rerun_gives_the_same_results(single, tmp_path):
  workdir = tmp_path / "killed"
  proc = train(workdir, *DATA_PARALLEL, popen=True)
  resume = workdir / "checkpoints" / "adapt_resume"
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and proc.poll() is None:
    if resume.is_dir() and any(p.name.isdigit() and int(p.name) >= 7 for p in resume.iterdir()):
      os.killpg(proc.pid, signal.SIGKILL)  # every process of the run at once, mid-stage-2
      break
    time.sleep(0.05)
  proc.wait()
  assert not (workdir / "results.json").exists(), "the run finished before it could be killed in stage 2"
  train(workdir, *DATA_PARALLEL)  # the same command again
  assert_same_results(workdir, single)


def test_a_table_that_shards_weights_over_both_processes_gives_the_same_results(single, tmp_path):
  """The segment table splits the per-segment logits and the activations after the first adapted layer over the
  model axis, which spans the two processes: the restores of stage 1 and of the best state pass sharded targets."""
  train(tmp_path / "segment", "--config.mesh.shape=(2,2)", "--config.mesh.rules=segment")
  assert_same_results(tmp_path / "segment", single)


def test_the_scaling_study_spans_both_processes(tmp_path):
  out = tmp_path / "scaling"
  # No host-time columns (two more compiles a mesh): fit's dispatch on two processes is what the train tests run.
  launch("-m", "mola_jax.lab.scaling", *SYNTHETIC[:2], "--workdir", str(out), "--study.batches=8", "--study.steps=1",
         "--study.warmup=1", "--study.host_time=False")  # fmt: skip
  rows = json.loads((out / "scaling.json").read_text())["rows"]
  assert [row["mesh"] for row in rows][:2] == ["2x1", "4x1"]  # the default list starts at one device a process
  assert all(row["flops_per_step"] > 0 and row["step_seconds"] > 0 for row in rows)


def test_a_reproduction_runs_its_cells_on_both_processes_and_writes_once(single, tmp_path):
  """One cell (stage 1 + stage 2 of MoLA at the synthetic config's T and S, one seed) of `reproduce`, every
  process training it, process 0 writing the study's files: the cell equals the single-process run."""
  study = tmp_path / "study"
  launch("-m", "mola_jax.lab.reproduce", *SYNTHETIC, *DATA_PARALLEL, "--workdir", str(study),
         "--study.horizons=(48,)", "--study.methods=('mola',)", "--study.num_seeds=1",
         "--study.segment_options=config")  # fmt: skip
  assert (study / "table.csv").is_file() and (study / "per_step_T48.png").is_file()
  assert_same_results(study / "cells" / "mola-T48-S24-seed2023", single, logged=("adapt", "test"))
