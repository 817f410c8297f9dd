"""What the study tables and the report tools share, with numpy and scipy only (a report prints a table from
finished runs and needs no jax): the Student-t interval of a mean, and where a study's runs live."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
from scipy import stats


def ci95(values) -> float:
  """Half-width of the two-sided 95% Student-t interval of the mean; 0 for a single value."""
  v = np.asarray(values, np.float64)
  if v.size < 2:
    return 0.0
  return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def settings(study: pathlib.Path) -> dict:
  """A study's own settings (study.json); a study made before they had a file of their own kept them in its
  config.json, under "reproduce"."""
  path = pathlib.Path(study)
  if (path / "study.json").is_file():
    return json.loads((path / "study.json").read_text())
  return json.loads((path / "config.json").read_text()).get("reproduce", {})


def roots(study: pathlib.Path) -> tuple:
  """Where a study's runs may live: the study, then the study it reused (reuse_from)."""
  return (pathlib.Path(study), settings(study).get("reuse_from"))


def run_dir(where, name: str) -> pathlib.Path | None:
  """Where run `name` (e.g. "cells/mola-T96-S24-seed2023") lives as a study used it: the first of `where` (the
  study, then the study it reused) that finished it; None if none did."""
  for root in filter(None, where):
    if (pathlib.Path(root) / name / "results.json").is_file():
      return pathlib.Path(root) / name
  return None


def run_result(where, name: str) -> dict | None:
  """results.json of run `name` as the study used it (see run_dir)."""
  path = run_dir(where, name)
  return json.loads((path / "results.json").read_text()) if path else None


def table(study: pathlib.Path) -> list[dict]:
  """A reproduction study's table.csv, horizons and segment lengths as integers."""
  with open(pathlib.Path(study) / "table.csv") as f:
    return [dict(r, horizon=int(r["horizon"]), segment_len=int(r["segment_len"])) for r in csv.DictReader(f)]
