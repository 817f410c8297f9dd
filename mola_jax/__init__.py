"""mola_jax: MoLA (mixture of LoRA experts) for multi-step time-series forecasting, in JAX and Flax NNX.

The Python API (README, "Python API"):

    cfg = mola_jax.get_config("etth1")                  # a built-in config (or get_config("path/to/file.py"))
    results = mola_jax.train_and_evaluate(cfg, "runs/etth1")
    run = mola_jax.load_run("runs/etth1")
    run.predict(df), run.backtest(df, stride=96)

Names are imported on first use, so `python -m mola_jax.<command>` loads only what the command needs.
"""

from __future__ import annotations

import importlib.util
import pathlib

__version__ = "0.4.0"

_LAZY = {"train_and_evaluate": "mola_jax.train", "load_run": "mola_jax.inference", "Run": "mola_jax.inference"}


def get_config(name: str):
  """A config by built-in name ("etth1", "etth1:fixed_s") or by a config file's path, as `--config` takes it."""
  from mola_jax import configs

  path, _, variant = str(name).partition(":")
  file = pathlib.Path(path) if path.endswith(".py") or "/" in path else configs.DIR / f"{path}.py"
  if not file.is_file():
    from mola_jax.errors import ConfigError

    raise ConfigError(f"no config {name!r}; use a config file's path or one of {', '.join(configs.names())}")
  spec = importlib.util.spec_from_file_location(f"mola_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'mola_jax' has no attribute {name!r}")


__all__ = ["Run", "__version__", "get_config", "load_run", "train_and_evaluate"]
