"""Evaluation metrics and metrics.jsonl: the eval step's device sums become numbers here, with one host read per
evaluated split."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mola_jax import data, sharding, steps, workdir


def summarise(acc: dict, segments: int, channels: int) -> dict:
  """Device sums from the eval step -> metrics; one host read. Global element means (docs/protocol.md §7)."""
  acc = sharding.fetch(acc)
  n = int(acc["count"])
  per_step = acc["sq"] / (n * channels)  # [T]
  return {
    "mse": float(acc["sq"].sum() / (n * per_step.size * channels)),
    "mae": float(acc["abs"].sum() / (n * per_step.size * channels)),
    "per_step_mse": per_step.tolist(),
    "per_segment_mse": per_step.reshape(segments, -1).mean(axis=1).tolist(),
    "windows": n,
  }


def evaluate(eval_step, states, windows: data.DeviceWindows, batch_size: int, segments: int) -> dict:
  """Every window of a split once, in order (the last batch padded and masked)."""
  acc = steps.empty_acc(windows.pred_len)
  for idx, mask in zip(*data.eval_order(windows, batch_size), strict=True):
    acc = eval_step(acc, states, windows.take(idx, mask))
  return summarise(acc, segments, windows.values.shape[-1])


def evaluate_official(
  eval_step, states, windows: data.DeviceWindows, batch_size: int, segments: int, *, seed: int, epoch: int
) -> dict:
  """The official code's validation score (data.val_protocol="official"): shuffled batches of `batch_size` drawn
  by (seed, epoch), the incomplete last batch dropped, and each number the mean over batches of the batch's own
  mean (per step, so per segment too). Batch means are summed on the device: one host read, as `evaluate`."""
  order = data.val_order(windows, batch_size, seed=seed, epoch=epoch)  # [n, B]
  mask = np.ones(batch_size, bool)
  sums = None  # {"sq", "abs"}: [T] sums of the batches' per-step means
  for idx in order:
    acc = eval_step(steps.empty_acc(windows.pred_len), states, windows.take(idx, mask))
    means = {k: acc[k] / acc["count"] for k in ("sq", "abs")}  # this batch's per-step sums / its windows
    sums = means if sums is None else jax.tree.map(jnp.add, sums, means)
  # As device sums of `len(order)` "windows", each holding one batch's means: summarise divides by that count.
  return summarise(sums | {"count": len(order)}, segments, windows.values.shape[-1]) | {"windows": order.size}


def validate(eval_step, states, windows: data.DeviceWindows, cfg, segments: int, *, batch_size: int, epoch: int):
  """The validation score that early stopping and selection read, under `cfg.data.val_protocol`: "full" (every
  window in order, one global mean: `evaluate`) or "official" (`evaluate_official` with the stage's training
  batch size). The test pass always uses `evaluate`."""
  if cfg.data.get("val_protocol", "full") == "official":
    return evaluate_official(eval_step, states, windows, batch_size, segments, seed=cfg.seed, epoch=epoch)
  return evaluate(eval_step, states, windows, cfg.data.eval_batch_size, segments)


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
