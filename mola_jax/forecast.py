"""Forecast with a trained run:

    python -m mola_jax.forecast --workdir RUN --csv new.csv --out forecast.csv [--future future.csv] [--roll]

Loads RUN's selected model (stage 2 if it has one) and its training scaler, reads the CSV (the training data's
layout, wide or long, and columns; the training data's checks), and forecasts the T steps after the file's last
row. The output CSV holds those steps with timestamps continuing at the data's frequency, in the data's original
units, with the run's prediction-interval bounds (CHANNEL_lower_80, CHANNEL_upper_80, ...; a long file gets a
long result: unique_id, ds, forecast, lower_80, ...). A run with future covariates needs their values over those
steps: --future names a CSV with date (or ds) and those columns. With --roll it also forecasts from every T-th
row of the file (a backtest: `origin` marks the last known row of each), and one PNG per forecast channel shows
history and forecast.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
from absl import app, flags

from mola_jax import cli, data, distributed, workdir
from mola_jax.inference import Run, load_run


def forecast_csv(run: Run, csv_path, *, roll: bool = False, future_path=None) -> pd.DataFrame:
  """-> DataFrame with columns origin, date, the run's forecast channels and their interval bounds (original
  units); long (origin, unique_id, ds, forecast, bounds) for a long CSV."""
  future = None if future_path is None else data.read_frame(future_path)
  return run.forecast_table(data.read_frame(csv_path), future=future, roll=roll, name=str(csv_path))


def wide_view(forecast: pd.DataFrame) -> pd.DataFrame:
  """A long forecast table (unique_id, ds, forecast, lower_80, ...) in the wide layout the plots read."""
  if "unique_id" not in forecast.columns:
    return forecast
  parts = []
  for uid, part in forecast.groupby("unique_id", sort=False):
    renamed = {"ds": "date", "forecast": uid} | {
      c: f"{uid}_{c}" for c in part.columns if c.startswith(("lower", "upper"))
    }
    parts.append(part.drop(columns="unique_id").rename(columns=renamed).set_index(["origin", "date"]))
  return pd.concat(parts, axis=1).reset_index()


MAX_SERIES_PLOTS = 8  # a panel's forecast plots: its first series only (a panel may hold thousands)


def plot(run: Run, csv_path, forecast: pd.DataFrame, out_dir: pathlib.Path, history: int) -> list[pathlib.Path]:
  """One PNG per forecast channel (a panel's run: per series, the first MAX_SERIES_PLOTS): the file's last
  `history` rows and every forecast."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for j, name, dates, values, part, column in curves(run, csv_path, forecast):
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.plot(dates[-history:], values[-history:], color="black", lw=1, label="data")
    for i, (_, one) in enumerate(part.groupby("origin")):
      ax.plot(one["date"], one[column], color="tab:red", lw=1, label="forecast" if i == 0 else None)
      if f"{column}_lower_80" in one:
        ax.fill_between(one["date"], one[f"{column}_lower_80"], one[f"{column}_upper_80"], color="tab:red",
                        alpha=0.15, lw=0, label="80% interval" if i == 0 else None)  # fmt: skip
    ax.set_title(f"{name}")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    paths.append(out_dir / f"forecast_{j:02d}_{safe}.png")
    workdir.save_figure(fig, paths[-1], dpi=100)
    plt.close(fig)
  return paths


def curves(run: Run, csv_path, forecast: pd.DataFrame):
  """Yield (number, name, dates, values, forecast rows with origin and date, the forecast's column) of each plot."""
  frame = data.read_frame(csv_path)
  if run.panel:
    frame = frame.assign(unique_id=frame["unique_id"].astype(str), ds=pd.to_datetime(frame["ds"], format="mixed"))
    rows = forecast.rename(columns={"ds": "date", "forecast": "y"})
    rows = rows.rename(columns={c: f"y_{c}" for c in rows.columns if c.startswith(("lower", "upper"))})
    for j, uid in enumerate(list(dict.fromkeys(forecast["unique_id"]))[:MAX_SERIES_PLOTS]):
      one = frame[frame["unique_id"] == uid].sort_values("ds")
      yield j, uid, one["ds"].to_numpy(), one["y"].to_numpy(np.float64), rows[rows["unique_id"] == uid], "y"
    return
  hist = run.history(frame, str(csv_path))
  values, wide = np.where(hist.observed, hist.values, np.nan), wide_view(forecast)
  for name in run.outputs:
    j = run.columns.index(name)
    yield j, name, hist.dates, values[:, j], wide, name


def main(argv) -> None:
  cli.start(argv)  # under MOLA_DISTRIBUTED=1 every process forecasts on its own devices; process 0 writes
  f = flags.FLAGS
  with cli.user_errors():
    run = load_run(f.workdir)
    forecast = forecast_csv(run, f.csv, roll=f.roll, future_path=f.future)
  if not distributed.is_lead():
    return
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with workdir.atomic(out) as tmp:
    forecast.to_csv(tmp, index=False)
  history = len(data.read_frame(f.csv)) if f.roll else 4 * run.horizon
  pngs = plot(run, f.csv, forecast, pathlib.Path(f.plots) if f.plots else out.parent, history)
  print(f"{len(forecast)} forecast rows ({run.stage}, T={run.horizon}) -> {out}; {len(pngs)} plots in {pngs[0].parent}")


def command() -> None:
  """`mola-forecast` / `python -m mola_jax.forecast`."""
  flags.DEFINE_string("workdir", None, "Workdir of a trained run", required=True)
  flags.DEFINE_string("csv", None, "CSV to forecast from (the training data's layout and columns)", required=True)
  flags.DEFINE_string("future", None, "CSV of the future covariates over the forecast steps (date or ds + columns)")
  flags.DEFINE_string("out", "forecast.csv", "Output CSV")
  flags.DEFINE_bool("roll", False, "Also forecast from every T-th row of the file (a backtest)")
  flags.DEFINE_string("plots", None, "Folder for the per-channel PNGs (default: beside --out)")
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  command()
