"""Evaluation metrics and metrics.jsonl: the eval step's device sums become numbers here, with one host read per
evaluated split."""

from __future__ import annotations

import json
import pathlib

import jax

from mola_jax import data, steps, workdir


def summarise(acc: dict, segments: int, channels: int) -> dict:
  """Device sums from the eval step -> metrics; one host read. Global element means (docs/protocol.md §7)."""
  acc = jax.device_get(acc)
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


class MetricsLog:
  """metrics.jsonl: one record per epoch of each stage and one for the test pass, each appended in one write."""

  def __init__(self, path: pathlib.Path):
    self.path = path

  def write(self, **record) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")

  def truncate(self, stage: str, epoch: int) -> None:
    """On resume: keep what was logged before `stage` reached `epoch` and drop the rest (it will be redone),
    including a last line that a kill cut short. The file is replaced in one rename."""
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
