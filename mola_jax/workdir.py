"""The run directory: one run's config, scaler, logs, checkpoints and results. A run claims it before writing
anything; a different config's run there is refused unless overwritten."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import socket

from mola_jax import config_lib
from mola_jax.errors import CheckpointError

# Where and how a run executes is not what it computes: a run may resume under another mesh or process count, and
# with other chunk, checkpoint, cache or logging settings. Nothing else: every other key can change a run's numbers.
SPEED_ONLY = (
  "mesh.",
  "distributed",
  "chunk_steps",
  "checkpoint_every_",
  "compile_cache",
  "tensorboard",
  "profile_steps",
)


def default(cfg) -> str:
  return f"runs/{cfg.data.name}-{cfg.backbone}-{cfg.method}-T{cfg.horizon}-seed{cfg.seed}"


def _flat(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
  return out


def flat_config(cfg_json: dict) -> dict:
  """The config as JSON, upgraded to today's keys (config_lib.upgrade), flat (dotted keys), a key it predates
  counted as its default: a run made before a key existed is the same run as one with the key at its default."""
  return _flat(json.loads(config_lib.default().to_json_best_effort())) | _flat(config_lib.upgrade(cfg_json))


def config_diff(old: dict, new: dict) -> list[str]:
  """Keys (dotted) whose values differ between two configs as JSON, speed-only keys aside."""
  old, new = flat_config(old), flat_config(new)
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not k.startswith(SPEED_ONLY))


def claim(cfg, workdir: pathlib.Path, overwrite: bool, data_sha256: str | None = None) -> None:
  """Refuse a workdir that holds a run of another config, or of the same config on other data (`data_sha256`,
  data.fingerprint of the series), unless overwriting; a run of the same config and data is resumed. Called only
  after everything that can be checked without writing has passed."""
  path, data_path = workdir / "config.json", workdir / "data.json"
  new = json.loads(cfg.to_json_best_effort())
  if path.is_file() and not overwrite:
    diff = config_diff(json.loads(path.read_text()), new)
    if diff:
      raise CheckpointError(
        f"{workdir} holds a run of a different config (differs in {', '.join(diff[:5])}); use "
        "another --workdir, or --overwrite to replace it"
      )
    old = json.loads(data_path.read_text()).get("sha256") if data_path.is_file() else None
    if data_sha256 and old and old != data_sha256:  # a workdir from before data.json: taken as the same data
      raise CheckpointError(
        f"{workdir} holds a run of this config on other data (the series' sha256 differs); use another "
        "--workdir, or --overwrite to replace it"
      )
  elif overwrite and workdir.exists():
    for item in ("checkpoints", "metrics.jsonl", "results.json", "config.json", "scaler.json", "data.json"):
      target = workdir / item
      shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
  workdir.mkdir(parents=True, exist_ok=True)
  write_json(path, new)
  if data_sha256:
    write_json(data_path, {"sha256": data_sha256})


LOCK = ".lock"


def check_path(path: pathlib.Path) -> None:
  """A workdir must be a directory (or not exist yet)."""
  if path.exists() and not path.is_dir():
    raise CheckpointError(f"--workdir {path} is a file, not a directory; give the path of a directory")


@contextlib.contextmanager
def locked(path: pathlib.Path):
  """Hold `path` for one run at a time: an exclusive lock on <workdir>/.lock, which names the owner (pid and host).
  A second run on the same workdir is refused with one line. The operating system drops the lock when its
  process ends, however it ends, so the lock file a killed run leaves behind blocks nobody."""
  path.mkdir(parents=True, exist_ok=True)
  handle = (path / LOCK).open("a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    owner = handle.read().strip() or "unknown"
    handle.close()
    raise CheckpointError(
      f"{path} is in use by another run (pid, host: {owner}); wait for it to end, or use another --workdir"
    ) from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"{os.getpid()} {socket.gethostname()}\n")
  handle.flush()
  try:
    yield
  finally:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def atomic(path: pathlib.Path):
  """Yield a temporary path beside `path` (same suffix); on success it replaces `path` in one rename, so a crash
  leaves the old file or the new one, never half of one."""
  tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: pathlib.Path, obj, indent: int = 2) -> None:
  """`obj` as indented JSON, written atomically."""
  write_text(path, json.dumps(obj, indent=indent))


def write_text(path: pathlib.Path, text: str) -> None:
  with atomic(path) as tmp:
    tmp.write_text(text)


def save_figure(fig, path: pathlib.Path, dpi: int) -> None:
  """A matplotlib figure as PNG, written atomically."""
  with atomic(path) as tmp:
    fig.savefig(tmp, dpi=dpi)
