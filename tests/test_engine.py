"""The study engine (mola_jax/lab/engine.py) on a real local Ray cluster (two one-CPU workers, started once for
this module): the table, selection and runs of the local engine; a worker killed in a cell; a user error in a
cell; the driver killed and rerun. Also: unfinished runs resume only when they can, the one line of engine=ray
without Ray, and the graph arithmetic of lab/report/graph.py on a made-up graph with known answers."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPO, tiny

from mola_jax import cli, config_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import engine, reproduce, study, sweep
from mola_jax.lab.report import graph

# mtf and MoLA at T = 96 with two S options (24, 32) and two seeds: every kind of cell and dependency (stage 1 ->
# stage 2; the second seed's S chosen on the first seed's validation).
CONFIG = """
from mola_jax import config_lib

def get_config():
  cfg = config_lib.load("synthetic")
  cfg.update(horizon=96, segment_len=None)
  cfg.data.synthetic_rows, cfg.pretrain.epochs, cfg.adapt.epochs = 1500, 2, 1
  return cfg
"""
STUDY = ["--study.horizons=(96,)", '--study.methods=("mtf","mola")', "--study.num_seeds=2",
         "--study.segment_options=config"]  # fmt: skip
KILLED_CELL = "pretrain/S24-seed2023"  # the second cell Ray starts: a worker is killed in it


def settings(**more):
  s = reproduce.defaults()
  s.update(horizons=(96,), methods=("mtf", "mola"), num_seeds=2, segment_options="config", **more)
  return s


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "engine_study.py"
  path.write_text(CONFIG)
  return path


@pytest.fixture(scope="module")
def cluster(data_dir):
  """A Ray cluster on this machine for the module (`ray start --head`, two CPUs), joined through RAY_ADDRESS;
  yields its logs folder. A short temp dir: Ray's socket paths must stay under 108 bytes."""
  tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  head = subprocess.Popen(
    [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",  # `ray start`
     "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={tmp}", "--include-dashboard=false",
     "--disable-usage-stats"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
  )  # fmt: skip
  before = os.environ.get("RAY_ADDRESS")
  os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
  try:
    import ray

    deadline = time.time() + 60
    while True:  # until the head answers
      try:
        ray.init()
        break
      except ConnectionError:
        assert head.poll() is None and time.time() < deadline, "ray start --head failed"
        time.sleep(0.2)
    ray.shutdown()
    yield next(pathlib.Path(tmp).glob("session_2*/logs"))
  finally:
    os.killpg(head.pid, signal.SIGKILL)  # the head's processes; its workers end when their raylet does
    head.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    os.environ.pop("RAY_ADDRESS") if before is None else os.environ.update(RAY_ADDRESS=before)


@pytest.fixture(scope="module")
def local_study(config_file, tmp_path_factory):
  """The reference: the study under the local engine."""
  workdir = tmp_path_factory.mktemp("local")
  reproduce.run(config_lib.load(str(config_file)), settings(), workdir)
  return workdir


def driver(config_file, workdir, *more) -> subprocess.Popen:
  """`python -m mola_jax.lab.reproduce ... --study.engine=ray`, as a user starts it."""
  return subprocess.Popen(
    [sys.executable, "-m", "mola_jax.lab.reproduce", "--config", str(config_file), "--workdir", str(workdir), *STUDY,
     "--study.engine=ray", *more],
    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
  )  # fmt: skip


def log_sizes(logs) -> dict:
  return {f: f.stat().st_size for f in logs.glob("worker-*.out")}


def attempts(logs, since: dict, key: str) -> list[str]:
  """The output of every attempt of cell `key` in the workers' logs since `since` (log_sizes)."""
  out = []
  for f in sorted(logs.glob("worker-*.out")):
    with f.open(errors="replace") as handle:
      handle.seek(since.get(f, 0))
      out += [c for c in handle.read().split("[cell] ")[1:] if c.startswith(f"{key}: start")]
  return out


def rows(path) -> list[dict]:
  with path.open() as f:
    return list(csv.DictReader(f))


def assert_same_study(got, want) -> None:
  """The same table and selection (the same S chosen), and every run's test MSE to 1e-6."""
  for name in ("table.csv", "selection.csv"):
    a, b = rows(got / name), rows(want / name)
    assert [r["segment_len"] for r in a] == [r["segment_len"] for r in b], name
    assert [r.get("chosen") for r in a] == [r.get("chosen") for r in b], name
    for x, y in zip(a, b, strict=True):
      key = "test_mse_mean" if name == "table.csv" else "val_mse"
      assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-6, abs=1e-6), name
  runs = sorted(p.relative_to(want) for p in want.glob("*/*/results.json"))
  assert runs == sorted(p.relative_to(got) for p in got.glob("*/*/results.json")) and len(runs) == 8
  for run in runs:
    a, b = (json.loads((root / run).read_text()) for root in (got, want))
    assert a["test_mse"] == pytest.approx(b["test_mse"], rel=1e-6, abs=1e-6), run


def test_a_study_on_ray_gives_the_local_engines_table_selection_and_runs(cluster, config_file, local_study, tmp_path):
  cfg = config_lib.load(str(config_file))
  reproduce.run(cfg, settings(engine="ray", cell_resources='{"CPU": 1}'), tmp_path)
  assert_same_study(tmp_path, local_study)
  cells = json.loads((tmp_path / "graph.json").read_text())["cells"]
  assert len(cells) == 9 and all(c["seconds"] > 0 for c in cells.values())
  assert cells["cells/mola-T96-chosen-seed2024"]["deps"] == [
    "cells/mola-T96-S24-seed2023", "cells/mola-T96-S32-seed2023", "pretrain/S24-seed2024", "pretrain/S32-seed2024"
  ]  # fmt: skip

  s = sweep.defaults()  # one point, the study's mola cell of S = 24, seed 2023: the same run
  s.update(grid="technique.mola.rank=2", num_seeds=1, engine="ray")
  cfg.segment_len = 24
  [point] = sweep.run(cfg, s, tmp_path / "sweep")
  mola = json.loads((local_study / "cells" / "mola-T96-S24-seed2023" / "results.json").read_text())
  assert point["test_mse_mean"] == pytest.approx(mola["test_mse"], rel=1e-6)


def test_a_user_error_in_a_cell_fails_the_study_at_once_without_a_retry(cluster, config_file, tmp_path, capsys):
  since, bad = log_sizes(cluster), "cells/mtf-T96-S96-seed2023"  # the first cell Ray starts
  (tmp_path / "cells").mkdir()
  (tmp_path / bad).write_text("not a run\n")
  with pytest.raises(SystemExit) as exit_, cli.user_errors():  # what the command line does with it
    reproduce.run(config_lib.load(str(config_file)), settings(engine="ray"), tmp_path)
  assert exit_.value.code == 2
  out, err = capsys.readouterr()
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "is a file, not a directory" in errors[0] and bad in errors[0]
  assert f"FAILED {bad}" in out
  wait(lambda: attempts(cluster, since, bad), timeout=30)  # a live worker's output reaches its log a little later
  assert len(attempts(cluster, since, bad)) == 1  # not retried
  assert not (tmp_path / "table.csv").exists() and (tmp_path / bad).read_text() == "not a run\n"


def test_a_killed_worker_and_a_killed_driver_end_in_the_uninterrupted_table(
  cluster, config_file, local_study, tmp_path
):
  """A worker SIGKILLed in a cell: Ray runs the cell again and it resumes from its own checkpoint. Then the driver
  SIGKILLed in the middle of the study and rerun: finished cells are reused, unfinished ones resume. The table is
  the uninterrupted study's. A run resumed, not started over, keeps the timed record of its first epoch."""
  cell = tmp_path / KILLED_CELL
  proc = driver(config_file, tmp_path)
  wait(lambda: committed(cell), proc)
  worker, before = int((cell / ".lock").read_text().split()[0]), first_epoch(cell)
  assert not (cell / "results.json").exists(), "the cell ended before the kill"
  os.kill(worker, signal.SIGKILL)
  wait(lambda: (cell / "results.json").exists() and partial(tmp_path), proc)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  # Ray's retry finished the cell in another process (the lock names the last owner; not the workers' logs: Ray
  # writes a worker's output through a pipe read inside the worker, so a SIGKILL can lose its last lines).
  assert int((cell / ".lock").read_text().split()[0]) != worker
  assert first_epoch(cell) == before  # resumed: the epoch trained before the kill was not trained again

  for run in tmp_path.glob("*/*"):  # Ray ends the dead driver's cells: wait until no run holds its workdir
    wait(lambda run=run: free(run))
  finished = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/results.json")}
  unfinished = {run: first_epoch(run) for run in partial(tmp_path)}
  rerun = driver(config_file, tmp_path)
  out, err = rerun.communicate(timeout=180)
  assert rerun.returncode == 0, err[-2000:]
  assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # reused, not retrained
  assert unfinished and all(first_epoch(run) == line for run, line in unfinished.items())  # resumed
  assert_same_study(tmp_path, local_study)


def wait(done, proc=None, timeout=120) -> None:
  """Poll until done(); fail if the driver `proc` ends first or time runs out."""
  deadline = time.time() + timeout
  while not done():
    assert proc is None or proc.poll() is None, proc.stderr.read()[-2000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.01)


def partial(workdir) -> list:
  """The unfinished runs of a study that have trained an epoch (and saved its resume checkpoint)."""
  return [run for run in workdir.glob("*/*") if not (run / "results.json").exists() and first_epoch(run)]


def committed(run) -> bool:
  """Whether `run` holds a complete resume checkpoint (orbax names a step's folder by its number when done)."""
  return any(p.name.isdigit() for p in run.glob("checkpoints/*_resume/*"))


def first_epoch(run) -> str | None:
  """The record of the first trained epoch in the run's metrics.jsonl, once a resume checkpoint holds it: it
  carries the epoch's measured seconds, so a run trained again from the start writes another."""
  if not committed(run):
    return None
  with (run / "metrics.jsonl").open() as f:
    return next((line for line in f if '"seconds"' in line and line.endswith("\n")), None)


def free(run) -> bool:
  """Whether no process holds `run` (workdir.locked's lock)."""
  if not (run / ".lock").exists():
    return True
  with (run / ".lock").open("a") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    fcntl.flock(handle, fcntl.LOCK_UN)
  return True


def test_unfinished_runs_resume_only_with_their_config_and_group(tmp_path):
  cfg = tiny()
  seeds = {name: config_lib.with_values(cfg, {"seed": i}) for i, name in enumerate("abc")}

  def unfinished(name, group, config=None):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text((config or seeds[name]).to_json_best_effort())
    (run / study.GROUP).write_text(json.dumps({"runs": group}))
    (run / "progress").write_text("a resume checkpoint")

  def resumes(names) -> list[bool]:
    study.resume_or_start_over([seeds[n] for n in names], [tmp_path / n for n in names])
    return [(tmp_path / n / "progress").exists() for n in names]

  unfinished("a", ["a"])
  assert resumes(["a"]) == [True]
  unfinished("b", ["a", "b", "c"])
  assert resumes(["b"]) == [True]  # a run of a group goes on alone, or with any of its group
  (tmp_path / "b" / "progress").write_text("again")
  assert resumes(["a", "b"]) == [False, False]  # a was trained alone: no common step with b; both start over
  assert json.loads((tmp_path / "a" / study.GROUP).read_text()) == {"runs": ["a", "b"]}
  unfinished("c", ["c"], config=config_lib.with_values(seeds["c"], {"adapt.lr": 1.0}))
  assert resumes(["c"]) == [False]  # another config: started over
  unfinished_fast = config_lib.with_values(seeds["a"], {"checkpoint_every_steps": 5})  # speed only: the same run
  (tmp_path / "a" / "config.json").write_text(unfinished_fast.to_json_best_effort())
  (tmp_path / "a" / "progress").write_text("x")
  (tmp_path / "a" / study.GROUP).write_text(json.dumps({"runs": ["a"]}))
  assert resumes(["a"]) == [True]


def add(*xs):
  time.sleep(0.01)
  return sum(xs)


def test_the_local_engine_runs_cells_in_order_with_their_dependencies_results(tmp_path, capsys):
  cells = [engine.Cell("a", add, (1,)), engine.Cell("b", add, (2,)), engine.Cell("c", add, (10,), ("a", "b"), "sum")]
  s = reproduce.defaults()
  s.cells_per_process = 0  # in this process: capsys sees the progress lines
  assert engine.run(cells, s, tmp_path) == {"a": 1, "b": 2, "c": 13}
  out = capsys.readouterr().out
  assert "start c · 2/3 done, 1 running, 0 waiting, 0 failed" in out and "critical path" in out
  first = json.loads((tmp_path / "graph.json").read_text())["cells"]
  assert first["c"]["deps"] == ["a", "b"] and all(c["seconds"] >= 0.01 for c in first.values())
  engine.run(cells, s, tmp_path)  # a rerun adds its seconds: a cell reused then took its time before
  again = json.loads((tmp_path / "graph.json").read_text())["cells"]
  assert all(again[k]["seconds"] >= first[k]["seconds"] + 0.01 for k in first)
  with pytest.raises(TypeError):
    engine.run([*cells, engine.Cell("d", add, ("x",), ("c",))], s, tmp_path)
  assert "FAILED d" in capsys.readouterr().out
  with pytest.raises(ValueError, match="after its dependencies"):
    engine.run(cells[::-1], s, tmp_path)


def pid_once(marker: str, *_) -> int:
  """This process's id; the first call (no `marker` file yet) kills its own process instead."""
  if not os.path.exists(marker):
    pathlib.Path(marker).touch()
    os.kill(os.getpid(), signal.SIGKILL)
  return os.getpid()


def test_local_cells_run_in_fresh_child_processes_and_one_whose_process_dies_runs_again(tmp_path, capsys):
  """cells_per_process=2: cells 1-2 in one child, 3-4 in the next, none in this process. A cell whose process is
  killed (as by the segfault the setting avoids) runs again in a fresh one; the study goes on."""
  marker = str(tmp_path / "killed_once")
  cells = [engine.Cell(k, pid_once, (str(tmp_path / "never"),)) for k in "ab"]
  cells += [engine.Cell("c", pid_once, (marker,), ("a",)), engine.Cell("d", pid_once, (str(tmp_path / "never"),))]
  (tmp_path / "never").touch()
  s = reproduce.defaults()
  s.cells_per_process = 2
  pids = engine.run(cells, s, tmp_path)
  # a and b in one child; c killed its child, ran again in a fresh one, and d ran there after it.
  assert pids["a"] == pids["b"] != pids["c"] == pids["d"] and os.getpid() not in pids.values()
  assert "the process of c died; running it again in a fresh one" in capsys.readouterr().out
  s.cells_per_process = -1
  with pytest.raises(ConfigError, match="cells_per_process"):
    engine.run(cells, s, tmp_path)


def test_engine_settings_are_checked_and_ray_missing_is_one_line(monkeypatch, capsys):
  s = reproduce.defaults()
  assert s.engine == "local" and engine.resources(s.cell_resources) == {"num_cpus": 1}
  assert engine.resources('{"GPU": 1}') == {"num_gpus": 1, "max_calls": 1}
  assert engine.resources('{"CPU": 8, "TPU": 4}') == {"num_cpus": 8, "resources": {"TPU": 4}, "max_calls": 1}
  for bad in ("{}", "GPU=1", '{"GPU": -1}', '["CPU"]'):
    with pytest.raises(ConfigError, match="cell_resources"):
      engine.resources(bad)
  s.engine = "spark"
  with pytest.raises(ConfigError, match="local or ray"):
    engine.check(s)
  s.engine = "ray"
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where Ray is not installed
  with pytest.raises(SystemExit) as exit_, cli.user_errors():
    engine.check(s)
  assert exit_.value.code == 2
  assert capsys.readouterr().err.splitlines() == [
    "error: study.engine=ray needs Ray, which is not installed; pip install 'mola_jax[ray]'"
  ]
  assert engine.capacity({"CPU": 16, "GPU": 4}, {"GPU": 1}) == 4 and engine.capacity({"CPU": 2}, {"CPU": 1}) == 2


def test_the_critical_path_and_the_wall_time_of_n_workers_on_a_known_graph(tmp_path, capsys):
  """a (3 s) and b (1 s) feed c (2 s), which feeds e (1 s); d (4 s) stands alone. Total 11 s; the critical path
  a -> c -> e, 6 s. Two workers: a and b at 0, d at 1 (b done), c at 3 (a done), e at 5: 6 s. One worker: 11 s."""
  seconds = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 4.0, "e": 1.0}
  deps = {"a": [], "b": [], "c": ["a", "b"], "d": [], "e": ["c"]}
  assert graph.critical_path(seconds, deps) == (6.0, ["a", "c", "e"])
  assert graph.tails(seconds, deps) == {"a": 6.0, "b": 4.0, "c": 3.0, "d": 4.0, "e": 1.0}
  assert [graph.list_schedule(seconds, deps, n) for n in (1, 2, 3, 64)] == [11.0, 6.0, 6.0, 6.0]
  # Ties (b and d, 4 s behind each) go to the study's order: with d before b, d runs beside a, b only at 3 s, so
  # c waits for b until 4 s: 7 s (greedy list scheduling is not optimal).
  assert graph.list_schedule(seconds, {k: deps[k] for k in "dbeca"}, 2) == 7.0
  (tmp_path / "study").mkdir()
  cells = {k: {"deps": deps[k], "kind": "", "seconds": s} for k, s in seconds.items()}
  (tmp_path / "study" / "graph.json").write_text(json.dumps({"cells": cells}))
  graph.main([str(tmp_path / "study")])
  out = capsys.readouterr().out.splitlines()
  assert out[2] == "| study | 5 | 11s | 6s | 11s | 6s | 6s | 6s | a (3s) → c (2s) → e (1s) |"
