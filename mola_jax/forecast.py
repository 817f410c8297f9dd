"""Forecast with a trained run:

    python -m mola_jax.forecast --workdir RUN --csv new.csv --out forecast.csv [--roll] [--plots DIR]

Loads RUN's selected model (stage 2 if it has one) and its training scaler, reads the CSV (same columns as
the training data, a `date` column), and forecasts the T steps after the file's last row. The output CSV holds
those steps with timestamps continuing at the data's frequency, in the data's original units. With --roll it
also forecasts from every T-th row of the file (a backtest: `origin` marks the last known row of each), and
one PNG per channel shows history and forecast.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pandas as pd
from absl import app, flags, logging

from mola_jax import cli, data, workdir
from mola_jax.inference import Run, load_run


def future_dates(dates: np.ndarray, steps: int) -> np.ndarray:
  """`steps` timestamps after the last one, at the series' own frequency (inferred, else its median step)."""
  index = pd.DatetimeIndex(dates)
  with warnings.catch_warnings():  # pandas 3 warns that the return type will change; either type works below
    warnings.simplefilter("ignore")
    freq = pd.infer_freq(index[-min(len(index), 50) :]) if len(index) >= 3 else None
  if freq is not None:
    return pd.date_range(index[-1], periods=steps + 1, freq=freq)[1:].to_numpy()
  step = np.median(np.diff(index.to_numpy()))  # irregular stamps: continue at the typical spacing
  return index[-1].to_datetime64() + step * np.arange(1, steps + 1)


def forecast_csv(run: Run, csv_path, *, roll: bool = False) -> pd.DataFrame:
  """-> DataFrame with columns origin, date and the run's channels (original units)."""
  values, dates, columns = data.read_csv(csv_path)
  if tuple(columns) != tuple(run.scaler["columns"]):
    raise data.DataError(
      f"{csv_path} has columns {list(columns)}, but the run was trained on "
      f"{run.scaler['columns']}; give a CSV with the same columns"
    )
  seq_len, horizon = run.cfg.data.seq_len, run.horizon
  if len(values) < seq_len:
    raise data.DataError(
      f"{csv_path} has {len(values)} rows, fewer than the look-back of {seq_len}; give at least {seq_len} rows"
    )
  mean, std = np.asarray(run.scaler["mean"]), np.asarray(run.scaler["std"])
  scaled = ((values - mean) / std).astype(np.float32)  # the training split's scaler, never refitted
  marks = data.time_features(dates, run.scaler["freq"])
  ends = list(range(seq_len, len(values), horizon)) if roll else []
  ends.append(len(values))  # the true forecast: after the last row
  frames = []
  for end in ends:
    future = dates[end : end + horizon]
    if len(future) < horizon:  # past the file's end: continue the calendar
      future = np.concatenate(
        [future, future_dates(dates[:end] if len(future) == 0 else future, horizon - len(future))]
      )
    batch = {
      "x": scaled[None, end - seq_len : end],
      "x_mark": marks[None, end - seq_len : end],
      "y_mark": data.time_features(future, run.scaler["freq"])[None],
    }
    pred = run.forecast(batch)[0] * std + mean  # [T, D], original units
    frame = pd.DataFrame(pred, columns=list(columns))
    frame.insert(0, "date", pd.DatetimeIndex(future))
    frame.insert(0, "origin", pd.Timestamp(dates[end - 1]))
    frames.append(frame)
  return pd.concat(frames, ignore_index=True)


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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  with cli.user_errors():
    run = load_run(f.workdir)
    forecast = forecast_csv(run, f.csv, roll=f.roll)
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with workdir.atomic(out) as tmp:
    forecast.to_csv(tmp, index=False)
  history = len(data.read_csv(f.csv)[0]) if f.roll else 4 * run.horizon
  pngs = plot(f.csv, forecast, pathlib.Path(f.plots) if f.plots else out.parent, history)
  print(f"{len(forecast)} forecast rows ({run.stage}, T={run.horizon}) -> {out}; {len(pngs)} plots in {pngs[0].parent}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Workdir of a trained run", required=True)
  flags.DEFINE_string("csv", None, "CSV to forecast from (date column + the training columns)", required=True)
  flags.DEFINE_string("out", "forecast.csv", "Output CSV")
  flags.DEFINE_bool("roll", False, "Also forecast from every T-th row of the file (a backtest)")
  flags.DEFINE_string("plots", None, "Folder for the per-channel PNGs (default: beside --out)")
  app.run(main, flags_parser=cli.parse_flags)
