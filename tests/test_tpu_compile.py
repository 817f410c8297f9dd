"""TPU programs without a TPU: both stages of the synthetic config, AOT-compiled for a v5e-4 slice (v5e:2x2) by
XLA's TPU compiler from libtpu, under data parallelism and the segment table (mola_jax/lab/aot.py)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed, so no TPU program can be compiled here (requirements-dev.txt installs it on "
  "x86-64 Linux: pip install 'jax[tpu]')",
)


def test_both_stages_compile_for_a_v5e_slice_and_fit_its_memory(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "mola_jax.lab.aot", "--config", "synthetic", "--study.topology=v5e:2x2",
     "--study.model_axis=2", "--study.rules=data_parallel,segment", "--workdir", str(tmp_path)],
    cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = list(csv.DictReader((tmp_path / "aot.csv").open()))
  got = {(r["rules"], r["stage"], r["program"]) for r in rows}
  assert got == {
    (t, s, p) for t in ("data_parallel", "segment") for s in ("pretrain", "adapt") for p in ("train", "eval")
  }
  for r in rows:
    assert r["device_kind"] == "TPU v5 lite" and r["chips"] == "4" and r["fits"] == "True", r
    assert 0 < int(r["total_bytes"]) < int(r["hbm_bytes"]) == 16 << 30
    assert float(r["flops_per_chip"]) > 0 and float(r["compile_seconds"]) > 0
  meshes = {r["rules"]: r["mesh"] for r in rows}
  assert meshes == {"data_parallel": "4x1", "segment": "2x2"}
  # Data parallel splits stage 1's batch four ways, the segment table's 2-way data axis only two (its model axis
  # has nothing to split in stage 1, K = 1, so those chips repeat the work): a chip there does about twice as much.
  flops = {(r["rules"], r["stage"], r["program"]): float(r["flops_per_chip"]) for r in rows}
  ratio = flops[("segment", "pretrain", "train")] / flops[("data_parallel", "pretrain", "train")]
  assert 1.6 < ratio < 2.4


def test_seeds_side_by_side_put_one_run_on_each_chip(tmp_path):
  """--study.runs=8 on a v5e-8: seeds_in_one_program's run axis across the chips. Each chip holds and computes one
  run, as one run alone on one chip does, so the per-chip memory and FLOPs of the 8-run program are one run's."""
  rows = {}
  for runs in (8, 1):
    proc = subprocess.run(
      [sys.executable, "-m", "mola_jax.lab.aot", "--config", "synthetic", "--config.method=mtf",
       "--study.topology=v5e:2x4", f"--study.runs={runs}", "--workdir", str(tmp_path / f"runs{runs}")],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows[runs] = {r["program"]: r for r in csv.DictReader((tmp_path / f"runs{runs}" / "aot.csv").open())}
  for program in ("train", "eval"):
    many, one = rows[8][program], rows[1][program]
    assert many["rules"] == "runs" and many["mesh"] == "runs=8" and many["chips"] == "8", many
    assert float(many["flops_per_chip"]) == pytest.approx(float(one["flops_per_chip"]), rel=0.05)
    # One run's state and batches on a chip, not eight (the 8-run program keeps its outputs apart too); the
    # compiler's temporaries of the two programs differ by a few MiB, far from the 8x of runs stacked on a chip.
    for part in ("argument_bytes", "output_bytes"):
      assert int(many[part]) == pytest.approx(int(one[part]), rel=0.1), part
    assert int(many["total_bytes"]) < 2 * int(one["total_bytes"])
