"""The reproduction command: S chosen on validation, stage 1 shared, table with CIs, plots, resume."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO, tiny

from mola_jax import config_lib, configs, plan
from mola_jax.errors import ConfigError
from mola_jax.lab import reproduce, study
from mola_jax.lab.stats import ci95


def test_every_dataset_config_loads_and_validates():
  """Every config and each variant it offers (etth1:fixed_s, every dataset's :cyclenet and :cyclenet_mlp)."""
  names = configs.names()
  assert {
    "etth1",
    "etth2",
    "ettm1",
    "ettm2",
    "weather",
    "exchange_rate",
    "national_illness",
    "electricity",
    "traffic",
    "synthetic",
  } <= set(names)
  for name in names:
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in (None, *getattr(module, "VARIANTS", ())):
      cfg = module.get_config(variant) if variant else module.get_config()
      for h in reproduce.horizons_of(cfg, reproduce.defaults()):  # every horizon a study runs by default
        cfg.horizon = h
        plan.make(cfg)
  assert reproduce.horizons_of(config_lib.load("national_illness"), reproduce.defaults()) == [24, 36, 48, 60]


def test_ci95_is_the_student_t_interval():
  assert ci95([0.5]) == 0.0
  # n = 3, sample std 0.1: t(0.975, 2) = 4.3027 -> 4.3027 * 0.1 / sqrt(3)
  assert ci95([0.4, 0.5, 0.6]) == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)


def settings(methods=("mtf", "mola"), num_seeds=1, **more):
  s = reproduce.defaults()
  s.horizons, s.methods, s.num_seeds = (48,), methods, num_seeds
  s.cells_per_process = 0  # in this process, where the tests' spies on study.train_runs see the runs
  s.update(**more)
  return s


def spy(trained: list, keys: tuple):
  """study.train_runs that notes the given config keys of every run it trains."""
  real = study.train_runs

  def train_runs(cfgs, workdirs):
    trained.extend(tuple(c[k] for k in keys) for c in cfgs)
    return real(cfgs, workdirs)

  return train_runs


def test_reproduce_selects_on_validation_shares_stage1_and_resumes(tmp_path, monkeypatch):
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.segment_options = {"48": (24, 16)}
  s = settings(("mtf", "lora", "mola"), 2)
  rows = reproduce.run(cfg, s, tmp_path)

  assert [(r["method"], r["horizon"], r["seeds"]) for r in rows] == [("mtf", 48, 2), ("lora", 48, 2), ("mola", 48, 2)]
  assert sum(r["winner"] for r in rows) == 1
  assert min(rows, key=lambda r: r["test_mse_mean"])["winner"]
  # Each adapted method says whether it beat its own mtf on validation (the means of the chosen cells).
  mtf_val = rows[0]["val_mse_mean"]
  assert rows[0]["val_vs_mtf"] == "—"
  for r in rows[1:]:
    assert r["val_vs_mtf"] == f"{'yes' if r['val_mse_mean'] <= mtf_val else 'no'} ({r['val_mse_mean'] - mtf_val:+.4f})"
  with (tmp_path / "table.csv").open() as f:
    assert tuple(next(csv.reader(f))) == tuple(rows[0])
  with (tmp_path / "selection.csv").open() as f:
    selection = list(csv.DictReader(f))
  for method in ("lora", "mola"):
    options = [r for r in selection if r["method"] == method]
    assert sorted(int(r["segment_len"]) for r in options) == [16, 24]
    best = min(options, key=lambda r: float(r["val_mse"]))
    assert best["chosen"] == "True" and sum(r["chosen"] == "True" for r in options) == 1
    assert next(r for r in rows if r["method"] == method)["segment_len"] == int(best["segment_len"])
  # One stage-1 model per (S, seed), shared by lora and mola; the second seed trains the chosen S only.
  stage1 = sorted(p.name for p in (tmp_path / "pretrain").iterdir())
  chosen = {r["method"]: r["segment_len"] for r in rows}
  assert stage1 == sorted({"S16-seed2023", "S24-seed2023"} | {f"S{chosen[m]}-seed2024" for m in ("lora", "mola")})
  for name in ("table.md", "per_step_T48.png", "windows_T48.png", "config.json", "study.json"):
    assert (tmp_path / name).stat().st_size > 0

  # Rerunning trains nothing and gives the same table.
  monkeypatch.setattr(study, "train_runs", lambda *a: pytest.fail("a finished cell was retrained"))
  assert reproduce.run(cfg, s, tmp_path) == rows


def test_a_second_recipe_reuses_the_first_studys_stage1_and_mtf_runs(tmp_path, monkeypatch):
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.segment_len = 24
  reproduce.run(cfg, settings(), tmp_path / "official")

  improved = tiny()
  improved.update_from_flattened_dict({"data.name": "synthetic", "data.synthetic_rows": 1200, "segment_len": 24})
  improved.adapt.selection = "per_segment"  # a stage-2 change only
  reuse = settings(reuse_from=str(tmp_path / "official"))
  trained = []
  monkeypatch.setattr(study, "train_runs", spy(trained, ("method", "stage")))
  rows = reproduce.run(improved, reuse, tmp_path / "improved")
  assert trained == [("mola", "adapt")]  # stage 1 and mtf came from the first study
  assert not (tmp_path / "improved" / "pretrain").exists()
  assert rows[0]["test_mse_mean"] == reproduce.run(cfg, settings(), tmp_path / "official")[0]["test_mse_mean"]

  improved.pretrain.lr = 1e-3  # a different stage-1 recipe is a different run: trained here, not reused
  trained.clear()
  reproduce.run(improved, reuse, tmp_path / "changed")
  assert ("mtf", "all") in trained and ("mola", "pretrain") in trained


def test_auto_segments_add_whole_periods_and_reuse_the_config_options_runs(tmp_path, monkeypatch):
  """segment_options="auto" on the synthetic series (a 24- and a 168-step cycle): the training split's periods
  give S = 24 for T = 48 (K = 2) beside the config's 16; a study of the config's options lends its runs."""
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1200
  cfg.segment_options = {"48": (16,)}
  reproduce.run(cfg, settings(segment_options="config"), tmp_path / "paper")
  assert not (tmp_path / "paper" / "periods.json").exists()  # config: the options alone, nothing detected

  auto = settings(segment_options="auto", reuse_from=str(tmp_path / "paper"))
  trained = []
  monkeypatch.setattr(study, "train_runs", spy(trained, ("stage", "segment_len")))
  reproduce.run(cfg, auto, tmp_path / "auto")
  assert 24 in json.loads((tmp_path / "auto" / "periods.json").read_text())["periods"]
  with (tmp_path / "auto" / "selection.csv").open() as f:
    assert sorted(int(r["segment_len"]) for r in csv.DictReader(f) if r["method"] == "mola") == [16, 24]
  assert trained == [("pretrain", 24), ("adapt", 24)]  # S = 16's stage 1 and 2 and mtf came from the first study

  with pytest.raises(ConfigError, match="segment_options"):
    reproduce.run(cfg, settings(segment_options="weekly"), tmp_path / "bad")


def test_a_run_made_before_a_config_key_existed_is_the_same_run():
  """A key added after a run counts as its default, so reuse_from still finds the run."""
  cfg = config_lib.default()
  new = json.loads(cfg.to_json_best_effort())
  old = json.loads(cfg.to_json_best_effort())
  del old["technique"]["mola"]["a_std"], old["data"]["val_protocol"]
  assert study.run_identity(old) == study.run_identity(new)
  assert study.pretrain_identity(old) == study.pretrain_identity(new)
  old["technique"]["mola"]["rank"] = 4
  assert study.run_identity(old) != study.run_identity(new)
  old["technique"]["mola"]["rank"], old["technique"]["lora"]["rank"] = 8, 4  # another method's settings: no matter
  assert study.run_identity(old) == study.run_identity(new)


@pytest.mark.parametrize("num_seeds", [2, 3])
def test_seeds_in_one_program_give_what_serial_seeds_give(num_seeds, tmp_path, monkeypatch):
  """A study whose seeds train side by side (one program for every seed of a cell, both stages and mtf) writes
  the runs a serial study writes: each seed's test MSE to 1e-5 and the same kept epochs, in the same workdirs."""
  cfg = tiny()
  cfg.data.name, cfg.data.synthetic_rows = "synthetic", 1000
  cfg.segment_len, cfg.adapt.epochs = 24, 3
  cfg.pretrain.update(epochs=8, patience=1, lr=1e-2, lr_decay=1.0)  # the seeds stop after different epochs
  serial = tmp_path / "serial"
  reproduce.run(cfg, settings(num_seeds=num_seeds), serial)
  programs, real = [], study.train_runs
  monkeypatch.setattr(study, "train_runs", lambda cfgs, dirs: programs.append(len(cfgs)) or real(cfgs, dirs))
  together = tmp_path / "together"
  reproduce.run(cfg, settings(num_seeds=num_seeds, seeds_in_one_program=True), together)
  assert programs == [num_seeds] * 3  # mtf, stage 1, stage 2: each one program for all the seeds
  cells = sorted(p.relative_to(serial) for p in serial.glob("*/*/results.json"))
  assert len(cells) == 3 * num_seeds
  assert cells == sorted(p.relative_to(together) for p in together.glob("*/*/results.json"))
  epochs = {}  # (method or stage-1 run, stage) -> the numbers of epochs its seeds trained
  for cell in cells:
    kind = cell.parent.name.rsplit("-seed", 1)[0]
    for stage, record in json.loads((together / cell).read_text())["stages"].items():
      epochs.setdefault((kind, stage), set()).add(record["epochs"])
  assert any(len(e) > 1 for e in epochs.values()), epochs  # seeds stopped apart: a finished one was held
  for cell in cells:
    a, b = (json.loads((root / cell).read_text()) for root in (serial, together))
    assert a["test_mse"] == pytest.approx(b["test_mse"], rel=1e-5), cell
    assert a["seed"] == b["seed"]
    for stage in a["stages"]:
      assert a["stages"][stage]["best_epoch"] == b["stages"][stage]["best_epoch"], (cell, stage)
