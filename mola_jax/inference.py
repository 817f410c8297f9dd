"""Load a finished run from its workdir and forecast with it (plots, the forecast CLI, analysis)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
from flax import nnx

from mola_jax import checkpointing, config_lib
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
    raise checkpointing.CheckpointError(f"{workdir} holds no finished training run (no config.json/scaler.json); "
                                        "pass the --workdir of a training run")
  cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  scaler = json.loads((workdir / "scaler.json").read_text())
  s = config_lib.segment_len(cfg)
  stage = "adapt" if cfg.method != "mtf" and checkpointing.stage_dir(workdir, "adapt").is_dir() else "pretrain"
  pred_len = cfg.horizon if cfg.method == "mtf" else s
  segments = cfg.horizon // s if stage == "adapt" else 1
  model = build(cfg, channels=len(scaler["columns"]), marks=scaler["marks"], pred_len=pred_len,
                segments=segments if stage == "adapt" else 0, rngs=nnx.Rngs(0))
  if stage == "adapt" and cfg.adapt.get("selection") == "per_segment":
    adapters.bake(model)  # saved as fixed per-segment deltas
  checkpointing.restore_into(model, checkpointing.stage_dir(workdir, stage))
  return Run(cfg, model, scaler, stage, segments, segments * pred_len)
