"""mola_jax: MoLA (mixture of LoRA experts) for multi-step time-series forecasting, in JAX and Flax NNX.

The Python API (README, "Python API"):

    cfg = mola_jax.get_config("etth1")                  # a built-in config (or get_config("path/to/file.py"))
    results = mola_jax.train_and_evaluate(cfg, "runs/etth1")
    run = mola_jax.load_run("runs/etth1")
    run.predict(df), run.backtest(df, stride=96)

Names are imported on first use, so `python -m mola_jax.<command>` loads only what the command needs.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.0"

_LAZY = {"train_and_evaluate": "mola_jax.train", "load_run": "mola_jax.inference", "Run": "mola_jax.inference"}


def get_config(name: str):
  """A config by built-in name ("etth1", "etth1:fixed_s") or by a config file's path, as `--config` takes it."""
  from mola_jax import config_lib

  return config_lib.load(name)


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mola_jax' has no attribute {name!r}")


__all__ = ["Run", "__version__", "get_config", "load_run", "train_and_evaluate"]
