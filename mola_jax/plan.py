"""The run plan: what a config trains, stage by stage. train, inference, bench, scaling and reproduce all derive
S, K and every stage's shapes from here, so the derivation is written once.

    plan = make(cfg)          # validates the whole config first
    for stage in plan.stages: # "pretrain" (stage 1, or mtf's one stage), then "adapt" (stage 2)
      ... stage.pred_len, stage.segments, stage.window, stage.recipe, stage.seed ...

One vocabulary for the stages, end to end: the config (`stage` = all | pretrain | adapt), metrics.jsonl records,
results.json's "stages" and the checkpoint directories (checkpoints/pretrain, checkpoints/adapt) all use the
names "pretrain" and "adapt".
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mola_jax import config_lib, models, sharding

PRETRAIN, ADAPT = "pretrain", "adapt"


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # PRETRAIN (stage 1; mtf's only stage) or ADAPT (stage 2)
  pred_len: int  # steps the head emits per segment: S, or T for mtf
  segments: int  # K: segments forecast side by side (1 in pretrain)
  recipe: ml_collections.ConfigDict  # cfg.pretrain or cfg.adapt
  seed: int  # seed of the parameters the stage creates (the backbone in pretrain, the adapters in adapt)

  @property
  def window(self) -> int:
    """Target steps of every training window: S in stage 1, T in stage 2 and mtf."""
    return self.pred_len * self.segments


@dataclasses.dataclass(frozen=True)
class Plan:
  method: str
  horizon: int  # T, the forecast length that is scored
  segment_len: int  # S; T for mtf
  segments: int  # K = T / S; 1 for mtf
  seed: int  # the run's seed (cfg.seed)
  stages: tuple[Stage, ...]  # what this run trains, in order (cfg.stage picks from the method's stages)
  method_stages: tuple[Stage, ...]  # every stage of the method

  @property
  def final(self) -> Stage:
    """The stage whose model the run tests and a finished run serves."""
    return self.stages[-1]

  @property
  def two_stage(self) -> bool:
    return len(self.method_stages) == 2


def stage_seed(seed: int, stage: str) -> int:
  """The parameter seed of a stage. Pretrain keeps the run's seed; adapt draws from (seed, "adapt"), a stream no
  other seed's stages use (before, stage 2 used seed + 1: the stream that built the next seed's backbone)."""
  if stage == PRETRAIN:
    return seed
  return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])


def make(cfg) -> Plan:
  """The plan of `cfg`, after checking everything that can be checked without data (config values, backbone and
  layer-group names, mesh rules): a bad config fails here, before anything is read or written."""
  config_lib.validate(cfg)
  models.validate(cfg)
  sharding.validate(cfg.mesh)
  s = config_lib.segment_len(cfg)
  k = cfg.horizon // s
  if cfg.method == "mtf":
    stages = (Stage(PRETRAIN, cfg.horizon, 1, cfg.pretrain, stage_seed(cfg.seed, PRETRAIN)),)
    return Plan(cfg.method, cfg.horizon, cfg.horizon, 1, cfg.seed, stages, stages)
  both = (
    Stage(PRETRAIN, s, 1, cfg.pretrain, stage_seed(cfg.seed, PRETRAIN)),
    Stage(ADAPT, s, k, cfg.adapt, stage_seed(cfg.seed, ADAPT)),
  )
  chosen = {"all": both, PRETRAIN: both[:1], ADAPT: both[1:]}[cfg.stage]
  return Plan(cfg.method, cfg.horizon, s, k, cfg.seed, chosen, both)
