"""Every bad input ends with one line naming the problem and the fix, exit code 2, and nothing written."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO

ETTH1 = str(REPO / "configs" / "etth1.py")
SYNTHETIC = str(REPO / "configs" / "synthetic.py")


def write(path, text):
  path.write_text(text)
  return str(path)


def good_rows(n, bad_row=None, bad_value="x"):
  lines = ["date,a,OT"]
  for i in range(n):
    value = bad_value if i == bad_row else f"{i % 7}.5"
    lines.append(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00,{value},{i % 5}")
  return "\n".join(lines) + "\n"


CASES = {
  "missing file": lambda tmp: ["--config.data.path=" + str(tmp / "nope.csv")],
  "no date column": lambda tmp: ["--config.data.path=" + write(tmp / "nodate.csv", "time,a,OT\n1,2,3\n")],
  "non-numeric value": lambda tmp: ["--config.data.path=" + write(tmp / "text.csv", good_rows(400, 123, "abc"))],
  "missing value": lambda tmp: ["--config.data.path=" + write(tmp / "hole.csv", good_rows(400, 77, ""))],
  "too short": lambda tmp: ["--config.data.path=" + write(tmp / "short.csv", good_rows(150))],
  "horizon not divisible": lambda tmp: ["--config.horizon=96", "--config.segment_len=36"],
  "unknown dataset": lambda tmp: ["--config.data.name=ETTh3"],
  "unknown backbone": lambda tmp: ["--config.backbone=resnet"],
  "unknown method": lambda tmp: ["--config.method=moe"],
  "config key typo": lambda tmp: ["--config.pretrain.lrr=1e-3"],
  "bad value type": lambda tmp: ["--config.horizon=ninety"],
  "missing config file": lambda tmp: ["--config=" + str(tmp / "none.py")],
  "unknown config variant": lambda tmp: ["--config=" + ETTH1 + ":fixed"],
  "inf value": lambda tmp: ["--config.data.path=" + write(tmp / "inf.csv", good_rows(400, 210, "inf"))],
  "-inf value": lambda tmp: ["--config.data.path=" + write(tmp / "ninf.csv", good_rows(400, 5, "-inf"))],
  "empty file": lambda tmp: ["--config.data.path=" + write(tmp / "empty.csv", "")],
  "header only": lambda tmp: ["--config.data.path=" + write(tmp / "header.csv", "date,a,OT\n")],
  "time goes backwards": lambda tmp: ["--config.data.path=" + write(tmp / "back.csv", moved_block(400))],
  "workdir is a file": lambda tmp: ["--config=" + SYNTHETIC],
  "unknown target": lambda tmp: ["--config.data.target=oil", "--config.data.features=S"],
  "covariate absent": lambda tmp: ["--config.data.future_covariates=('price',)"],
  "unknown features mode": lambda tmp: ["--config.data.features=SM"],
  "unknown missing option": lambda tmp: ["--config.data.missing=drop"],
  "irregular spacing": lambda tmp: ["--config.data.path=" + write(tmp / "odd.csv", shifted_row(400, 150))],
  "missing rows": lambda tmp: ["--config.data.path=" + write(tmp / "rows.csv", dropped_rows(400, 100, 110))],
  "long table, repeated pair": lambda tmp: ["--config.data.path=" + write(tmp / "long.csv", long_rows(400, 33))],
}
EXPECT = {
  "missing file": "does not exist",
  "no date column": "no 'date' column",
  "non-numeric value": "row(s) 123",
  "missing value": "row(s) 77",
  "too short": "too few",
  "horizon not divisible": "not divisible",
  "unknown dataset": "ETTh3",
  "unknown backbone": "unknown backbone",
  "unknown method": "unknown method",
  "config key typo": 'Did you mean "lr"',
  "bad value type": "ninety",
  "missing config file": "none.py",
  "unknown config variant": "unknown variant fixed of configs/etth1.py",
  "inf value": "non-finite value in column(s) 'a' at data row(s) 210",
  "-inf value": "non-finite value in column(s) 'a' at data row(s) 5",
  "empty file": "is empty",
  "header only": "no data rows",
  "time goes backwards": "time goes backwards at data row 300",
  "workdir is a file": "is a file, not a directory",
  "unknown target": "unknown data.target 'oil'",
  "covariate absent": "future covariate(s) 'price' are not columns",
  "unknown features mode": "unknown data.features 'SM'",
  "unknown missing option": "unknown data.missing 'drop'",
  "irregular spacing": "not on a regular grid: most steps are 0 days 01:00:00, but data row 150 comes",
  "missing rows": "10 row(s) of the hourly (h) series are missing, the first 10 after 2020-01-05 03:00:00",
  "long table, repeated pair": "series 'a' has two rows for ds 2020-01-02 09:00:00",
}


def moved_block(n):
  """A file whose rows 100..199 were moved to the end: time first goes backwards at data row 300."""
  lines = good_rows(n).splitlines()
  return "\n".join([lines[0]] + lines[1:101] + lines[201:] + lines[101:201]) + "\n"


def shifted_row(n, row):
  """Data row `row` half an hour late: off the hourly grid."""
  lines = good_rows(n).splitlines()
  lines[row + 1] = lines[row + 1].replace(":00:00,", ":30:00,", 1)
  return "\n".join(lines) + "\n"


def dropped_rows(n, start, stop):
  """Data rows start .. stop - 1 left out: missing rows of an hourly series."""
  lines = good_rows(n).splitlines()
  return "\n".join(lines[: start + 1] + lines[stop + 1 :]) + "\n"


def long_rows(n, row):
  """good_rows as a long table (unique_id, ds, y), with data row `row` of series a written twice."""
  frame = pd.read_csv(io.StringIO(good_rows(n))).melt(id_vars="date", var_name="unique_id", value_name="y")
  frame = pd.concat([frame, frame.iloc[[row]]]).rename(columns={"date": "ds"})
  return frame.to_csv(index=False)


def repeated_row(n, row):
  """Data row `row` written twice."""
  lines = good_rows(n).splitlines()
  return "\n".join(lines[: row + 2] + lines[row + 1 :]) + "\n"


def run_train(args, workdir, env=None):
  return subprocess.run(
    [sys.executable, "-m", "mola_jax.train", "--config", ETTH1, *args, "--workdir", str(workdir)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env=env,
  )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, data_dir):
  workdir = tmp_path / "run"
  if case == "workdir is a file":
    workdir.write_text("someone's file")
  proc = run_train(CASES[case](tmp_path), workdir)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-1500:]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-1500:]
  assert EXPECT[case] in lines[0]
  if case == "workdir is a file":
    assert workdir.read_text() == "someone's file"  # untouched
  else:
    assert not workdir.exists()
  print(f"{case}: {lines[0]}")


def test_checksum_mismatch(tmp_path, data_dir):
  import os

  fake = tmp_path / "data"
  fake.mkdir()
  (fake / "ETTh1.csv").write_text((data_dir / "ETTh1.csv").read_text().replace("5.827", "5.828", 1))
  proc = run_train([], tmp_path / "run", env=dict(os.environ, MOLA_DATA_DIR=str(fake)))
  assert proc.returncode == 2 and "sha256" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "run").exists()


def test_stage2_on_a_checkpoint_of_another_segment_length(tmp_path):
  base = [sys.executable, "-m", "mola_jax.train", "--config", SYNTHETIC, "--config.pretrain.epochs=1"]
  subprocess.run(
    base + ["--config.stage=pretrain", "--workdir", str(tmp_path / "s1")],
    check=True,
    capture_output=True,
    cwd=REPO,
    timeout=300,
  )
  proc = subprocess.run(
    base
    + [
      "--config.stage=adapt",
      "--config.segment_len=16",
      "--config.init_from=" + str(tmp_path / "s1"),
      "--workdir",
      str(tmp_path / "s2"),
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert proc.returncode == 2 and "segment_len=24" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_repeated_timestamp_is_reported_not_refused(tmp_path, caplog):
  """The field's weather.csv repeats one timestamp; a repeat is a warning naming the row, not an error."""
  from mola_jax import data

  with caplog.at_level("WARNING"):
    values, dates, _ = data.read_csv(write(tmp_path / "dup.csv", repeated_row(400, 99)))
  assert len(values) == 401
  assert any("duplicate time at data row(s) 100" in r.getMessage() for r in caplog.records)
