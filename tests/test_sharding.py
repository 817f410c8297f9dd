"""Sharded training on a device mesh (mola_jax/sharding.py).

The mesh checks need 8 devices, and XLA_FLAGS must be set before jax is imported; other test files import jax
in this process first, so tests/sharding_check.py runs them in a subprocess (once per module) and reports JSON.
The quick checks of the rules and the config run here.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

from mola_jax import config_lib, sharding

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "param_specs.json"
TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, str(HERE / "sharding_check.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
    cwd=HERE.parent,
  )
  if proc.returncode:
    pytest.fail(f"sharding_check.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_mesh_of_the_issue_is_covered(report):
  assert report["devices"] == 8
  assert {case["mesh"] for case in report["equality"]} == {"8x1", "4x2", "2x4"}
  assert {case["rules"] for case in report["equality"]} == set(sharding.RULES)


def test_sharded_step_equals_single_device_step(report):
  """Two train steps (dropout on, one segment stopped) and one eval pass on the same batches: loss, updated
  params and optimizer state agree with the plain single-device step to 1e-5 on every (mesh, rules) case."""
  for case in report["equality"]:
    name = f"{case['mesh']}/{case['rules']}/{case['model']}"
    assert case["loss_diff"] <= TOL, name
    assert case["param_diff"] <= TOL, name
    assert case["opt_diff"] <= TOL, name
    if "eval_rel_diff" in case:
      assert case["eval_rel_diff"] <= TOL and case["eval_count"][0] == case["eval_count"][1] == 5, name
  # The tables that shard weights did shard some (segment, expert, tensor); the others shard activations only.
  sharded = {case["rules"]: case["sharded_params"] for case in report["equality"]}
  assert sharded["segment"] > 0 and sharded["expert"] > 0 and sharded["tensor"] > 0
  assert sharded["data_parallel"] == 0


def test_param_shardings_match_the_golden_file(report):
  """Regenerate with `python tests/sharding_check.py --write-golden` after a deliberate change, and review."""
  assert report["param_specs"] == json.loads(GOLDEN.read_text())


def test_checkpoint_saved_under_4x2_restores_under_8x1(report):
  ckpt = report["checkpoint"]
  assert ckpt["born_sharded"] and ckpt["init_diff"] <= TOL
  assert '["model"]' in ckpt["saved_specs"]  # the segment rules split the logits over `model`
  assert ckpt["restored_mesh"] == ["8x1"] and ckpt["shardings_match_target"]
  assert ckpt["max_diff"] == 0.0 and ckpt["loop"] == {"epoch": 1}
  assert ckpt["best_max_diff"] == 0.0 and ckpt["best_shardings_match"]


def test_the_eval_program_is_cached_per_layout(report):
  """A process that uses two meshes gets a program compiled for each: the cache keys on the layout."""
  two = report["two_meshes"]
  assert two["distinct_programs"] and two["cached_per_layout"] and two["meshes"] == ["8x1", "4x2"]
  assert two["sq_rel_diff"] <= TOL


def test_seeds_with_the_run_axis_on_devices_equal_serial_seeds(report):
  """Two seeds side by side, run r on device r (mola_jax/lab/side_by_side.py), give the serial seeds' results."""
  seeds = report["seeds_on_devices"]
  assert seeds["test_mse_diff"] <= TOL and seeds["val_mse_diff"] <= TOL, seeds
  assert all(epochs == [2, 2] for epochs in seeds["epochs"]), seeds


# ---------------------------------------------------------------------------------------------------------------
# In-process: no devices needed.


def layout(data: int, model: int, rules: str) -> sharding.Layout:
  mesh = types.SimpleNamespace(shape={"data": data, "model": model})  # spec() reads only the axis sizes
  return sharding.Layout(mesh, sharding.RULES[rules], rules)


def test_rules_replicate_what_does_not_divide():
  seg = layout(4, 2, "segment")
  assert seg.spec(("segment", "expert"), (4, 6)) == sharding.P("model")
  assert seg.spec(("segment", "expert"), (3, 6)) == sharding.P()  # K = 3 over 2 devices: replicated
  assert seg.spec(("segment", "batch", "token", "embed"), (1, 32, 11, 16)) == sharding.P(None, "data")  # prefix
  assert seg.spec(("unknown", "batch"), (8, 8)) == sharding.P(None, "data")  # unlisted names: replicated
  assert layout(8, 1, "segment").spec(("segment",), (4,)) == sharding.P()  # size-1 mesh axes are left out
  # Traffic: 862 variates + 4 time-feature tokens. Activations may be split unevenly (XLA pads 866 to 868 over 4
  # devices); arrays crossing the jit boundary may not.
  variate = layout(2, 4, "variate")
  assert variate.spec(sharding.activation_axes(4), (4, 8, 866, 512), even=False) == sharding.P(None, "data", "model")
  assert variate.spec(sharding.activation_axes(4), (4, 8, 866, 512)) == sharding.P(None, "data")
  assert variate.spec(sharding.activation_axes(4), (1, 8, 866, 512), even=False) == sharding.P(None, "data", "model")
  assert seg.spec(sharding.activation_axes(4), (1, 8, 16, 16), even=False) == sharding.P(None, "data")  # K' = 1
  assert seg.spec(sharding.activation_axes(4), (3, 8, 16, 16), even=False) == sharding.P("model", "data")
  expert = layout(4, 2, "expert")
  assert expert.spec(("segment", "expert"), (4, 6)) == sharding.P(None, "model")


def test_mesh_shape_resolves_the_rest():
  assert sharding.mesh_shape((-1, 1), ("data", "model"), 8) == (8, 1)
  assert sharding.mesh_shape((2, -1), ("data", "model"), 8) == (2, 4)
  for bad in [(3, -1), (-1, -1), (4, 4)]:
    with pytest.raises(config_lib.ConfigError):
      sharding.mesh_shape(bad, ("data", "model"), 8)
  with pytest.raises(config_lib.ConfigError):
    sharding.mesh_shape((8,), ("data",), 8)  # the model axis is required


def test_no_mesh_by_default():
  cfg = config_lib.default()
  assert cfg.mesh.shape is None and sharding.make_mesh(cfg.mesh) is None
  with sharding.use(None) as active:
    assert active is None and sharding.current() is None
  cfg.mesh.rules = "fsdp"
  with pytest.raises(config_lib.ConfigError, match="mesh.rules"):
    sharding.validate(cfg.mesh)


def test_the_scaling_study_runs_on_a_mesh(report):
  rows = report["scaling"]
  assert [row["mesh"] for row in rows] == ["8x1", "4x2"]
  assert all(row["flops_per_step"] > 0 and row["bytes_per_device"] > 0 and row["step_seconds"] > 0 for row in rows)
  assert all(0 < row["host_ms_per_step"] < row["step_seconds"] * 1e3 for row in rows)  # the host keeps ahead
