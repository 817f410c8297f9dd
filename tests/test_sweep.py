"""The sensitivity sweep (mola_jax/lab/sweep.py): grid parsing, one key at a time, stage 1 shared across points,
one row per point with its interval, plots, resume."""

from __future__ import annotations

import csv

import pytest
from conftest import tiny

from mola_jax import config_lib
from mola_jax.errors import ConfigError
from mola_jax.lab import sweep

RANK, EXPERTS = "technique.mola.rank", "technique.mola.num_experts"


def test_the_grid_parses_and_bad_items_are_config_errors():
  assert sweep.parse_grid(f"{RANK}=2,4; adapt.lr=1e-4,1e-3") == {RANK: (2, 4), "adapt.lr": (1e-4, 1e-3)}
  for bad in ("", RANK, f"{RANK}=", f"{RANK}=two"):
    with pytest.raises(ConfigError):
      sweep.parse_grid(bad)
  with pytest.raises(ConfigError, match="no 'nosuch'"):
    config_lib.with_values(config_lib.default(), {"technique.mola.nosuch": 1})


def test_one_at_a_time_varies_each_key_alone_and_grid_every_combination():
  grid = {RANK: (2, 4), "adapt.lr": (1e-4, 1e-3, 1e-2)}
  assert sweep.points("one_at_a_time", grid) == [{RANK: 2}, {RANK: 4}, {"adapt.lr": 1e-4}, {"adapt.lr": 1e-3},
                                                 {"adapt.lr": 1e-2}]  # fmt: skip
  assert len(sweep.points("grid", grid)) == 6
  with pytest.raises(ConfigError, match="study.mode"):
    sweep.points("random", grid)


def test_a_sweep_shares_stage1_writes_a_row_per_point_and_resumes(tmp_path, data_dir, capsys):
  cfg = tiny()
  cfg.data.name, cfg.horizon, cfg.segment_len = "ETTh1", 48, 24
  settings = sweep.defaults()
  settings.grid, settings.num_seeds = f"{RANK}=2,4;{EXPERTS}=1,3", 2
  settings.cells_per_process = 0  # in this process: capsys sees whether anything trains again
  rows = sweep.run(cfg, settings, tmp_path)
  assert [(r["key"], r["value"]) for r in rows] == [(RANK, "2"), (RANK, "4"), (EXPERTS, "1"), (EXPERTS, "3")]
  assert all(r["seeds"] == 2 and r["test_mse_ci95"] > 0 for r in rows)
  assert len(list((tmp_path / "pretrain").iterdir())) == 2  # one stage-1 run per seed, shared by all 4 points
  assert len(list((tmp_path / "points").iterdir())) == 4 * 2
  with open(tmp_path / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert float(table[1]["test_mse_mean"]) == pytest.approx(rows[1]["test_mse_mean"])
  assert (tmp_path / "sweep_technique_mola_rank.png").stat().st_size > 0
  assert (tmp_path / "sweep_technique_mola_num_experts.png").exists() and (tmp_path / "study.json").is_file()
  capsys.readouterr()
  again = sweep.run(cfg, settings, tmp_path)  # every point finished: nothing trains again
  assert "epoch" not in capsys.readouterr().out
  assert [r["test_mse_mean"] for r in again] == [r["test_mse_mean"] for r in rows]
