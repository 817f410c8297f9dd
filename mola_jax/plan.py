"""The run plan: what a config trains, stage by stage, and the typed settings each module takes from the config
(the config is read here and in config_lib, not deeper). train, inference, the studies and the AOT compile all
derive S, K and every stage's shapes from here, so the derivation is written once.

    plan = make(cfg)          # validates the whole config first
    for stage in plan.stages: # "pretrain" (stage 1, or mtf's one stage), then "adapt" (stage 2)
      ... stage.pred_len, stage.segments, stage.window, stage.recipe, stage.seed ...
    plan.model                # models.ModelSpec: backbone, sizes, method and its settings
    plan.loop, plan.evaluation  # how fit trains a stage; how validation and the test score it

One vocabulary for the stages, end to end: the config (`stage` = all | pretrain | adapt), metrics.jsonl records,
results.json's "stages" and the checkpoint directories (checkpoints/pretrain, checkpoints/adapt) all use the
names "pretrain" and "adapt".
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mola_jax import config_lib, models, sharding, steps
from mola_jax.models.techniques import TECHNIQUES

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
class Loop:
  """How fit trains a stage beyond its recipe: the seed of the window orders and dropout, the compute dtype, and
  when it reports and saves resume points (those change speed and safety, never the result)."""

  seed: int
  compute_dtype: str  # cfg.compute_dtype: "float32", or "bfloat16" on float32 master weights
  target_only: bool  # data.features == "MS": the loss reads the target (the last channel) alone
  chunk_steps: int  # train steps per program call (a lax.scan on the device)
  checkpoint_every_seconds: float
  checkpoint_every_steps: int  # 0: by time only
  profile_steps: int  # N > 0: a profiler trace of N steady-state steps per stage
  placement: str = "auto"  # data.placement: where a panel's training windows are gathered (data/feeds.py)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """How validation, the test pass and the prediction intervals score a model (mola_jax/evaluation.py)."""

  seq_len: int  # L: the windows' look-back
  batch_size: int  # cfg.data.eval_batch_size: padded and masked, so speed only
  protocol: str  # cfg.data.val_protocol: "full" or "official"
  seed: int  # the official protocol's shuffle
  compute_dtype: str
  intervals: tuple[float, ...]  # levels of the split-conformal intervals; () for none
  target_only: bool = False  # data.features == "MS": every score reads the target (the last channel) alone


@dataclasses.dataclass(frozen=True)
class Plan:
  method: str
  horizon: int  # T, the forecast length that is scored
  segment_len: int  # S; T for mtf
  segments: int  # K = T / S; 1 for mtf
  seed: int  # the run's seed (cfg.seed)
  stages: tuple[Stage, ...]  # what this run trains, in order (cfg.stage picks from the method's stages)
  method_stages: tuple[Stage, ...]  # every stage of the method
  model: models.ModelSpec
  loop: Loop
  evaluation: Evaluation
  stage: str  # cfg.stage: all | pretrain | adapt
  matmul_precision: str  # cfg.matmul_precision, recorded in results.json

  @property
  def final(self) -> Stage:
    """The stage whose model the run tests and a finished run serves."""
    return self.stages[-1]

  @property
  def two_stage(self) -> bool:
    return len(self.method_stages) == 2


def step_options(stage: Stage, loop: Loop) -> steps.StepOptions:
  """How the stage's train step computes."""
  share = stage.name == ADAPT and stage.recipe.share_prefix_dropout
  return steps.StepOptions(stage.segments, loop.target_only, stage.recipe.loss, loop.compute_dtype, share)


def eval_options(stage: Stage, evaluation: Evaluation) -> steps.StepOptions:
  """How the stage's eval step computes (validation, the test pass, the intervals)."""
  return steps.StepOptions(stage.segments, evaluation.target_only, compute_dtype=evaluation.compute_dtype)


def stage_seed(seed: int, stage: str) -> int:
  """The parameter seed of a stage. Pretrain keeps the run's seed; adapt draws from (seed, "adapt"), a stream no
  other seed's stages use (before, stage 2 used seed + 1: the stream that built the next seed's backbone)."""
  if stage == PRETRAIN:
    return seed
  return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])


def model_spec(cfg) -> models.ModelSpec:
  """What the models build from the config (models.build)."""
  return models.ModelSpec(
    backbone=cfg.backbone,
    sizes=cfg.model[cfg.backbone],
    seq_len=cfg.data.seq_len,
    method=cfg.method,
    settings=cfg.technique[cfg.method],
    targets=models.adapted_groups(cfg.backbone, cfg.method, cfg.adapt.targets),
    official_init=cfg.adapt.official_init,
    segment_heads=cfg.adapt.segment_heads,
  )


def loop(cfg) -> Loop:
  return Loop(
    seed=cfg.seed,
    compute_dtype=cfg.compute_dtype,
    target_only=cfg.data.features == "MS",
    chunk_steps=cfg.chunk_steps,
    checkpoint_every_seconds=cfg.checkpoint_every_seconds,
    checkpoint_every_steps=cfg.checkpoint_every_steps,
    profile_steps=cfg.profile_steps,
    placement=cfg.data.placement,
  )


def evaluation(cfg) -> Evaluation:
  d = cfg.data
  return Evaluation(d.seq_len, d.eval_batch_size, d.val_protocol, cfg.seed, cfg.compute_dtype, tuple(cfg.intervals),
                    d.features == "MS")  # fmt: skip


def make(cfg) -> Plan:
  """The plan of `cfg`, after checking everything that can be checked without data (config values, backbone and
  layer-group names, mesh rules): a bad config fails here, before anything is read or written."""
  config_lib.validate(cfg)
  models.validate(cfg.backbone, cfg.method, cfg.adapt.targets, cfg.adapt.selection, tuple(cfg.data.future_covariates),
                  segment_heads=cfg.adapt.segment_heads)  # fmt: skip
  sharding.validate(cfg.mesh)
  s = config_lib.segment_len(cfg)
  k = cfg.horizon // s
  settings = {
    "model": model_spec(cfg), "loop": loop(cfg), "evaluation": evaluation(cfg), "stage": cfg.stage,
    "matmul_precision": cfg.matmul_precision,
  }  # fmt: skip
  if not TECHNIQUES[cfg.method].two_stage:
    stages = (Stage(PRETRAIN, cfg.horizon, 1, cfg.pretrain, stage_seed(cfg.seed, PRETRAIN)),)
    return Plan(cfg.method, cfg.horizon, cfg.horizon, 1, cfg.seed, stages, stages, **settings)
  both = (
    Stage(PRETRAIN, s, 1, cfg.pretrain, stage_seed(cfg.seed, PRETRAIN)),
    Stage(ADAPT, s, k, cfg.adapt, stage_seed(cfg.seed, ADAPT)),
  )
  chosen = {"all": both, PRETRAIN: both[:1], ADAPT: both[1:]}[cfg.stage]
  return Plan(cfg.method, cfg.horizon, s, k, cfg.seed, chosen, both, **settings)
