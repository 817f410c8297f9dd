"""A study's task graph and what it costs: the total cell time, the critical path (the longest chain of dependent
cells: no number of workers finishes the study sooner) and the wall time N workers would need, from the cells'
measured seconds in the study's graph.json (written by mola_jax/lab/engine.py).

    python -m mola_jax.lab.report.graph runs/repro_etth1 [MORE_STUDIES...]   # a markdown table

The wall time with N workers is a greedy list schedule of the graph: whenever a worker is free it takes, of the
cells whose dependencies are done, the one with the longest chain of cells still behind it (ties: the study's
order). A cell's seconds are what it took where it ran, summed over the invocations of the study (a cell resumed
after an interruption counts the part it ran after it; one reused from another study counts what finding it took).
"""

from __future__ import annotations

import graphlib
import heapq
import json
import pathlib
import sys

WORKERS = (1, 4, 16, 64)


def order(deps: dict) -> list:
  """The cells (keys of `deps`: cell -> the cells it waits for) with every cell after its dependencies; ties keep
  the order of `deps`."""
  sorter = graphlib.TopologicalSorter({key: deps[key] for key in deps})
  sorter.prepare()
  rank, out = {key: i for i, key in enumerate(deps)}, []
  while sorter.is_active():
    ready = sorted(sorter.get_ready(), key=rank.get)
    out += ready
    sorter.done(*ready)
  return out


def tails(seconds: dict, deps: dict) -> dict:
  """Each cell's seconds plus the longest chain of cells that wait on it (its bottom level)."""
  after = {key: [] for key in deps}
  for key, before in deps.items():
    for dep in before:
      after[dep].append(key)
  out = {}
  for key in reversed(order(deps)):
    out[key] = seconds[key] + max((out[k] for k in after[key]), default=0.0)
  return out


def critical_path(seconds: dict, deps: dict) -> tuple[float, list]:
  """(the seconds of the longest chain of dependent cells, its cells from first to last)."""
  if not deps:
    return 0.0, []
  finish, via = {}, {}
  for key in order(deps):
    start = max(deps[key], key=lambda d: finish[d], default=None)
    via[key] = start
    finish[key] = (finish[start] if start is not None else 0.0) + seconds[key]
  last = max(finish, key=finish.get)
  chain = [last]
  while via[chain[-1]] is not None:
    chain.append(via[chain[-1]])
  return finish[last], chain[::-1]


def list_schedule(seconds: dict, deps: dict, workers: int) -> float:
  """The wall time of the graph on `workers` identical workers under the greedy list schedule (module doc)."""
  priority, rank = tails(seconds, deps), {key: i for i, key in enumerate(deps)}
  waiting = {key: len(set(before)) for key, before in deps.items()}
  after = {key: [] for key in deps}
  for key, before in deps.items():
    for dep in set(before):
      after[dep].append(key)
  ready = [(-priority[k], rank[k], k) for k, n in waiting.items() if n == 0]
  heapq.heapify(ready)
  running, now = [], 0.0  # running: (finish time, rank, cell)
  while ready or running:
    while ready and len(running) < workers:
      _, i, key = heapq.heappop(ready)
      heapq.heappush(running, (now + seconds[key], i, key))
    now, _, key = heapq.heappop(running)
    for nxt in after[key]:
      waiting[nxt] -= 1
      if waiting[nxt] == 0:
        heapq.heappush(ready, (-priority[nxt], rank[nxt], nxt))
  return now


def load(study: pathlib.Path) -> tuple[dict, dict]:
  """(seconds, deps) of a study's graph.json; a cell never measured counts 0 s."""
  cells = json.loads((pathlib.Path(study) / "graph.json").read_text())["cells"]
  return {k: c["seconds"] or 0.0 for k, c in cells.items()}, {k: list(c["deps"]) for k, c in cells.items()}


def duration(seconds: float) -> str:
  """1h02m, 12m05s, 42s."""
  s = round(seconds)
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def markdown(studies: list) -> str:
  """One row per study: its cells, total cell time, critical path, wall time with N workers, and the cells on
  the critical path."""
  head = " | ".join(f"{n} worker{'s' * (n > 1)}" for n in WORKERS)
  lines = [f"| study | cells | total cell time | critical path | {head} | the critical path |",
           "|---|---|---|---|" + "---|" * len(WORKERS) + "---|"]  # fmt: skip
  for study in studies:
    seconds, deps = load(study)
    longest, chain = critical_path(seconds, deps)
    walls = " | ".join(duration(list_schedule(seconds, deps, n)) for n in WORKERS)
    path = " → ".join(f"{k} ({duration(seconds[k])})" for k in chain)
    lines.append(
      f"| {pathlib.Path(study).name} | {len(deps)} | {duration(sum(seconds.values()))} | {duration(longest)} | "
      f"{walls} | {path} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  from mola_jax import cli

  if not argv:
    cli.fail("usage: python -m mola_jax.lab.report.graph STUDY_DIR [STUDY_DIR ...]")
  missing = [d for d in argv if not (pathlib.Path(d) / "graph.json").is_file()]
  if missing:
    cli.fail(f"no graph.json in {', '.join(missing)}; run the study (mola_jax.lab.reproduce or sweep) first")
  print(markdown(argv), end="")


if __name__ == "__main__":
  main(sys.argv[1:])
