"""The floor tables and projections (mola_jax/lab/report/floors.py, the floor column of launch/device_check.sh's
table) on made-up lab/aot.py rows with known answers."""

import pytest

from mola_jax.lab.report import device_check, floors


def row(stage, program, *, topology="h100", fits="True", floor_s=1e-3, kernels=100, outside=10, launch_s=2e-4):
  return {
    "dataset": "etth1", "backbone": "itransformer", "method": "mola", "horizon": "96", "topology": topology,
    "rules": "data_parallel", "stage": stage, "program": program, "device_kind": "NVIDIA H100 80GB HBM3",
    "mesh": "1x1", "total_bytes": str(3 << 20), "fits": fits, "compile_seconds": "2.5", "xla_options": "",
    "kernels_per_step": str(kernels), "kernels_per_call_outside": str(outside), "hlo_flops_per_step": "2e9",
    "bytes_per_step": "4e6", "floor_s": str(floor_s), "launch_s": str(launch_s), "compute_s": "1e-5",
    "memory_s": "2e-5", "bound": "launch", "steps_per_call": "128" if program == "train" else "8",
  }  # fmt: skip


def test_a_stage_costs_its_epochs_of_steps_and_validations_plus_one_validation():
  p = {("adapt", "train"): row("adapt", "train"), ("adapt", "eval"): row("adapt", "eval", floor_s=2e-3, outside=0)}
  counts = {"train": 1000, "val": 300, "test": 300}
  # 31 steps of 1 ms and one chunk's 10 outside kernels at 2 us (launch_s / kernels_per_step); 2 eval batches of 2 ms
  train, val = 31e-3 + 10 * 2e-6, 2 * 2e-3
  got = floors.stage_seconds(p, "adapt", 3, counts, batch=32, eval_batch=256)
  assert got == pytest.approx(3 * (train + val) + val)
  assert floors.test_seconds(p, "adapt", counts, eval_batch=256) == pytest.approx(2 * 2e-3)


def test_the_step_table_has_a_line_per_setting_and_says_what_does_not_fit():
  rows = [row(s, p) for s, p in floors.STAGES] + [
    row(s, p, topology="h100:1x1x8", fits="False" if p == "eval" else "True") for s, p in floors.STAGES
  ]
  lines = floors.step_table(rows).splitlines()
  assert len(lines) == 2 + 2
  assert "(h100)" in lines[2] and "| yes |" in lines[2] and "100 / 100" in lines[2]
  assert "(h100:1x1x8)" in lines[3] and "**no**" in lines[3]
  assert len(floors.bound_table(rows).splitlines()) == 2 + 2


def test_the_device_check_puts_the_floor_beside_the_measured_step():
  text = device_check.floor_text(row("pretrain", "train", floor_s=0.5e-3), step_ms=2.0)
  assert "floor 0.500 ms" in text and "4.0x the floor" in text and "launch-bound" in text
  assert "no aot row" in device_check.floor_text(None, step_ms=2.0)
  assert "has no chip figures" in device_check.floor_text(row("pretrain", "train") | {"floor_s": ""}, step_ms=2.0)
