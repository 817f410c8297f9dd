"""Load a finished run from its workdir and forecast with it (plots, the forecast CLI, analysis)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
from flax import nnx

from mola_jax import checkpointing, config_lib, plan
from mola_jax.models import Ctx, adapters, build, predict


@dataclasses.dataclass
class Run:
  cfg: ml_collections.ConfigDict
  model: nnx.Module
  scaler: dict  # {"columns", "mean", "std", "freq", ...} of the training split
  stage: str  # the checkpoint loaded: "adapt" (stage 2) or "pretrain" (stage 1 / mtf)
  segments: int  # K
  horizon: int  # K * S

  def forecast(self, batch: dict) -> np.ndarray:
    """batch {"x": [B, L, D], "x_mark": [B, L, F], "y_mark": [B, T, F]} -> [B, T, D] (standardised scale)."""
    out = np.asarray(predict(self.model, batch, Ctx(segments=self.segments)))  # [B, K, S, D]
    return out.reshape(out.shape[0], -1, out.shape[-1])


def load_run(workdir) -> Run:
  """The selected state of the last stage that ran in `workdir` (stage 2 if present)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").is_file() or not (workdir / "scaler.json").is_file():
    raise checkpointing.CheckpointError(
      f"{workdir} holds no finished training run (no config.json/scaler.json); pass the --workdir of a training run"
    )
  cfg = config_lib.from_json(json.loads((workdir / "config.json").read_text()))
  scaler = json.loads((workdir / "scaler.json").read_text())
  # The last of the method's stages that left a checkpoint: stage 2 if it ran, else stage 1 (or mtf's one stage).
  done = [st for st in plan.make(cfg).method_stages if checkpointing.stage_dir(workdir, st.name).is_dir()]
  if not done:
    raise checkpointing.CheckpointError(
      f"{workdir} holds no finished stage (no checkpoints/pretrain or "
      "checkpoints/adapt); let its training run finish first"
    )
  stage = done[-1]
  adapting = stage.name == plan.ADAPT
  model = build(
    cfg,
    channels=len(scaler["columns"]),
    marks=scaler["marks"],
    pred_len=stage.pred_len,
    segments=stage.segments if adapting else 0,
    rngs=nnx.Rngs(0),
  )
  if adapting and cfg.adapt.selection == "per_segment":
    adapters.bake(model)  # saved as fixed per-segment deltas
  checkpointing.restore_into(model, checkpointing.stage_dir(workdir, stage.name))
  return Run(cfg, model, scaler, stage.name, stage.segments, stage.window)
