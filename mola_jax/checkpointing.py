"""The only module that imports orbax: best-state checkpoints per stage and the strict stage-1 load.

A checkpoint holds the model state as a pure dict plus a JSON `meta` record of what produced it (dataset,
backbone sizes, S, ...). Stage 2 refuses a stage-1 checkpoint unless the meta matches and every backbone leaf
is restored: the official code's non-strict load silently adapted a random backbone (docs/method.md §11).
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from mola_jax import sharding
from mola_jax.errors import CheckpointError
from mola_jax.models.adapters import AdapterConst

# Keys of `meta` that must agree between a stage-1 checkpoint and the stage-2 model built on it.
BACKBONE_IDENTITY = ("dataset", "backbone", "model", "seq_len", "segment_len", "channels", "marks", "columns")
# Keys a checkpoint written before they existed may lack: it is taken as agreeing.
_NEWER_IDENTITY = ("columns",)


def backbone_identity(spec, series, segment_len: int) -> dict:
  """The BACKBONE_IDENTITY values of a run (spec: models.ModelSpec): what a stage-1 checkpoint must agree on to
  be adapted."""
  return {
    "dataset": series.name,
    "backbone": spec.backbone,
    "model": spec.sizes.to_dict(),
    "seq_len": spec.seq_len,
    "segment_len": segment_len,
    "channels": int(series.values.shape[1]),
    "marks": int(series.marks.shape[1]),
    "columns": list(series.columns) + list(series.covariates),  # their order: the target last, then covariates
  }


def stage_dir(workdir, stage: str) -> pathlib.Path:
  return pathlib.Path(workdir).absolute() / "checkpoints" / stage


def manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  """Best states of a stage: the newest is the selected state; the one before it is the fallback if the newest
  cannot be read (restore_latest). The items' handlers are named up front, so that a checkpoint's metadata can
  be read before any of its arrays."""
  return ocp.CheckpointManager(
    directory,
    options=_options(directory),
    item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
  )


def _options(directory: pathlib.Path) -> ocp.CheckpointManagerOptions:
  """The newest two; on several processes, barriers named after the directory: a stage's best-state and resume
  managers save side by side, and orbax's barriers of the same name would collide."""
  named = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=pathlib.Path(directory).name)
  return ocp.CheckpointManagerOptions(max_to_keep=2, create=True, multiprocessing_options=named)


def _save(mngr: ocp.CheckpointManager, step: int, args) -> None:
  """A save at `step` that replaces a checkpoint already there: a run killed after a save and before its resume
  record replays that stretch and saves the same step again (orbax would refuse: StepAlreadyExistsError)."""
  if step in mngr.all_steps():
    mngr.wait_until_finished()
    mngr.delete(step)
  mngr.save(step, args=args, force=True)


def _own_copy(tree):
  """orbax writes in the background while training goes on, and the train step donates (reuses) the state's
  buffers: a save gets its own copy, or it may write arrays that later steps have already overwritten."""
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def save(mngr: ocp.CheckpointManager, step: int, state: nnx.State, meta: dict) -> None:
  """Asynchronous: orbax writes in the background; call mngr.wait_until_finished() before relying on it."""
  _save(
    mngr,
    step,
    ocp.args.Composite(
      state=ocp.args.StandardSave(_own_copy(nnx.to_pure_dict(state))),
      meta=ocp.args.JsonSave(json.loads(json.dumps(meta))),
    ),
  )


def _abstract(pure: dict, shardings: dict) -> dict:
  """The restore target of a pure dict: each array's shape and dtype, and the sharding to restore it into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), pure, shardings)


def _unreadable(directory, step: int, e: Exception) -> None:
  reason = " ".join(str(e).split())[:200]
  logging.warning("checkpoint %s/%d is unreadable (%s); falling back to an earlier one", directory, step, reason)


def restore_latest(directory: pathlib.Path, target: dict, check=None) -> tuple[dict, dict]:
  """-> (state, meta) of the newest readable best-state checkpoint in `directory`, the state restored into
  `target` (a pure dict of jax.ShapeDtypeStructs: each array's shape, dtype and sharding, so a sharded state
  restores straight onto its devices, on any mesh and any number of processes). `check(meta, shapes)` may refuse
  a readable checkpoint with a CheckpointError before any array is read (`shapes`: path -> shape of what it
  holds). An unreadable newest one (truncated, half-written) is reported and the one before it is used; none
  readable is a CheckpointError."""
  if not directory.is_dir():
    raise CheckpointError(
      f"no checkpoint at {directory}; run stage 1 first (--config.stage=pretrain) "
      "or set --config.init_from to the workdir of a finished stage-1 run"
    )
  with manager(directory) as mngr:
    found = sorted(mngr.all_steps(), reverse=True)
    if not found:
      raise CheckpointError(f"{directory} holds no finished checkpoint; rerun the stage that writes it")
    for step in found:
      try:
        meta = dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        shapes = _flat(mngr.item_metadata(step)["state"].tree)
      except Exception as e:  # orbax raises many types for a damaged directory; any of them means "skip it"
        _unreadable(directory, step, e)
        continue
      if check is not None:
        check(meta, shapes)  # a readable checkpoint of the wrong run is an error, not damage to fall back from
      try:
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return dict(out["state"]), meta
      except Exception as e:
        _unreadable(directory, step, e)
  raise CheckpointError(
    f"no readable checkpoint in {directory} (steps {found} are damaged); rerun the stage that "
    "writes it (with --overwrite, or in a new --workdir)"
  )


def _flat(tree: dict) -> dict[str, tuple]:
  """path -> shape of every array (or orbax ArrayMetadata) of a nested dict."""
  return {
    "/".join(str(k) for k in path): tuple(getattr(v, "shape", None) or np.shape(v))
    for path, v in (
      (tuple(getattr(p, "key", getattr(p, "idx", p)) for p in kp), v)
      for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    )
  }


def load_backbone(model: nnx.Module, directory: pathlib.Path, expect: dict) -> dict:
  """Restore every non-adapter leaf of `model` from the stage-1 checkpoint in `directory`, strictly, into the
  shardings the model's arrays should have. `expect` holds the BACKBONE_IDENTITY values the model was built with.
  Returns the checkpoint's meta."""
  backbone = nnx.state(model, nnx.Not(nnx.Any(nnx.LoRAParam, AdapterConst)))
  want = _flat(nnx.to_pure_dict(backbone))

  def check(meta: dict, have: dict) -> None:
    for key in BACKBONE_IDENTITY:
      if key in _NEWER_IDENTITY and key not in meta:
        continue
      if meta.get(key) != expect[key]:
        raise CheckpointError(
          f"stage-1 checkpoint {directory} has {key}={meta.get(key)!r} but this run needs {expect[key]!r}; "
          "pretrain a matching backbone or point --config.init_from at one"
        )
    if want != have:
      missing = sorted(set(want) - set(have))[:3]
      extra = sorted(set(have) - set(want))[:3]
      shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:3]
      raise CheckpointError(
        f"stage-1 checkpoint {directory} does not fit this backbone (missing {missing}, "
        f"unexpected {extra}, wrong shape {shape}); pretrain it again with this config"
      )

  return _restore_part(model, backbone, directory, check)


def _restore_part(model: nnx.Module, state: nnx.State, directory: pathlib.Path, check) -> dict:
  """The newest readable checkpoint of `directory` into `state` (a part of `model`'s state), then into the model,
  as device arrays with the shardings the model's arrays should have -> the checkpoint's meta."""
  target = _abstract(nnx.to_pure_dict(state), nnx.to_pure_dict(sharding.target_shardings(state)))
  pure, meta = restore_latest(directory, target, check)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return meta


# ---------------------------------------------------------------------------------------------------------------
# Resume: the whole training state (params, optimizer, rng, batch stats) plus the loop's own position and
# early-stopping record, saved every few steps. Two are kept so that a corrupt latest one can fall back.


def resume_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=_options(directory))


def save_resume(mngr: ocp.CheckpointManager, step: int, state, loop: dict) -> None:
  loop = json.loads(json.dumps(loop))  # frozen now: the caller keeps mutating its dict while orbax writes
  _save(mngr, step, ocp.args.Composite(state=ocp.args.StandardSave(_own_copy(state)), loop=ocp.args.JsonSave(loop)))


def restore_resume(mngr: ocp.CheckpointManager, target) -> tuple | None:
  """-> (state, loop record) of the newest readable resume checkpoint, restored into `target`'s structure, shapes
  and shardings, or None if there is none. An unreadable one (killed mid-write, disk trouble) is reported and the
  previous one is used."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      args = ocp.args.Composite(state=ocp.args.StandardRestore(target), loop=ocp.args.JsonRestore())
      out = mngr.restore(step, args=args)
      return out["state"], dict(out["loop"])
    except Exception as e:  # orbax raises many types for a damaged directory; any of them means "skip it"
      reason = " ".join(str(e).split())[:200]
      logging.warning("resume checkpoint %d is unreadable (%s); falling back to the previous one", step, reason)
  return None


def restore_into(model: nnx.Module, directory: pathlib.Path) -> dict:
  """Load the latest best-state checkpoint of `directory` into every leaf of `model`, as device arrays with the
  shardings the model's arrays should have (the steps then see the arrays training left them, and reuse its
  compiled programs); returns the checkpoint's meta."""
  state = nnx.state(model)
  want = _flat(nnx.to_pure_dict(state))

  def check(meta: dict, have: dict) -> None:
    if want != have:
      raise CheckpointError(f"{directory} holds a state of another structure than this model; rerun its stage")

  return _restore_part(model, state, directory, check)
