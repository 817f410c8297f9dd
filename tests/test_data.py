"""Data layer against docs/protocol.md: split borders, window counts, train-only scaler, timeF, pipelines, errors.

Real files come from $MOLA_DATA_DIR (default <repo>/../shared/data); synthetic CSVs are written to tmp_path.
"""

from __future__ import annotations

import os
import pathlib
import types

import numpy as np
import pandas as pd
import pytest

from mola_jax import data
from mola_jax.data import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(os.environ.get("MOLA_DATA_DIR") or REPO.parent / "shared" / "data")
OFFLINE = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "weather", "exchange_rate", "national_illness")
ROWS = {
  "ETTh1": 17420,
  "ETTh2": 17420,
  "ETTm1": 69680,
  "ETTm2": 69680,
  "weather": 52696,
  "exchange_rate": 7588,
  "national_illness": 966,
  "electricity": 26304,
  "traffic": 17544,
}

needs_data = pytest.mark.skipif(not (DATA_DIR / "ETTh1.csv").is_file(), reason=f"no benchmark data in {DATA_DIR}")


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
  monkeypatch.setenv("MOLA_DATA_DIR", str(DATA_DIR))


def cfg(name, seq_len=96, path=None, parity_quirk=False):
  return types.SimpleNamespace(
    name=name,
    path=path,
    seq_len=seq_len,
    freq="h",
    parity_quirk=parity_quirk,
    target=None,
    features="M",
    future_covariates=(),
    missing="error",
  )


_CACHE = {}


def series(name, seq_len=96):
  """Each real file is parsed once per session: the suite has to stay fast."""
  key = (name, seq_len)
  if key not in _CACHE:
    _CACHE[key] = data.load_series(cfg(name, seq_len))
  return _CACHE[key]


def counts(kind, n, seq_len, pred_len, parity_quirk=False):
  """(train, val, test) window counts from the borders alone; no file needed."""
  borders = data.split_borders(kind, n, seq_len, parity_quirk=parity_quirk)
  zeros = np.zeros((n, 1), np.float32)
  return tuple(len(data.WindowSource(zeros, zeros, *borders[s], seq_len, pred_len)) for s in ("train", "val", "test"))


def write_csv(path, n=200, d=3, *, start="2020-01-01", freq="h", crlf=False, date_fmt=None):
  """A synthetic CSV whose row r holds r + 1000 c in channel c, so every value names its row."""
  dates = pd.date_range(start, periods=n, freq=freq)
  df = pd.DataFrame({"date": dates.strftime(date_fmt) if date_fmt else dates.astype(str)})
  for c in range(d - 1):
    df[f"c{c}"] = np.arange(n, dtype=np.float64) + 1000 * c
  df["OT"] = np.arange(n, dtype=np.float64) * 2.0
  df.to_csv(path, index=False, lineterminator="\r\n" if crlf else "\n")
  return path


# ----------------------------------------------------------------------------------------------------------------
# Borders (docs/protocol.md §2)


def test_ett_borders():
  assert data.split_borders("ett_hour", 17420, 96) == {"train": (0, 8640), "val": (8544, 11520), "test": (11424, 14400)}
  assert data.split_borders("ett_minute", 69680, 96) == {
    "train": (0, 34560),
    "val": (34464, 46080),
    "test": (45984, 57600),
  }
  # The quirk belongs to the fork's 7:1:2 loader only.
  assert data.split_borders("ett_hour", 17420, 96, parity_quirk=True)["train"] == (0, 8640)


@pytest.mark.parametrize(
  "name,n,n_train,n_val,n_test,quirk_start",
  [
    ("weather", 52696, 36887, 5270, 10539, 1),
    ("exchange_rate", 7588, 5311, 760, 1517, 1),
    ("national_illness", 966, 676, 97, 193, 1),
    ("electricity", 26304, 18412, 2632, 5260, 0),
    ("traffic", 17544, 12280, 1756, 3508, 0),
  ],
)
def test_ratio_borders(name, n, n_train, n_val, n_test, quirk_start):
  L = 96
  assert data.split_borders("ratio", n, L) == {
    "train": (0, n_train),
    "val": (n_train - L, n_train + n_val),
    "test": (n - n_test - L, n),
  }
  assert data.split_borders("ratio", n, L, parity_quirk=True)["train"] == (quirk_start, n_train)
  assert data.DATASETS[name].split == "ratio"


@needs_data
@pytest.mark.parametrize("name", OFFLINE)
def test_offline_files(name):
  info = data.DATASETS[name]
  s = series(name, 36 if name == "national_illness" else 96)
  assert s.values.shape == (ROWS[name], info.channels) and s.values.dtype == np.float32
  assert s.marks.shape == (ROWS[name], 4) and s.marks.dtype == np.float32  # freq "h" everywhere (§5)
  assert s.dates.dtype == np.dtype("datetime64[ns]") and s.columns[-1] == "OT"
  assert s.borders == data.split_borders(info.split, ROWS[name], 36 if name == "national_illness" else 96)
  assert np.isfinite(s.values).all()


@needs_data
def test_spans_and_generic_dates():
  assert str(series("exchange_rate").dates[0])[:10] == "1990-01-01"  # from '1990/1/1 0:00'
  assert str(series("exchange_rate").dates[-1])[:10] == "2010-10-10"
  assert str(series("weather").dates[0]).startswith("2020-01-01T00:10")
  assert str(series("ETTm1").dates[-1]).startswith("2018-06-26T19:45")
  assert len(series("weather").columns) == 21  # the U+FFFD header parses


# ----------------------------------------------------------------------------------------------------------------
# Window counts (docs/protocol.md §6)


@needs_data
@pytest.mark.parametrize(
  "H,train,val,test,steps",
  [
    (96, 8449, 2785, 2785, 264),
    (192, 8353, 2689, 2689, 261),
    (336, 8209, 2545, 2545, 256),
    (720, 7825, 2161, 2161, 244),
  ],
)
def test_etth1_counts(H, train, val, test, steps):
  s = series("ETTh1")
  srcs = [data.window_source(s, split, 96, H) for split in ("train", "val", "test")]
  assert tuple(map(len, srcs)) == (train, val, test)
  assert data.num_train_batches(srcs[0], 32) == steps
  assert data.num_eval_batches(srcs[2], 32) * 32 >= test


@pytest.mark.parametrize(
  "S,train,val",
  [
    (24, 8521, 2857),
    (32, 8513, 2849),
    (42, 8503, 2839),
    (48, 8497, 2833),
    (64, 8481, 2817),
    (84, 8461, 2797),
    (90, 8455, 2791),
    (180, 8365, 2701),
  ],
)
def test_stage1_counts(S, train, val):
  assert counts("ett_hour", 17420, 96, S) == (train, val, val)


@pytest.mark.parametrize(
  "kind,n,L,H,expected",
  [
    ("ett_minute", 69680, 96, 96, (34369, 11425, 11425)),
    ("ratio", 52696, 96, 96, (36696, 5175, 10444)),
    ("ratio", 7588, 96, 96, (5120, 665, 1422)),
    ("ratio", 26304, 96, 96, (18221, 2537, 5165)),
    ("ratio", 17544, 96, 96, (12089, 1661, 3413)),
    ("ratio", 966, 36, 24, (617, 74, 170)),
  ],
)
def test_other_counts(kind, n, L, H, expected):
  assert counts(kind, n, L, H) == expected


def test_exchange_720_val_and_quirk_counts():
  assert counts("ratio", 7588, 96, 720)[1] == 41
  train, _, _ = counts("ratio", 52696, 96, 96, parity_quirk=True)
  assert train == 36696 - 1  # the quirk costs one training window


@needs_data
def test_window_source_content_and_real_counts():
  s = series("national_illness", 36)
  srcs = [data.window_source(s, split, 36, 24) for split in ("train", "val", "test")]
  assert tuple(map(len, srcs)) == (617, 74, 170)
  test = srcs[2]
  w = test[0]
  assert {k: v.shape for k, v in w.items()} == {
    "x": (36, 7), "x_mark": (36, 4), "y": (24, 7), "y_mark": (24, 4), "t0": ()
  }  # fmt: skip
  assert w["t0"] == s.borders["test"][0]  # the window's first row in the series
  # The first test target is the first row after validation ends: targets never overlap across splits.
  assert np.array_equal(w["y"][0], s.values[s.borders["val"][1]])
  assert np.array_equal(test[-1]["y"][-1], s.values[-1])
  with pytest.raises(IndexError):
    test[len(test)]
  with pytest.raises(DataError, match="seq_len"):
    data.window_source(s, "test", 96, 24)  # borders were built for L = 36


# ----------------------------------------------------------------------------------------------------------------
# Scaling (docs/protocol.md §3)


@needs_data
def test_etth1_train_statistics():
  s = series("ETTh1")
  assert s.columns == ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
  mean = [7.937742, 2.021039, 5.079771, 0.746186, 2.781762, 0.788453, 17.128262]
  std = [5.812749, 2.090105, 5.518794, 1.926379, 1.023523, 0.630237, 9.176491]
  np.testing.assert_allclose(s.scaler.mean, mean, rtol=1e-5)
  np.testing.assert_allclose(s.scaler.std, std, rtol=1e-5)
  np.testing.assert_allclose(s.values[:8640].mean(0), 0, atol=1e-5)


def test_scaler_uses_train_rows_only(tmp_path):
  n = 200
  base = data.load_csv(write_csv(tmp_path / "a.csv", n), name="a", split="ratio", seq_len=24)
  n_train = int(n * 0.7)
  np.testing.assert_allclose(
    base.scaler.mean, [np.arange(n_train).mean(), np.arange(n_train).mean() + 1000, 2 * np.arange(n_train).mean()]
  )
  df = pd.read_csv(tmp_path / "a.csv")
  df.loc[n - 1, "c0"] = 1e6  # a test row
  df.loc[n_train, "OT"] = -1e6  # the first validation row
  df.to_csv(tmp_path / "b.csv", index=False)
  leaked = data.load_csv(tmp_path / "b.csv", name="b", split="ratio", seq_len=24)
  np.testing.assert_array_equal(leaked.scaler.mean, base.scaler.mean)
  np.testing.assert_array_equal(leaked.scaler.std, base.scaler.std)
  assert leaked.values[n - 1, 0] > 1000  # transformed with the train statistics, not refitted
  df.loc[5, "c0"] = 1e6  # a train row does move them
  df.to_csv(tmp_path / "c.csv", index=False)
  assert data.load_csv(tmp_path / "c.csv", name="c", split="ratio", seq_len=24).scaler.mean[0] != base.scaler.mean[0]


def test_scaler_zero_std_and_parity_quirk(tmp_path):
  path = write_csv(tmp_path / "q.csv", 201)  # n_train 140 + n_val 21 = 161: odd, so the quirk applies
  df = pd.read_csv(path)
  df["c1"] = 3.0
  df.to_csv(path, index=False)
  s = data.load_csv(path, name="q", split="ratio", seq_len=24)
  assert s.scaler.std[1] == 1.0 and np.all(s.values[:, 1] == 0)
  q = data.load_csv(path, name="q", split="ratio", seq_len=24, parity_quirk=True)
  assert q.borders["train"] == (1, 140)
  assert q.scaler.mean[0] == np.arange(1, 140).mean()  # row 0 is left out of the fit too


# ----------------------------------------------------------------------------------------------------------------
# Time features (docs/protocol.md §5)


def test_time_features_known_timestamps():
  t = pd.DatetimeIndex(["2016-07-01 00:00:00", "2020-12-31 23:59:59"])  # a Friday; a leap year's last second
  h = data.time_features(t, "h")
  np.testing.assert_allclose(h[0], [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5], rtol=1e-6)
  np.testing.assert_allclose(h[1], [0.5, 3 / 6 - 0.5, 0.5, 0.5], rtol=1e-6)
  s = data.time_features(t, "s")
  assert s.shape == (2, 6) and s.dtype == np.float32
  np.testing.assert_allclose(s[1, :2], [0.5, 0.5])
  np.testing.assert_allclose(s[:, 2:], h)
  assert data.time_features(t, "t").shape == (2, 5) and data.time_features(t, "min").shape == (2, 5)
  np.testing.assert_allclose(data.time_features(t, "d"), h[:, 1:])
  assert data.time_features(t, "b").shape == (2, 3)
  w = data.time_features(pd.DatetimeIndex(["2021-01-01", "2021-01-04"]), "w")  # ISO weeks 53 and 1
  np.testing.assert_allclose(w, [[-0.5, 0.5], [3 / 30 - 0.5, -0.5]], rtol=1e-6)
  np.testing.assert_allclose(data.time_features(t, "m")[:, 0], [6 / 11 - 0.5, 0.5], rtol=1e-6)
  fifteen = pd.date_range("2016-07-01", periods=4, freq="15min")
  np.testing.assert_allclose(data.time_features(fifteen, "t")[:, 0], [-0.5, -0.246, 0.008, 0.263], atol=1e-3)
  with pytest.raises(DataError, match="freq"):
    data.time_features(t, "fortnight")


# ----------------------------------------------------------------------------------------------------------------
# Pipelines


@needs_data
def test_eval_batches_cover_every_window_once_in_order():
  """The eval order padded and masked, gathered on the device: every window once, in order, as the host builds it."""
  src = data.window_source(series("ETTh1"), "test", 96, 96)
  idx, mask = data.eval_order(src, 97)  # odd, and 2785 = 28 * 97 + 69
  assert idx.shape == mask.shape == (data.num_eval_batches(src, 97), 97) == (29, 97)
  assert int(mask.sum()) == len(src) == 2785 and not mask[-1, 69:].any()
  windows = data.DeviceWindows(src)
  batches = [windows.take(i, m) for i, m in zip(idx, mask, strict=True)]
  assert all(b["x"].shape == (97, 96, 7) and b["mask"].shape == (97,) for b in batches)
  for key in ("x", "y", "x_mark", "y_mark"):
    got = np.concatenate([np.asarray(b[key])[np.asarray(b["mask"])] for b in batches])
    want = np.stack([src[i][key] for i in range(len(src))])
    np.testing.assert_array_equal(got, want)


def _toy_source(windows=203, seq_len=4, pred_len=2):
  rows = windows + seq_len + pred_len - 1
  values = np.repeat(np.arange(rows, dtype=np.float32)[:, None], 2, axis=1)  # row r holds r: x[0, 0] is the window
  marks = np.zeros((rows, 4), np.float32)
  return data.WindowSource(values, marks, 0, rows, seq_len, pred_len)


def test_train_order_is_a_seeded_permutation_and_the_device_gathers_its_windows():
  src = _toy_source()
  first = data.train_order(src, 16, seed=7, epoch=0)
  assert first.shape == (data.num_train_batches(src, 16), 16) == (12, 16)  # 203 // 16, the remainder dropped
  assert len(set(first.ravel())) == first.size  # no window twice within an epoch
  assert np.array_equal(data.train_order(src, 16, seed=7, epoch=0), first)
  assert not np.array_equal(data.train_order(src, 16, seed=7, epoch=1), first)
  assert not np.array_equal(data.train_order(src, 16, seed=8, epoch=0), first)
  batch = data.DeviceWindows(src).take(first[3])
  assert batch["x"].shape == (16, 4, 2) and batch["y"].shape == (16, 2, 2)
  np.testing.assert_array_equal(np.asarray(batch["x"])[:, 0, 0], first[3])  # row r holds r: window i starts at i
  host = data.host_batch(src, first[3])
  for key in ("x", "x_mark", "y", "y_mark"):
    np.testing.assert_array_equal(np.asarray(batch[key]), host[key])
  with pytest.raises(DataError, match="batch_size"):
    data.train_order(src, 500, seed=7, epoch=0)


# ----------------------------------------------------------------------------------------------------------------
# Resolving files and errors


def test_sha256_mismatch(tmp_path, monkeypatch):
  (tmp_path / "ETTh1.csv").write_text("date,OT\n2016-07-01 00:00:00,1.0\n")
  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path))
  with pytest.raises(DataError, match="ETTh1.csv.*sha256.*f18de3ad") as err:
    data.resolve_path("ETTh1")
  assert "\n" not in str(err.value)


@needs_data
def test_resolve_verified_file():
  assert data.resolve_path("weather") == DATA_DIR / "weather.csv"  # the CRLF file's own digest is accepted


def test_missing_explicit_path_and_unknown_name(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.resolve_path("ETTh1", str(tmp_path / "nope.csv"))
  with pytest.raises(DataError, match="ETTh1.*traffic"):
    data.resolve_path("ETTh3")


def test_no_url_means_error_not_download(tmp_path, monkeypatch):
  import pooch

  monkeypatch.setenv("MOLA_DATA_DIR", str(tmp_path))
  monkeypatch.setattr(pooch, "os_cache", lambda project: tmp_path / "cache")
  with pytest.raises(DataError, match="all_six_datasets.*MOLA_DATA_DIR"):
    data.resolve_path("traffic")


def test_load_csv_errors(tmp_path):
  kw = {"name": "x", "split": "ratio", "seq_len": 24}
  df = pd.read_csv(write_csv(tmp_path / "ok.csv", 200))
  df.rename(columns={"date": "time"}).to_csv(tmp_path / "nodate.csv", index=False)
  with pytest.raises(DataError, match="'date'"):
    data.load_csv(tmp_path / "nodate.csv", **kw)
  bad = df.astype({"c1": object})
  bad.loc[17, "c1"] = "abc"
  bad.to_csv(tmp_path / "text.csv", index=False)
  with pytest.raises(DataError, match=r"non-numeric.*'c1'.*row\(s\) 17"):
    data.load_csv(tmp_path / "text.csv", **kw)
  gap = df.copy()
  gap.loc[[3, 150], "OT"] = np.nan
  gap.to_csv(tmp_path / "gap.csv", index=False)
  with pytest.raises(DataError, match=r"missing.*'OT'.*row\(s\) 3, 150"):
    data.load_csv(tmp_path / "gap.csv", **kw)
  dates = df.copy()
  dates.loc[9, "date"] = "not a date"
  dates.to_csv(tmp_path / "dates.csv", index=False)
  with pytest.raises(DataError, match=r"dates at data row\(s\) 9.*'not a date'"):
    data.load_csv(tmp_path / "dates.csv", **kw)
  need = data.min_rows("ratio", 24)
  write_csv(tmp_path / "short.csv", need - 1)
  with pytest.raises(DataError, match=f"{need - 1} data rows.*at least {need} rows"):
    data.load_csv(tmp_path / "short.csv", **kw)
  s = data.load_csv(write_csv(tmp_path / "just.csv", need), **kw)  # the minimum gives one window per split
  assert all(len(data.window_source(s, k, 24, 1)) >= 1 for k in ("train", "val", "test"))


def test_custom_csv_through_load_series(tmp_path):
  # CRLF, exchange-style dates and OT not last: reordered, parsed, split 7:1:2, named by the stem.
  path = write_csv(tmp_path / "mine.csv", 300, crlf=True, freq="D", date_fmt="%Y/%-m/%-d %-H:%M")
  df = pd.read_csv(path)
  df[["date", "OT", "c0", "c1"]].to_csv(path, index=False, lineterminator="\r\n")
  s = data.load_series(cfg("ETTh1", seq_len=48, path=str(path)))
  assert s.name == "mine" and s.columns == ("c0", "c1", "OT")
  assert s.borders == data.split_borders("ratio", 300, 48)
  assert str(s.dates[1])[:10] == "2020-01-02"
  np.testing.assert_allclose(s.values[:210].mean(0), 0, atol=1e-5)


def test_registry_file_name_keeps_its_split(tmp_path):
  # A benchmark file moved elsewhere must not silently switch to 7:1:2 borders.
  path = write_csv(tmp_path / "ETTh1.csv", 14400, d=7)
  s = data.load_series(cfg(None, path=str(path)))
  assert s.name == "ETTh1" and s.borders == data.split_borders("ett_hour", 14400, 96)
