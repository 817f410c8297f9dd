"""Serialise a trained forecaster with `jax.export`: one file that jax alone can load and call, with the adapters
merged into fixed per-segment weight deltas (techniques that change no weights, IA3 and bottleneck adapters, keep
their banks) and the run's training scaler built in.

    python -m mola_jax.export --workdir runs/etth1 --out etth1.jaxexport

    exported = jax.export.deserialize(open("etth1.jaxexport", "rb").read())
    forecast = exported.call(x, x_mark, y_mark)   # [B, T, D] in the data's original units

Inputs, with a symbolic batch size B: x [B, L, D] (the last L rows, original units, channels in training order),
x_mark [B, L, F] and y_mark [B, T, F] (time features of the look-back rows and of the T future steps, followed by
the future covariates in original units), and for a backbone that reads the phase of a cycle (CycleNet) t0 [B]
int32, the row of the look-back's first step on the training grid. The output is [B, T, D'], original units, the
forecast channels (the target alone under data.features=MS). The sidecar FILE.json names the channels, L, T, the
time features and their formulas (docs/protocol.md §5; mola_jax's data.time_features computes them), the
covariates, how t0 is counted, and the intervals' multipliers and scale floor (mola_jax/evaluation.py; original
units).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
from absl import app, flags

from mola_jax import cli, distributed, models, plan, runtime, steps, workdir
from mola_jax.data import calendar
from mola_jax.errors import ConfigError
from mola_jax.inference import Run, load_run
from mola_jax.models import adapters, techniques
from mola_jax.state import TrainState


def export_run(run: Run) -> jax.export.Exported:
  """The run's forecaster as a jax.export.Exported: (x, x_mark, y_mark) -> forecast, original units."""
  if run.panel:
    raise ConfigError("a panel's run scales each series by its own training scaler, which an exported forecaster "
                      "cannot build in; forecast with mola_jax.load_run(...).predict or mola_jax.forecast")  # fmt: skip
  model = run.model
  layers = adapters.adapted_layers(model)
  if run.stage == plan.ADAPT and layers and all(techniques.has_delta(layer.adapter) for layer in layers.values()):
    adapters.bake(model, jax.device_get(adapters.deltas(model)))  # fixed per-segment deltas instead of the banks
  state, scaler = TrainState.create(model, run.stage), run.scaler
  f, out = int(run.record["marks"]), len(run.outputs)
  calendar_f = f - len(scaler.covariate_mean)
  # The covariates arrive in original units: standardised here, as the training marks were.
  marks = lambda m: jnp.concatenate([m[..., :calendar_f], scaler.scale_covariates(m[..., calendar_f:])], axis=-1)

  def forecaster(x, x_mark, y_mark, *t0):
    batch = {"x": scaler.scale(x), "x_mark": marks(x_mark), "y_mark": marks(y_mark)} | ({"t0": t0[0]} if t0 else {})
    return scaler.unscale(steps.eval_forward(state, batch, segments=run.segments, groups=1)[..., -out:], out)

  b = jax.export.symbolic_shape("b")[0]
  seq_len, d = run.cfg.data.seq_len, len(run.columns)
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((b, seq_len, d), (b, seq_len, f), (b, run.horizon, f))]
  if models.reads_t0(run.cfg.backbone):
    shapes.append(jax.ShapeDtypeStruct((b,), jnp.int32))
  with runtime.matmul_precision(run.cfg.matmul_precision):  # the precision the run trained with
    return jax.export.export(jax.jit(forecaster))(*shapes)


def describe(run: Run) -> dict:
  """The sidecar: what the inputs are and how to make them."""
  record = run.record
  names = [fn.__name__.lstrip("_") for fn in calendar.TIME_FEATURES[calendar.feature_code(record["freq"])]]
  out = {
    "columns": run.columns,
    "outputs": run.outputs,
    "seq_len": run.cfg.data.seq_len,
    "horizon": run.horizon,
    "freq": record["freq"],
    "inputs": {
      "x": "[B, seq_len, channels], original units",
      "x_mark": "[B, seq_len, features]: the time features, then the covariates in original units",
      "y_mark": "[B, horizon, features]: the same, for the horizon's steps",
    },
    "time_features": names,
    "time_feature_formulas": "each in [-0.5, 0.5]: hour/23, weekday/6, (day-1)/30, (day_of_year-1)/365, "
    "(minute/59), (second/59), (month-1)/11, (iso_week-1)/52, minus 0.5 (TSLib timeF)",
    "covariates": run.covariates,
    "output": "[B, horizon, outputs], original units",
  }
  if models.reads_t0(run.cfg.backbone):
    out["inputs"]["t0"] = (
      f"[B] int32: the row of the look-back's first step, counting {record.get('last_date')} as row "
      f"{record.get('rows', 0) - 1} at the frequency {record.get('grid')} (mola_jax.data.positions)"
    )
  if run.conformal:
    out["intervals"] = {
      "band": "forecast +- multiplier[t][d] * max(std of the look-back x[:, :, d], scale_floor[d]), original units",
      "scale_floor": (run.conformal["scale_floor"] * run.scaler.std).tolist(),  # [D]
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
  if not distributed.is_lead():
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
