"""metrics.jsonl and TensorBoard: what a run reports per epoch of each stage and once for the test pass (the scores
themselves come from mola_jax/evaluation.py)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from mola_jax import workdir


class MetricsLog:
  """metrics.jsonl (one record per epoch of each stage and one for the test pass, each appended in one write) and,
  with `tb_dir`, the same numbers as TensorBoard scalars: every number of a record under "<stage>/<key>" (a
  per-segment list as "<stage>/<key>/segment_<k>") at step = the record's epoch."""

  def __init__(self, path: pathlib.Path, tb_dir: pathlib.Path | None = None):
    self.path = path
    self.tb = None
    if tb_dir is not None:
      from tensorboardX import SummaryWriter  # only runs that write summaries need it

      self.tb = SummaryWriter(str(tb_dir), flush_secs=30)

  def write(self, **record) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tb is None:
      return
    stage, step = record["stage"], record.get("epoch", 0)
    for key, value in record.items():
      if isinstance(value, bool) or key in ("stage", "epoch"):
        continue
      if isinstance(value, (int, float)):
        self.tb.add_scalar(f"{stage}/{key}", value, step)
      elif isinstance(value, list) and len(value) <= 64:  # per segment; per-step curves go in as figures
        for k, v in enumerate(value):
          self.tb.add_scalar(f"{stage}/{key}/segment_{k}", v, step)

  def mixtures(self, stage: str, epoch: int, weights: dict) -> None:
    """MoLA's mixture weights softmax(logits[k]) of every adapted layer: "<stage>/mixture/<layer>/segment_<k>/
    expert_<p>", so the run shows how the segments come to share (or split) the experts."""
    if self.tb is None:
      return
    for layer, w in weights.items():  # w [K, P]
      for (k, p), v in np.ndenumerate(np.asarray(w)):
        self.tb.add_scalar(f"{stage}/mixture/{layer}/segment_{k}/expert_{p}", float(v), epoch)

  def figure(self, tag: str, fig, step: int = 0) -> None:
    if self.tb is not None:
      self.tb.add_figure(tag, fig, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()

  def truncate(self, stage: str, epoch: int) -> None:
    """On resume: keep what was logged before `stage` reached `epoch` and drop the rest (it will be redone),
    including a last line that a kill cut short. The file is replaced in one rename. (TensorBoard keeps the
    redone epochs' first values too; it shows the last one written for a step.)"""
    if not self.path.is_file():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a partial last line: the process died while appending it
        break
      if record["stage"] == stage and record.get("epoch", 0) >= epoch or record["stage"] == "test":
        break
      kept.append(line)
    with workdir.atomic(self.path) as tmp:
      tmp.write_text("".join(line + "\n" for line in kept))
