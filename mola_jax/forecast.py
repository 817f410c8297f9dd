"""Forecast with a trained run:

    python -m mola_jax.forecast --workdir RUN --csv new.csv --out forecast.csv [--roll] [--plots DIR]

Loads RUN's selected model (stage 2 if it has one) and its training scaler, reads the CSV (same columns as
the training data, a `date` column; the training data's checks), and forecasts the T steps after the file's last
row. The output CSV holds those steps with timestamps continuing at the data's frequency, in the data's original
units, with the run's prediction-interval bounds (CHANNEL_lower_80, CHANNEL_upper_80, ...). With --roll it
also forecasts from every T-th row of the file (a backtest: `origin` marks the last known row of each), and
one PNG per channel shows history and forecast.
"""

from __future__ import annotations

import pathlib

import pandas as pd
from absl import app, flags

from mola_jax import cli, data, sharding, workdir
from mola_jax.inference import Run, load_run


def forecast_csv(run: Run, csv_path, *, roll: bool = False) -> pd.DataFrame:
  """-> DataFrame with columns origin, date, the run's channels and their interval bounds (original units)."""
  return run.forecast_table(data.read_frame(csv_path), roll=roll, name=str(csv_path))


def plot(csv_path, forecast: pd.DataFrame, out_dir: pathlib.Path, history: int) -> list[pathlib.Path]:
  """One PNG per channel: the file's last `history` rows and every forecast."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  values, dates, columns = data.read_csv(csv_path)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for j, name in enumerate(columns):
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(dates[-history:], values[-history:, j], color="black", lw=1, label="data")
    for i, (_, part) in enumerate(forecast.groupby("origin")):
      ax.plot(part["date"], part[name], color="tab:red", lw=1, label="forecast" if i == 0 else None)
      if f"{name}_lower_80" in part:
        ax.fill_between(
          part["date"],
          part[f"{name}_lower_80"],
          part[f"{name}_upper_80"],
          color="tab:red",
          alpha=0.15,
          lw=0,
          label="80% interval" if i == 0 else None,
        )
    ax.set_title(f"{name}")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    paths.append(out_dir / f"forecast_{j:02d}_{safe}.png")
    workdir.save_figure(fig, paths[-1], dpi=100)
    plt.close(fig)
  return paths


def main(argv) -> None:
  cli.start(argv)  # under MOLA_DISTRIBUTED=1 every process forecasts on its own devices; process 0 writes
  f = flags.FLAGS
  with cli.user_errors():
    run = load_run(f.workdir)
    forecast = forecast_csv(run, f.csv, roll=f.roll)
  if not sharding.is_lead():
    return
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with workdir.atomic(out) as tmp:
    forecast.to_csv(tmp, index=False)
  history = len(data.read_csv(f.csv)[0]) if f.roll else 4 * run.horizon
  pngs = plot(f.csv, forecast, pathlib.Path(f.plots) if f.plots else out.parent, history)
  print(f"{len(forecast)} forecast rows ({run.stage}, T={run.horizon}) -> {out}; {len(pngs)} plots in {pngs[0].parent}")


def command() -> None:
  """`mola-forecast` / `python -m mola_jax.forecast`."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained run", required=True)
  flags.DEFINE_string("csv", None, "CSV to forecast from (date column + the training columns)", required=True)
  flags.DEFINE_string("out", "forecast.csv", "Output CSV")
  flags.DEFINE_bool("roll", False, "Also forecast from every T-th row of the file (a backtest)")
  flags.DEFINE_string("plots", None, "Folder for the per-channel PNGs (default: beside --out)")
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  command()
