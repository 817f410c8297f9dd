"""Every config key, its default and why, in one place; `validate` checks what can be checked before any array.

Dataset configs in `configs/` start from `default()` and change only what differs. The command line overrides
any key with the ml_collections grammar, e.g. `--config.horizon=192 --config.mola.rank=4`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

METHODS = ("mola", "lora", "mtf")
STAGES = ("all", "pretrain", "adapt")

# The method's first segment-length option per horizon (method.md §8); used when segment_len is unset.
DEFAULT_SEGMENT_LEN = {96: 24, 192: 48, 336: 84, 720: 180}


class ConfigError(ValueError):
  """A config that cannot run; the message says what is wrong and how to fix it."""


def default() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.method = "mola"  # mola: shared experts + per-segment mixtures; lora: one LoRA per segment; mtf: direct T-step
  cfg.stage = "all"  # all: stage 1 then stage 2; pretrain or adapt alone. mtf has one stage and ignores this.
  cfg.horizon = 96  # T, the forecast length that is scored
  cfg.segment_len = config_dict.placeholder(int)  # S; unset -> DEFAULT_SEGMENT_LEN[horizon]
  cfg.seed = 2023  # the official scripts' seed; report more seeds for anything that matters
  cfg.backbone = "itransformer"
  # Workdir of a stage-1 run to adapt (stage=adapt); unset -> this run's own workdir.
  cfg.init_from = config_dict.placeholder(str)

  cfg.data = ml_collections.ConfigDict()
  cfg.data.name = "ETTh1"  # a key of mola_jax.data.DATASETS, or "synthetic"
  cfg.data.path = config_dict.placeholder(str)  # a custom CSV (date column, OT last): 7:1:2 split
  cfg.data.seq_len = 96  # look-back L
  cfg.data.label_len = 48  # known decoder steps, read only by encoder-decoder backbones
  cfg.data.freq = "h"  # time features; the field's scripts never set it, so every dataset gets the hourly four
  cfg.data.features = "M"  # all channels in and out; the only mode implemented
  cfg.data.parity_quirk = False  # reproduce the MoLA fork's odd-row train start on 7:1:2 datasets
  cfg.data.eval_batch_size = 256  # padded and masked, so it changes speed only, never the score
  cfg.data.synthetic_rows = 4000  # synthetic data only
  cfg.data.synthetic_channels = 7

  # One sub-config per backbone; a backbone receives only its own (cfg.model[cfg.backbone]).
  cfg.model = ml_collections.ConfigDict()
  cfg.model.itransformer = ml_collections.ConfigDict()  # official ETTh1 sizes (method.md §8)
  cfg.model.itransformer.d_model = 128
  cfg.model.itransformer.d_ff = 128
  cfg.model.itransformer.n_heads = 8
  cfg.model.itransformer.e_layers = 2
  cfg.model.itransformer.dropout = 0.1

  # Stage 1 (and mtf): an ordinary direct forecaster (method.md §8).
  cfg.pretrain = ml_collections.ConfigDict()
  cfg.pretrain.lr = 5e-4
  cfg.pretrain.epochs = 5
  cfg.pretrain.patience = 2
  cfg.pretrain.batch_size = 32

  # Stage 2: adapters on the frozen backbone.
  cfg.adapt = ml_collections.ConfigDict()
  cfg.adapt.lr = 1e-3
  cfg.adapt.epochs = 10
  cfg.adapt.patience = 3  # per segment (method.md §7)
  cfg.adapt.batch_size = 32

  cfg.mola = ml_collections.ConfigDict()
  cfg.mola.num_experts = 6  # P (the scripts pass 6; the CLI default was 3)
  cfg.mola.rank = 8  # r
  cfg.mola.a_std = 0.01  # A ~ N(0, a_std^2), B = 0, no alpha/r scaling
  cfg.mola.targets = ("ffn",)  # layer groups that get adapters; a backbone may also offer "attn"
  # Share the dropout masks of the pre-adapter prefix across segments in training. Off: each segment draws its
  # own, as the official K separate passes do (method.md §12). Eval always shares the prefix (it is exact there).
  cfg.mola.share_prefix_dropout = False

  cfg.log_every = 50  # steps between progress-bar updates (each one reads a loss back from the device)
  return cfg


def segment_len(cfg) -> int:
  """S for stage 1 and stage 2; mtf predicts the whole horizon in one segment."""
  if cfg.method == "mtf":
    return cfg.horizon
  if cfg.segment_len is not None:
    return cfg.segment_len
  if cfg.horizon not in DEFAULT_SEGMENT_LEN:
    raise ConfigError(
        f"no default segment length for horizon {cfg.horizon}; set --config.segment_len=S with S dividing it")
  return DEFAULT_SEGMENT_LEN[cfg.horizon]


def validate(cfg) -> None:
  """Raise ConfigError for anything wrong that needs no data or arrays to see."""
  if cfg.method not in METHODS:
    raise ConfigError(f"unknown method {cfg.method!r}; use one of {', '.join(METHODS)}")
  if cfg.stage not in STAGES:
    raise ConfigError(f"unknown stage {cfg.stage!r}; use one of {', '.join(STAGES)}")
  if cfg.horizon <= 0:
    raise ConfigError(f"horizon must be positive, got {cfg.horizon}")
  s = segment_len(cfg)
  if s <= 0 or cfg.horizon % s:
    raise ConfigError(
        f"horizon {cfg.horizon} is not divisible by segment_len {s}; pick S with horizon % S == 0")
  if cfg.data.features != "M":
    raise ConfigError(f"features mode {cfg.data.features!r} is not implemented; use 'M'")
  if cfg.data.seq_len <= 0:
    raise ConfigError(f"data.seq_len must be positive, got {cfg.data.seq_len}")
  from mola_jax.models import BACKBONES  # late: models import jax, config checks should not need to

  if cfg.backbone not in BACKBONES:
    raise ConfigError(f"unknown backbone {cfg.backbone!r}; use one of {', '.join(sorted(BACKBONES))}")
  for key in ("pretrain", "adapt"):
    sub = cfg[key]
    if sub.batch_size <= 0 or sub.epochs <= 0 or sub.lr <= 0:
      raise ConfigError(f"{key}.batch_size, {key}.epochs and {key}.lr must be positive")
  bad = set(cfg.mola.targets) - {"ffn", "attn"}
  if bad:
    raise ConfigError(f"unknown mola.targets {sorted(bad)}; use a tuple of 'ffn' and/or 'attn'")
