"""The sharding checks, run in a fresh process on 8 simulated CPU devices (tests/test_sharding.py runs it).

    python tests/sharding_check.py                  # prints one JSON report on stdout
    python tests/sharding_check.py --write-golden   # rewrites tests/golden/param_specs.json (review the diff)

XLA_FLAGS must be set before jax is imported, and other test files import jax in the pytest process, hence
a subprocess. The report holds, per (mesh, rules, model) case, the largest absolute differences between a
sharded step and the plain single-device step on the same batches; the parameter PartitionSpec tree per
rules table; and the result of saving a sharded training state under one mesh and restoring it under another.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mola_jax import checkpointing, config_lib, plan, sharding, steps  # noqa: E402
from mola_jax.models import build  # noqa: E402
from mola_jax.state import TrainState  # noqa: E402

GOLDEN = REPO / "tests" / "golden" / "param_specs.json"
CHANNELS, MARKS, SEQ_LEN, SEG_LEN, SEGMENTS, BATCH = 12, 4, 24, 6, 4, 8  # 16 tokens; K = 4; T = 24
ACTIVE = np.array([True, True, False, True])  # segment 2 has stopped: its rows must stay put

# (mesh shape, rules, model): model = "mola" | "lora" (stage 2, K = 4) | "pretrain" (stage 1, one segment).
# Every rules table once, on each of the three meshes.
CASES = [
  ((8, 1), "data_parallel", "pretrain"),
  ((4, 2), "segment", "mola"),
  ((4, 2), "expert", "mola"),
  ((2, 4), "variate", "mola"),
  ((2, 4), "tensor", "lora"),
]


def tiny_cfg(method: str):
  cfg = config_lib.default()
  cfg.method = "mola" if method == "pretrain" else method
  cfg.model.itransformer.update(d_model=16, d_ff=32, n_heads=4, e_layers=1)
  cfg.data.seq_len = SEQ_LEN
  cfg.technique[cfg.method].update(
    **{k: v for k, v in {"num_experts": 4, "rank": 2}.items() if k in cfg.technique[cfg.method]}
  )
  return cfg


def make_model(method: str) -> nnx.Module:
  segments = 0 if method == "pretrain" else SEGMENTS
  return build(
    plan.model_spec(tiny_cfg(method)),
    channels=CHANNELS,
    marks=MARKS,
    pred_len=SEG_LEN,
    segments=segments,
    rngs=nnx.Rngs(0),
  )


def make_tx(method: str):
  """Stage 2: the project's Adam. Stage 1: SGD, because the backbone has parameters whose true gradient is
  exactly zero (the attention key bias: softmax ignores a shift of all scores), and Adam's normalisation
  turns the ~1e-9 rounding noise of such a gradient into an update of order lr, differently on every layout."""
  return optax.sgd(0.1) if method == "pretrain" else steps.make_tx(steps.lr_schedule(1e-2, 10))


def batches(method: str, n: int = 2) -> list[dict]:
  horizon = SEG_LEN if method == "pretrain" else SEG_LEN * SEGMENTS
  rng = np.random.default_rng(1)
  return [
    {
      "x": rng.standard_normal((BATCH, SEQ_LEN, CHANNELS), np.float32),
      "x_mark": rng.uniform(-0.5, 0.5, (BATCH, SEQ_LEN, MARKS)).astype(np.float32),
      "y": rng.standard_normal((BATCH, horizon, CHANNELS), np.float32),
    }
    for _ in range(n)
  ]


def mesh(shape) -> jax.sharding.Mesh:
  return jax.make_mesh(shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def train_state(model: nnx.Module, stage: str, tx) -> TrainState:
  return TrainState.create(model, stage, tx, jax.random.key_data(jax.random.key(7)))


def train_step(k: int, layout):
  """The core's train step jitted under `layout` (its output state constrained to the layout's shardings)."""
  return sharding.jit(
    steps.train_step_fn(steps.train_forecast(), steps.StepOptions(k)), donate_argnums=0, layout=layout
  )


def placed(batch: dict, layout) -> dict:
  return sharding.global_batch(batch, layout) if layout else batch


def host(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run(method: str, start, layout=None, evaluate: bool = True) -> dict:
  """Two train steps (and one eval pass) from the host state `start`: on one device without `layout`; else
  with the state placed by the layout's shardings and the steps jitted with explicit shardings."""
  stage = "pretrain" if method == "pretrain" else "adapt"
  k = 1 if method == "pretrain" else SEGMENTS
  active = steps.training_segments([True] if k == 1 else ACTIVE, skip_stopped=False)
  tx = make_tx(method)
  graphdef, pure = start
  with sharding.use(layout.mesh if layout else None, layout.rules if layout else "data_parallel"):
    model = nnx.merge(graphdef, jax.tree.map(jnp.array, pure))  # fresh device arrays: the steps donate them
    sharding.place_model(model)
    state, step = train_state(model, stage, tx), train_step(k, layout)
    losses = []
    for batch in batches(method):  # dropout is on: its masks must not depend on the sharding either
      state, loss = step(state, placed(batch, layout), sharding.replicate(active))
      losses.append(float(loss))
    out = {
      "loss": np.array(losses),
      "params": host(state.params),
      "opt": host(state.opt),
      "specs": [spec_list(x.sharding.spec) for x in jax.tree.leaves((state.params, state.frozen))] if layout else None,
    }
    if evaluate:
      eval_step = sharding.jit(steps.eval_step_fn(steps.StepOptions(k)), layout=layout)
      eval_batch = dict(batches(method, 1)[0], mask=np.arange(BATCH) < BATCH - 3)  # 3 padded rows
      acc = eval_step(state.forecaster(), placed(eval_batch, layout))
      out.update(eval=[np.asarray(acc["sq"]), np.asarray(acc["abs"])], count=int(acc["count"]))
  return out


def max_diff(a, b) -> float:
  return max((float(np.max(np.abs(x - y))) if np.size(x) else 0.0 for x, y in zip(a, b, strict=True)), default=0.0)


def max_rel_diff(a, b) -> float:
  return max(float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-6))) for x, y in zip(a, b, strict=True))


def equality() -> list[dict]:
  starts = {}
  for method in sorted({c[2] for c in CASES}):
    graphdef, state = nnx.split(make_model(method))
    starts[method] = (graphdef, jax.tree.map(np.asarray, state))
  reference = {m: run(m, starts[m]) for m in starts}
  out = []
  for i, (shape, rules, method) in enumerate(CASES):
    layout = sharding.Layout(mesh(shape), sharding.RULES[rules], rules)
    got, want = run(method, starts[method], layout, evaluate=i < 2), reference[method]
    out.append(
      {
        "mesh": "x".join(map(str, shape)),
        "rules": rules,
        "model": method,
        "loss_diff": max_diff([got["loss"]], [want["loss"]]),
        "param_diff": max_diff(got["params"], want["params"]),
        "opt_diff": max_diff(got["opt"], want["opt"]),
        "sharded_params": sum(bool(spec) for spec in got["specs"]),
        "loss": got["loss"].tolist(),
      }
    )
    if "eval" in got:
      out[-1].update(eval_rel_diff=max_rel_diff(got["eval"], want["eval"]), eval_count=[got["count"], want["count"]])
  return out


def spec_list(spec) -> list:
  """A PartitionSpec as JSON, independent of how a jax version prints it: [] replicated, ["model"], [null, "model"]."""
  return [list(s) if isinstance(s, tuple) else s for s in spec]


def param_specs() -> dict:
  """rules -> {variable path: PartitionSpec as a list} of the tiny stage-2 MoLA model under the (4, 2) mesh."""
  model = make_model("mola")
  out = {}
  for rules in sharding.RULES:
    layout = sharding.Layout(mesh((4, 2)), sharding.RULES[rules], rules)
    flat = jax.tree_util.tree_flatten_with_path(
      layout.state_shardings(nnx.state(model)), is_leaf=lambda x: isinstance(x, nnx.Variable)
    )[0]
    out[rules] = {
      "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path): spec_list(jax.tree.leaves(v)[0].spec)
      for path, v in flat
    }
  return out


def checkpoint_round_trip() -> dict:
  """Save a trained stage-2 state under (4, 2) with the segment rules; restore it under (8, 1), data parallel,
  with the resume path (orbax restores into the target's shardings) and the best-state path."""
  tx = steps.make_tx(steps.lr_schedule(1e-2, 10))
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    with sharding.use(mesh((4, 2)), "segment") as layout:
      model = sharding.create(lambda: make_model("mola"))  # born sharded: built by one jit with out_shardings
      born = nnx.state(model)
      born_sharded = all(
        x.sharding == s
        for x, s in zip(jax.tree.leaves(born), jax.tree.leaves(layout.state_shardings(born)), strict=True)
      )
      init_diff = max_diff(host(born), host(nnx.state(make_model("mola"))))  # vs the eager single-device build
      state, step = train_state(model, "adapt", tx), train_step(SEGMENTS, layout)
      segs = sharding.replicate(steps.training_segments(ACTIVE, skip_stopped=False))
      state, _ = step(state, placed(batches("mola")[0], layout), segs)
      saved_specs = sorted({json.dumps(spec_list(x.sharding.spec)) for x in jax.tree.leaves(state)})
      saved = [np.asarray(x) for x in jax.tree.leaves(state)]
      with checkpointing.resume_manager(tmp / "resume") as mngr:
        checkpointing.save_resume(mngr, 1, state, {"epoch": 1})
        mngr.wait_until_finished()
      best = state.model()
      with checkpointing.manager(tmp / "best") as mngr:
        checkpointing.save(mngr, 1, nnx.state(best), {"stage": "adapt"})
        mngr.wait_until_finished()
      best_saved = [np.asarray(x) for x in jax.tree.leaves(nnx.state(best))]

    with sharding.use(mesh((8, 1)), "data_parallel") as layout:
      model = sharding.create(lambda: make_model("mola"))
      target = train_state(model, "adapt", tx)
      with checkpointing.resume_manager(tmp / "resume") as mngr:
        restored, loop = checkpointing.restore_resume(mngr, target)
      want = jax.tree.leaves(layout.state_shardings(target))
      got = jax.tree.leaves(restored)
      checkpointing.restore_into(model, tmp / "best")
      sharding.place_model(model)
      best_restored = jax.tree.leaves(nnx.state(model))
      best_ok = all(
        x.sharding == s
        for x, s in zip(best_restored, jax.tree.leaves(layout.state_shardings(nnx.state(model))), strict=True)
      )
  return {
    "born_sharded": born_sharded,
    "init_diff": init_diff,
    "saved_specs": saved_specs,
    "restored_specs": sorted({json.dumps(spec_list(x.sharding.spec)) for x in got}),
    "restored_mesh": sorted({sharding.mesh_name(x.sharding.mesh) for x in got}),
    "shardings_match_target": all(x.sharding == s for x, s in zip(got, want, strict=True)),
    "max_diff": max_diff([np.asarray(x) for x in got], saved),
    "loop": loop,
    "best_max_diff": max_diff([np.asarray(x) for x in best_restored], best_saved),
    "best_shardings_match": best_ok,
  }


def two_meshes() -> dict:
  """The eval program is cached per layout: the same settings under two meshes give two programs, each computing on
  its own mesh, with the same sums."""
  opts, rng = steps.StepOptions(SEGMENTS), np.random.default_rng(3)
  rows = {"values": rng.standard_normal((60, CHANNELS), np.float32), "marks": np.zeros((60, MARKS), np.float32),
          "start": np.int32(0)}  # fmt: skip
  idx, mask = np.arange(8 * 8, dtype=np.int32).reshape(8, 8) % 20, np.ones((8, 8), bool)
  out = {}
  for shape, rules in (((8, 1), "data_parallel"), ((4, 2), "segment")):
    with sharding.use(mesh(shape), rules) as layout:
      state = TrainState.create(sharding.create(lambda: make_model("mola")), "adapt")
      program = steps.make_eval_chunk(opts, seq_len=SEQ_LEN, pred_len=SEG_LEN * SEGMENTS, layout=layout)
      again = steps.make_eval_chunk(opts, seq_len=SEQ_LEN, pred_len=SEG_LEN * SEGMENTS, layout=sharding.current())
      sums = program(state, *sharding.replicate((rows, idx, mask, np.ones(8, bool))))
      out[rules] = {"program": program, "same_object": again is program, "sq": np.asarray(sums["sq"]),
                    "mesh": sharding.mesh_name(sums["sq"].sharding.mesh)}  # fmt: skip
  a, b = out["data_parallel"], out["segment"]
  return {
    "distinct_programs": a["program"] is not b["program"],
    "cached_per_layout": a["same_object"] and b["same_object"],
    "meshes": [a["mesh"], b["mesh"]],
    "sq_rel_diff": max_rel_diff([a["sq"]], [b["sq"]]),
  }


def seeds_on_devices() -> dict:
  """Seeds in one program with the run axis on the devices (run r on device r) give what serial seeds give."""
  from mola_jax.lab import side_by_side
  from mola_jax.train import train_and_evaluate

  cfg = tiny_cfg("mola")
  cfg.data.name, cfg.data.synthetic_rows, cfg.data.synthetic_channels = "synthetic", 600, CHANNELS
  cfg.horizon, cfg.segment_len, cfg.pretrain.epochs, cfg.adapt.epochs = SEG_LEN * SEGMENTS, SEG_LEN, 2, 2
  cfg.intervals = ()
  cfgs = [config_lib.with_values(cfg, {"seed": seed}) for seed in (1, 2)]
  with tempfile.TemporaryDirectory() as tmp:
    serial = [train_and_evaluate(c, f"{tmp}/serial{i}") for i, c in enumerate(cfgs)]
    together = side_by_side.train_runs(cfgs, [f"{tmp}/together{i}" for i in range(2)], on_devices=True)
  return {
    "test_mse_diff": max(abs(a["test_mse"] - b["test_mse"]) for a, b in zip(serial, together, strict=True)),
    "val_mse_diff": max(abs(a["val_mse"] - b["val_mse"]) for a, b in zip(serial, together, strict=True)),
    "epochs": [[r["stages"][s]["epochs"] for s in ("pretrain", "adapt")] for r in together],
  }


def scaling_study() -> list[dict]:
  """The scaling study's own path (mola_jax.lab.scaling.run) on two meshes of a tiny synthetic problem: it compiles,
  runs and reports memory, FLOPs and the host's time per step."""
  from mola_jax.lab import scaling

  cfg = tiny_cfg("mola")
  cfg.data.name, cfg.data.synthetic_rows, cfg.data.synthetic_channels = "synthetic", 600, CHANNELS
  cfg.horizon, cfg.segment_len = SEG_LEN * SEGMENTS, SEG_LEN
  with tempfile.TemporaryDirectory() as tmp:
    rows = scaling.run(cfg, tmp, meshes="8x1,4x2", batches="8", rules="segment", stage="adapt", warmup=1, timed=1)
  return [
    {k: row[k] for k in ("mesh", "devices", "flops_per_step", "bytes_per_device", "step_seconds", "host_ms_per_step")}
    for row in rows
  ]


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  if "--write-golden" in sys.argv:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(param_specs(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return
  report = {
    "devices": jax.device_count(),
    "jax": jax.__version__,
    "param_specs": param_specs(),
    "checkpoint": checkpoint_round_trip(),
    "equality": equality(),
    "two_meshes": two_meshes(),
    "seeds_on_devices": seeds_on_devices(),
    "scaling": scaling_study(),
  }
  print(json.dumps(report))


if __name__ == "__main__":
  main()
