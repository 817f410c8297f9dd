"""The engine of a study: its cells as a task graph, run on this machine (`--study.engine=local`, the default) or
as Ray tasks over a cluster (`--study.engine=ray`). A driver (reproduce, sweep) only describes its cells and how
their results combine; Ray does the scheduling, the placement and the retries.

A cell is a call, `cell.fn(*cell.args, *results of cell.deps)`, whose result is small and picklable (a run's
results.json and workdir). Under `local` the cells run on this machine one after the other, in the order given (each
after its dependencies), in a child process renewed every `--study.cells_per_process` cells. Under `ray` each cell
is a Ray task that asks for `--study.cell_resources` (a JSON object: '{"CPU": 2}', '{"GPU": 1}', '{"TPU": 4}' for a
TPU host), its dependencies passed as ObjectRefs, so Ray starts it once they are done, wherever those resources are
free. The driver joins the cluster at `--study.ray_address`, else at $RAY_ADDRESS, else starts one on this machine.
Cells run in the driver's working directory and see its MOLA_DATA_DIR, JAX_PLATFORMS, XLA_FLAGS and
JAX_COMPILATION_CACHE_DIR and its mola_jax (Ray's runtime_env): the study's paths must be ones every worker sees (a
shared file system).

Faults: Ray retries a cell whose worker process died (MAX_RETRIES times), the local engine once; the cell's runs
then go on from their own resume checkpoints (study.run_group). A cell that raises is not retried: the study stops
with its error (a user error: one line, exit 2), the other cells cancelled. Rerunning the study reuses finished
cells and resumes unfinished ones.

Progress: one line per event with the cells done, running, waiting and failed, the elapsed time and the critical
path (the longest chain of dependent cells: no number of workers ends the study sooner), estimated from the cells
measured so far. The study's graph.json holds every cell's dependencies and measured seconds, written as each
cell ends, so a driver killed keeps what it measured (python -m mola_jax.lab.report.graph DIR: the wall time N
workers would need).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import socket
import sys
import time
from collections.abc import Callable

import ml_collections
from ml_collections import config_dict

from mola_jax import cli
from mola_jax import workdir as workdir_lib
from mola_jax.errors import ConfigError, Diverged
from mola_jax.lab.report import graph

ENGINES = ("local", "ray")
MAX_RETRIES = 3  # a worker lost (killed, out of memory, a node gone): the cell is run again, resuming its runs
# What a cell needs from the driver's environment (when set there): the data, the platform, XLA's flags and cache.
PASSED_ENV = ("MOLA_DATA_DIR", "JAX_PLATFORMS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
INSTALL = "pip install 'mola_jax[ray]'"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One node of a study's graph."""

  key: str  # unique in the study: the run's workdir under the study, e.g. "cells/mola-T96-S24-seed2023"
  fn: Callable  # a module-level function (a Ray worker imports it by name)
  args: tuple = ()
  deps: tuple = ()  # keys of the cells whose results are passed after `args`, in this order
  kind: str = ""  # cells of one kind take about as long: the critical path's estimate for cells not yet measured


def add_settings(s: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The engine's study settings, added to a driver's."""
  s.engine = "local"  # local: the cells one after the other on this machine; ray: Ray tasks over a cluster
  # local: the cells run in a child process, a fresh one after this many cells (0: in this process). jaxlib 0.10's
  # XLA:CPU segfaults in a process that has compiled or loaded several hundred programs (seen at the 41st cell of
  # the default ETTh1 study); a fresh process keeps far from that, and a cell whose process died runs once more.
  s.cells_per_process = 8
  s.cell_resources = '{"CPU": 1}'  # what each cell asks Ray for (JSON): '{"GPU": 1}' puts one cell on each GPU
  s.ray_address = config_dict.placeholder(str)  # the cluster to join; unset: $RAY_ADDRESS, else a new local one
  return s


def check(settings) -> None:
  """Fail on a bad engine setting, or on engine=ray without Ray installed, before any work."""
  if settings.engine not in ENGINES:
    raise ConfigError(f"unknown study.engine {settings.engine!r}; use local or ray")
  if not isinstance(settings.cells_per_process, int) or settings.cells_per_process < 0:
    raise ConfigError(f"study.cells_per_process must be a whole number >= 0 (0: in this process), not "
                      f"{settings.cells_per_process!r}")  # fmt: skip
  if settings.engine == "ray":
    import jax

    if jax.process_count() > 1:
      raise ConfigError("study.engine=ray runs each cell as one process; start the driver without jax.distributed")
    resources(settings.cell_resources)
    _ray()


def resources(text: str) -> dict:
  """'{"CPU": 2, "GPU": 1}' -> Ray's task options (num_cpus, num_gpus, memory; other names as custom resources)."""
  try:
    asked = json.loads(text)
  except (TypeError, ValueError):
    asked = None
  ok = isinstance(asked, dict) and all(
    isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in asked.values()
  )
  if not ok or not asked:
    raise ConfigError(
      f"study.cell_resources {text!r}: give a JSON object of resource amounts, e.g. "
      """'{"CPU": 2}' or '{"GPU": 1}'"""
    )
  special = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
  out = {special[k]: v for k, v in asked.items() if k in special}
  custom = {k: v for k, v in asked.items() if k not in special}
  # A process keeps the devices its jax opened, and Ray points each cell at its own (CUDA_VISIBLE_DEVICES,
  # TPU_VISIBLE_CHIPS): a cell on an accelerator gets a fresh worker process (Ray's default for GPUs).
  fresh = {"max_calls": 1} if {"GPU", "TPU"} & {k for k, v in asked.items() if v} else {}
  return out | ({"resources": custom} if custom else {}) | fresh


def _ray():
  try:
    import ray
  except ImportError:
    raise ConfigError(f"study.engine=ray needs Ray, which is not installed; {INSTALL}") from None
  return ray


def run(cells: list[Cell], settings, workdir) -> dict:
  """Every cell's result, by key, run by the engine the settings name; the cells' measured seconds go to
  `workdir`/graph.json (also when a cell fails)."""
  check(settings)
  known = set()
  for cell in cells:
    if cell.key in known or not set(cell.deps) <= known:
      raise ValueError(f"cell {cell.key}: keys must be unique and every cell listed after its dependencies")
    known.add(cell.key)
  tracker = Tracker(cells, pathlib.Path(workdir))
  try:
    if settings.engine == "local":
      return _run_local(cells, tracker, settings.cells_per_process)
    return _run_ray(cells, settings, tracker)
  finally:
    tracker.close()


def call(key: str, cwd: str | None, fn: Callable, args: tuple, *deps) -> tuple:
  """A cell, where it runs: (its result, its seconds). `cwd`: the driver's directory (under Ray)."""
  if cwd is not None:
    print(f"[cell] {key}: start (pid {os.getpid()} on {socket.gethostname()})", flush=True)
    if not os.path.isdir(cwd):
      raise ConfigError(f"{socket.gethostname()} has no {cwd}, the driver's directory; run the study from a folder "
                        "every node sees at the same path")  # fmt: skip
    os.chdir(cwd)  # the study's relative paths (workdirs, data, init_from) mean what they mean to the driver
  t0 = time.perf_counter()
  value = fn(*args, *deps)
  return value, time.perf_counter() - t0


def _run_local(cells: list[Cell], tracker: Tracker, per_process: int) -> dict:
  """The cells in order, in child processes (`per_process` cells each), or in this one: per_process = 0, or
  several processes under jax.distributed, which must each run every cell together."""
  import jax

  here = per_process == 0 or jax.distributed.is_initialized()
  results, children = {}, None if here else Children(per_process)
  try:
    for cell in cells:
      tracker.event("start", cell.key)
      args = (cell.key, None, cell.fn, cell.args, *(results[d] for d in cell.deps))
      try:
        results[cell.key], seconds = call(*args) if here else children.call(*args)
      except BaseException:
        tracker.failed(cell.key)
        raise
      tracker.done(cell.key, seconds)
  finally:
    if children is not None:
      children.close()
  return results


class Children:
  """A process pool of one worker (the standard library's), replaced after `per_process` cells; a cell whose
  process dies (a crash, a kill) runs once more in a fresh one, where its runs resume from their checkpoints."""

  def __init__(self, per_process: int):
    self.per_process, self.pool, self.calls = per_process, None, 0

  def _renew(self) -> None:
    import concurrent.futures
    import multiprocessing

    self.close()
    # spawn: a child that starts clean (a fork would copy this process's jax runtime and its threads).
    context = multiprocessing.get_context("spawn")
    self.pool, self.calls = concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_quiet), 0

  def call(self, key: str, cwd, fn: Callable, args: tuple, *deps) -> tuple:
    from concurrent.futures.process import BrokenProcessPool

    fn = importable(fn)
    if self.pool is None or self.calls == self.per_process:
      self._renew()
    self.calls += 1
    try:
      return self.pool.submit(call, key, cwd, fn, args, *deps).result()
    except BrokenProcessPool:
      print(f"[study] the process of {key} died; running it again in a fresh one", flush=True)
      self._renew()
      self.calls += 1
      return self.pool.submit(call, key, cwd, fn, args, *deps).result()

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(wait=True, cancel_futures=True)


def _quiet() -> None:
  """A child's logging as a command's (cli.start): orbax logs every save at INFO."""
  from absl import logging

  logging.set_verbosity(logging.WARNING)


def _run_ray(cells: list[Cell], settings, tracker: Tracker) -> dict:
  ray = _ray()
  options = resources(settings.cell_resources)
  ray.init(address=settings.ray_address or None, runtime_env=runtime_env(), log_to_driver=False)
  try:
    tracker.slots = capacity(ray.cluster_resources(), json.loads(settings.cell_resources))
    tracker.say(f"{len(cells)} cells on Ray ({tracker.slots} at a time, each {settings.cell_resources}); the "
                "cells' output is in the Ray session's logs/worker-*.out")  # fmt: skip
    # Two returns: the result, which the dependent cells take (an ObjectRef), and the cell's seconds.
    task = ray.remote(num_returns=2, max_retries=MAX_RETRIES, retry_exceptions=False, **options)(call)
    refs, pending, cwd = {}, {}, os.getcwd()
    for cell in cells:
      fn = importable(cell.fn)
      value, seconds = task.options(name=cell.key).remote(cell.key, cwd, fn, cell.args, *(refs[d] for d in cell.deps))
      refs[cell.key], pending[seconds] = value, cell.key
    results = {}
    while pending:
      [ref], _ = ray.wait(list(pending), num_returns=1)
      key = pending.pop(ref)
      try:
        results[key], seconds = ray.get([refs[key], ref])
      except ray.exceptions.RayError as e:
        tracker.failed(key)
        for other in pending:
          ray.cancel(other, force=True)  # a cell killed here resumes when the study is rerun
        cause = getattr(e, "cause", None)
        if isinstance(cause, cli.USER_ERRORS + (Diverged,)):
          raise cause from None  # the user's one line, not the remote traceback
        raise
      tracker.done(key, seconds)
    return results
  finally:
    ray.shutdown()


def importable(fn: Callable) -> Callable:
  """`fn` as a worker can import it: a driver started as `python -m mola_jax.lab.reproduce` defines its cell
  functions in __main__, which no worker has; they are the same functions of the module under its own name."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  if fn.__module__ != "__main__" or spec is None:
    return fn
  return getattr(importlib.import_module(spec.name), fn.__qualname__)


def runtime_env() -> dict:
  """The driver's mola_jax (the folder it was imported from, first on PYTHONPATH) and PASSED_ENV, for every cell."""
  import mola_jax

  root = str(pathlib.Path(mola_jax.__file__).resolve().parents[1])
  env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
  return {"env_vars": env}


def capacity(cluster: dict, asked: dict) -> int:
  """How many cells asking for `asked` fit on a cluster with `cluster` resources at once."""
  asked = {"CPU": 1} | asked if "CPU" not in asked else asked  # Ray gives a task one CPU unless told otherwise
  fits = [int(cluster.get(name, 0) // amount) for name, amount in asked.items() if amount > 0]
  return max(min(fits, default=1), 0)


class Tracker:
  """The study's progress as its cells end: counts, elapsed time, the critical path, graph.json."""

  def __init__(self, cells: list[Cell], workdir: pathlib.Path):
    self.cells = {c.key: c for c in cells}
    self.deps = {c.key: tuple(c.deps) for c in cells}
    self.seconds, self.failures, self.t0 = {}, set(), time.perf_counter()
    self.workdir, self.slots = workdir, 1  # slots: how many cells run at once
    path = workdir / "graph.json"  # the seconds of earlier invocations: a cell reused now took its time then
    cells = json.loads(path.read_text())["cells"] if path.is_file() else {}
    self.before = {k: c.get("seconds") or 0.0 for k, c in cells.items()}

  def ready(self) -> int:
    """Cells not done whose dependencies are: running (as many as there are slots), or about to."""
    return sum(k not in self.seconds and all(d in self.seconds for d in deps) for k, deps in self.deps.items())

  def estimate(self) -> float | None:
    """The critical path: measured seconds where there are some, else the mean of the cells of the same kind
    measured so far, else of all (None until a cell is measured)."""
    if not self.seconds:
      return None
    mean = lambda xs: sum(xs) / len(xs)
    kinds = {}
    for key, s in self.seconds.items():
      kinds.setdefault(self.cells[key].kind, []).append(s)
    overall = mean(list(self.seconds.values()))
    guess = {k: self.seconds.get(k, mean(kinds.get(c.kind, [overall]))) for k, c in self.cells.items()}
    return graph.critical_path(guess, self.deps)[0]

  def event(self, what: str, key: str) -> None:
    done, failed = len(self.seconds), len(self.failures)
    running = 0 if failed else min(self.ready(), self.slots)
    waiting = len(self.cells) - done - failed - running
    path = self.estimate()
    path = f" · critical path ≈ {graph.duration(path)}" if path is not None else ""
    self.say(f"{what} {key} · {done}/{len(self.cells)} done, {running} running, {waiting} waiting, {failed} "
             f"failed{path}")  # fmt: skip

  def say(self, text: str) -> None:
    print(f"[study {graph.duration(time.perf_counter() - self.t0)}] {text}", flush=True)

  def done(self, key: str, seconds: float) -> None:
    self.seconds[key] = seconds
    self.event(f"done ({graph.duration(seconds)})", key)
    self.save()

  def failed(self, key: str) -> None:
    self.failures.add(key)
    self.event("FAILED", key)

  def save(self) -> dict:
    """graph.json, the seconds of earlier invocations added -> the seconds."""
    from mola_jax import distributed

    path, before = self.workdir / "graph.json", self.before
    seconds = {k: self.seconds[k] + before.get(k, 0.0) if k in self.seconds else before.get(k) for k in self.deps}
    cells = {k: {"deps": list(d), "kind": self.cells[k].kind, "seconds": seconds[k]} for k, d in self.deps.items()}
    if distributed.is_lead():
      self.workdir.mkdir(parents=True, exist_ok=True)
      workdir_lib.write_json(path, {"cells": cells})
    return seconds

  def close(self) -> None:
    """graph.json, and the study's summary."""
    seconds = self.save()
    if len(self.seconds) == len(self.cells):
      measured = {k: s or 0.0 for k, s in seconds.items()}
      longest, chain = graph.critical_path(measured, self.deps)
      self.say(f"{len(self.cells)} cells, {graph.duration(sum(measured.values()))} of cell time; critical path "
               f"{graph.duration(longest)}: {' → '.join(chain)}")  # fmt: skip
    sys.stdout.flush()
