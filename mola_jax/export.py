"""Serialise a trained forecaster with `jax.export`: one file that jax alone can load and call, with the adapters
merged into fixed per-segment weight deltas (techniques that change no weights, IA3 and bottleneck adapters, keep
their banks) and the run's training scaler built in.

    python -m mola_jax.export --workdir runs/etth1 --out etth1.jaxexport

    exported = jax.export.deserialize(open("etth1.jaxexport", "rb").read())
    forecast = exported.call(x, x_mark, y_mark)   # [B, T, D] in the data's original units

Inputs, with a symbolic batch size B: x [B, L, D] (the last L rows, original units, channels in training order),
x_mark [B, L, F] and y_mark [B, T, F] (time features of the look-back rows and of the T future steps). The
sidecar FILE.json names the channels, L, T, the time features and their formulas (docs/protocol.md §5; mola_jax's
data.time_features computes them), and the intervals' multipliers and scale floor (mola_jax/evaluation.py;
original units).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mola_jax import cli, plan, runtime, sharding, steps, workdir
from mola_jax.data import sources
from mola_jax.inference import Run, load_run
from mola_jax.models import adapters, techniques


def export_run(run: Run) -> jax.export.Exported:
  """The run's forecaster as a jax.export.Exported: (x, x_mark, y_mark) -> forecast, original units."""
  model = run.model
  layers = adapters.adapted_layers(model)
  if run.stage == plan.ADAPT and layers and all(techniques.has_delta(layer.adapter) for layer in layers.values()):
    adapters.bake(model, jax.device_get(adapters.deltas(model)))  # fixed per-segment deltas instead of the banks
  graphdef, states = steps.eval_states(model, run.stage)
  mean, std = (np.asarray(run.scaler[k], np.float32) for k in ("mean", "std"))

  def forecaster(x, x_mark, y_mark):
    batch = {"x": (x - mean) / std, "x_mark": x_mark, "y_mark": y_mark}
    return steps.eval_forward(graphdef, states, batch, segments=run.segments, groups=1) * std + mean

  b = jax.export.symbolic_shape("b")[0]
  seq_len, d, f = run.cfg.data.seq_len, len(run.columns), int(run.scaler["marks"])
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((b, seq_len, d), (b, seq_len, f), (b, run.horizon, f))]
  with runtime.matmul_precision(run.cfg.matmul_precision):  # the precision the run trained with
    return jax.export.export(jax.jit(forecaster))(*shapes)


def describe(run: Run) -> dict:
  """The sidecar: what the inputs are and how to make them."""
  names = [fn.__name__.lstrip("_") for fn in sources.TIME_FEATURES[run.scaler["freq"].lower().lstrip("0123456789")]]
  out = {
    "columns": run.columns,
    "seq_len": run.cfg.data.seq_len,
    "horizon": run.horizon,
    "freq": run.scaler["freq"],
    "inputs": {
      "x": "[B, seq_len, channels], original units",
      "x_mark": "[B, seq_len, features]",
      "y_mark": "[B, horizon, features]",
    },
    "time_features": names,
    "time_feature_formulas": "each in [-0.5, 0.5]: hour/23, weekday/6, (day-1)/30, (day_of_year-1)/365, "
    "(minute/59), (second/59), (month-1)/11, (iso_week-1)/52, minus 0.5 (TSLib timeF)",
    "output": "[B, horizon, channels], original units",
  }
  if run.conformal:
    out["intervals"] = {
      "band": "forecast +- multiplier[t][d] * max(std of the look-back x[:, :, d], scale_floor[d]), original units",
      "scale_floor": (run.conformal["scale_floor"] * np.asarray(run.scaler["std"])).tolist(),  # [D]
      "multiplier": {
        f"{level:g}": q for level, q in zip(run.conformal["levels"], run.conformal["multiplier"], strict=True)
      },  # level -> [T][D]
    }
  return out  # fmt: skip


def main(argv) -> None:
  cli.start(argv)  # under MOLA_DISTRIBUTED=1 every process traces the same program; process 0 writes
  f = flags.FLAGS
  with cli.user_errors():
    run = load_run(f.workdir)
  if not sharding.is_lead():
    return
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  exported = export_run(run)
  with workdir.atomic(out) as tmp:
    tmp.write_bytes(exported.serialize())
  workdir.write_json(out.with_name(out.name + ".json"), describe(run))
  print(f"exported {run.stage} forecaster (T={run.horizon}, {len(run.columns)} channels) -> {out} and {out}.json")


def command() -> None:
  """`mola-export` / `python -m mola_jax.export`."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained run", required=True)
  flags.DEFINE_string("out", None, "The serialised forecaster's file", required=True)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  command()
