"""GPU programs without a GPU: both stages of the synthetic config, AOT-compiled by XLA's GPU compiler (jax's CUDA
plugin, no driver) for one H100 and for a node of two under data parallelism (mola_jax/lab/aot.py), with the count
of what a step is made of and its floor (lab/hlo.py, lab/targets.py)."""

from __future__ import annotations

import csv
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO

# jax's CUDA plugin: installed in this environment, or (as .ci/run installs it, requirements-dev.txt says why) in a
# folder of its own that only this test's subprocess sees: pip install --no-deps --target DIR
# jax-cuda12-plugin==JAX_VERSION jax-cuda12-pjrt==JAX_VERSION, then MOLA_CUDA_PLUGIN_DIR=DIR.
PLUGIN_DIR = os.environ.get("MOLA_CUDA_PLUGIN_DIR", "")
# find_spec of a submodule raises where its namespace package is missing
IN_ENV = importlib.util.find_spec("jax_plugins") is not None and importlib.util.find_spec("jax_plugins.xla_cuda12")
HAVE_PLUGIN = bool(IN_ENV) or (PLUGIN_DIR != "" and (pathlib.Path(PLUGIN_DIR) / "jax_plugins" / "xla_cuda12").is_dir())
pytestmark = pytest.mark.skipif(
  not HAVE_PLUGIN,
  reason="jax's CUDA plugin is not installed, so no GPU program can be compiled here (.ci/run installs it on x86-64 "
  "Linux into MOLA_CUDA_PLUGIN_DIR; no wheel elsewhere)",
)


def test_both_stages_compile_for_an_h100_and_a_node_of_two(tmp_path):
  path = os.pathsep.join(filter(None, (PLUGIN_DIR, os.environ.get("PYTHONPATH"))))
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.lab.aot", "--config", "synthetic", "--study.topology=h100,h100:1x1x2",
     "--workdir", str(tmp_path)],
    cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = list(csv.DictReader((tmp_path / "aot.csv").open()))
  got = {(r["topology"], r["stage"], r["program"]) for r in rows}
  assert got == {(t, s, p) for t in ("h100", "h100:1x1x2") for s in ("pretrain", "adapt") for p in ("train", "eval")}
  for r in rows:
    assert r["device_kind"] == "NVIDIA H100 80GB HBM3" and r["fits"] == "True", r
    assert 0 < int(r["total_bytes"]) < int(r["hbm_bytes"]) == 80 << 30
    assert float(r["kernels_per_step"]) > 0 and float(r["hlo_flops_per_step"]) > 0 and float(r["floor_s"]) > 0
    assert r["steps_per_call"] == ("128" if r["program"] == "train" else "8")  # fit's chunks: a loop of steps
  by = {(r["topology"], r["stage"], r["program"]): r for r in rows}
  for stage in ("pretrain", "adapt"):
    one, two = by[("h100", stage, "train")], by[("h100:1x1x2", stage, "train")]
    assert (one["mesh"], two["mesh"]) == ("1x1", "2x1")
    # Data parallel: each GPU computes half the batch and the gradients are summed over the two (an all-reduce).
    ratio = float(two["hlo_flops_per_step"]) / float(one["hlo_flops_per_step"])
    assert 0.45 < ratio < 0.55, ratio
    assert float(one["collective_bytes_per_step"]) == 0 < float(two["collective_bytes_per_step"])
