"""Config files load, overrides follow the ml_collections grammar, and bad configs fail before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from absl import flags
from conftest import REPO
from ml_collections import config_flags

from mola_jax import config_lib
from mola_jax.models import BACKBONES


def parse(*overrides):
  argv = ["prog", f"--config={REPO / 'configs' / 'etth1.py'}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def test_etth1_defaults_are_the_official_recipe():
  cfg = parse()
  assert (cfg.data.name, cfg.method, cfg.horizon, cfg.seed) == ("ETTh1", "mola", 96, 2023)
  assert (
    cfg.model.itransformer.d_model,
    cfg.model.itransformer.d_ff,
    cfg.model.itransformer.e_layers,
    cfg.model.itransformer.n_heads,
  ) == (128, 128, 2, 8)
  assert (cfg.pretrain.lr, cfg.pretrain.epochs, cfg.pretrain.patience, cfg.pretrain.batch_size) == (5e-4, 5, 2, 32)
  assert (cfg.adapt.lr, cfg.adapt.epochs, cfg.adapt.patience) == (1e-3, 10, 3)
  mola = cfg.technique.mola
  assert (mola.rank, mola.num_experts, mola.a_std) == (8, 6, 0.01)
  assert (cfg.technique.fourier.n, cfg.technique.fourier.scale) == (100, 150.0)  # FourierFT's paper
  config_lib.validate(cfg)
  assert config_lib.segment_len(cfg) == 24


@pytest.mark.parametrize("horizon,s", [(96, 24), (192, 48), (336, 84), (720, 180)])
def test_default_segment_len_per_horizon(horizon, s):
  assert config_lib.segment_len(parse(f"--config.horizon={horizon}")) == s


def test_overrides_of_the_documented_keys():
  cfg = parse(
    "--config.method=lora",
    "--config.horizon=192",
    "--config.segment_len=64",
    "--config.seed=7",
    "--config.data.path=/tmp/x.csv",
    "--config.adapt.targets=('ffn','attn')",
  )
  assert (cfg.method, cfg.horizon, cfg.segment_len, cfg.seed, cfg.data.path) == ("lora", 192, 64, 7, "/tmp/x.csv")
  assert tuple(cfg.adapt.targets) == ("ffn", "attn")
  assert config_lib.segment_len(cfg) == 64
  assert config_lib.segment_len(parse("--config.method=mtf", "--config.horizon=336")) == 336


def test_a_typo_in_a_key_is_rejected():
  with pytest.raises(Exception, match="lrr"):
    parse("--config.pretrain.lrr=1e-3")


@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.segment_len=36", "not divisible"),
    ("--config.method=moe", "unknown method"),
    ("--config.backbone=resnet", "unknown backbone"),
    ("--config.stage=finetune", "unknown stage"),
    ("--config.adapt.lr_decay=0", "lr_decay must lie in"),
  ],
)
def test_validate_names_the_problem(override, message):
  """plan.make runs every check: the config's own values, and the names the models module knows."""
  from mola_jax import plan

  with pytest.raises(config_lib.ConfigError, match=message):
    plan.make(parse(override))


def test_cli_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "mola_jax.train",
      "--config",
      str(REPO / "configs" / "etth1.py"),
      "--config.segment_len=36",
      "--workdir",
      str(workdir),
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert proc.returncode == 2
  assert "not divisible" in proc.stderr.strip().splitlines()[-1]
  assert not workdir.exists()


def test_fixed_s_variant_keeps_only_the_default_segment_length():
  argv = ["prog", f"--config={REPO / 'configs' / 'etth1.py'}:fixed_s"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  fixed = fv.config
  assert {h: tuple(o) for h, o in fixed.segment_options.items()} == {
    "96": (24,),
    "192": (48,),
    "336": (84,),
    "720": (180,),
  }
  assert config_lib.segment_len(fixed) == 24 and fixed.backbone == "itransformer"


def test_the_run_config_holds_no_study_settings():
  cfg = config_lib.default()
  assert not {"bench", "reproduce", "sweep", "mola"} & set(cfg.keys())
  assert set(cfg.technique) == set(config_lib.METHODS) and set(cfg.model) == set(BACKBONES)


def test_a_config_saved_before_the_keys_moved_is_upgraded_in_one_place():
  """An old run's config.json (MoLA settings under `mola`, the studies' keys in the run config) loads with today's
  keys: the technique settings under the run's own method (renamed where they were), the stage-2 settings under
  `adapt`, the studies' keys gone; the resume check then sees the same run."""
  from mola_jax import workdir

  old = {
    "method": "fourier", "horizon": 96,
    "mola": {"rank": 4, "num_experts": 3, "fourier_n": 50, "fourier_scale": 1.0, "targets": ["ffn", "attn"],
             "official_init": True, "share_prefix_dropout": False, "adapter_dim": None},
    "reproduce": {"num_seeds": 3}, "bench": {"tiny": True}, "sweep": {"grid": ""},
  }  # fmt: skip
  new = config_lib.upgrade(old)
  assert new["technique"] == {"fourier": {"n": 50, "scale": 1.0}}
  assert new["adapt"] == {"targets": ["ffn", "attn"], "official_init": True, "share_prefix_dropout": False}
  assert not {"mola", "reproduce", "bench", "sweep"} & set(new)
  cfg = config_lib.from_json(old)
  assert (cfg.technique.fourier.n, cfg.technique.fourier.scale, cfg.adapt.official_init) == (50, 1.0, True)
  assert cfg.technique.mola.rank == 8  # another method's settings stay at their defaults
  same = config_lib.default()
  same.method, same.technique.fourier.n, same.technique.fourier.scale = "fourier", 50, 1.0
  same.adapt.targets, same.adapt.official_init = ("ffn", "attn"), True
  assert workdir.config_diff(old, json.loads(same.to_json_best_effort())) == []
  assert config_lib.upgrade(config_lib.upgrade(old)) == new  # today's keys come back unchanged


@pytest.mark.parametrize(
  "decay,start,per_epoch",
  [(0.5, 3, [1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]), (1.0, 3, [1.0] * 6), (0.8, 5, [1.0] * 4 + [0.8, 0.64])],
)
def test_lr_schedule_per_epoch(decay, start, per_epoch):
  """TSLib's type1 at 0.5 from epoch 3 (full lr for two epochs, then halved each epoch); 1.0 keeps the lr
  constant; CycleNet's type3: full lr for four epochs, then 0.8 per epoch."""
  from mola_jax import steps

  schedule = steps.lr_schedule(1e-3, steps_per_epoch=5, decay=decay, decay_from=start)
  got = [float(schedule(epoch * 5 + offset)) / 1e-3 for epoch in range(6) for offset in (0, 4)]
  assert got == pytest.approx([f for f in per_epoch for _ in (0, 4)])
