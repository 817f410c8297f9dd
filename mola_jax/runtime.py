"""Process-wide JAX settings a run asks for (the persistent compilation cache, the matmul precision), where it ran,
and a profiler trace of its steps."""

from __future__ import annotations

import contextlib
import os
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache

# Programs that compile faster than this are not worth a file: the cache keeps the train and eval steps (seconds
# each on a CPU), not the many small helper programs.
MIN_COMPILE_SECONDS = 0.2


def cache_dir() -> pathlib.Path:
  """The user cache directory of mola_jax (where downloaded data go too), subfolder xla."""
  import pooch  # its os_cache knows each platform's user cache location

  return pathlib.Path(pooch.os_cache("mola_jax")) / "xla"


def use_compile_cache(enabled: bool = True, path: str | None = None) -> str | None:
  """Turn JAX's persistent compilation cache on or off for this process, so a second run of the same programs (a
  rerun, the next cell of a study) loads them instead of compiling. The directory: `path`, else the one the user
  set with JAX_COMPILATION_CACHE_DIR, else `cache_dir()`. Returns the directory that was in use before (None:
  the cache was off), so a caller can put it back."""
  before = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return before
  path = path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir())
  if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    compilation_cache.reset_cache()  # a cache already initialised in this process would ignore the new directory
  return before


def matmul_precision(name: str | None):
  """A context in which every traced matmul and convolution takes `name`'s precision (cfg.matmul_precision):
  "float32" (also None: a config from before the key), "tensorfloat32", "bfloat16", or "default" (the platform's
  choice: nothing is set). Programs traced inside it are cached apart from others."""
  if name == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(name or "float32")


def environment() -> dict:
  """Where a run ran, for its results: the device kind, platform, device and process counts, jax's version."""
  device = jax.devices()[0]
  return {
    "device": device.device_kind,
    "platform": device.platform,
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "jax": jax.__version__,
  }


class StepProfiler:
  """A jax.profiler trace of `steps` steady-state train steps into `directory` (`--config.profile_steps=N`): it
  starts after `skip` steps of the stage (the compile and the first dispatches are not steady state) and stops N
  steps later, or at the end of the epoch; called at chunk ends, so it traces whole chunks. Open it with
  TensorBoard's profile plugin or Perfetto (docs/outputs.md)."""

  def __init__(self, directory, steps: int, skip: int = 5):
    self.directory, self.steps, self.skip, self.tracing = directory, steps, skip, False

  def after_step(self, step: int, out) -> None:
    """Call after each train step with the stage's step count (1-based) and the step's outputs."""
    if self.steps <= 0:
      return
    if step >= self.skip and not self.tracing:
      jax.block_until_ready(out)
      jax.profiler.start_trace(str(self.directory))
      self.tracing = True
    elif self.tracing and step >= self.skip + self.steps:
      self.stop(out)

  def stop(self, out=None) -> None:
    if self.tracing:
      jax.block_until_ready(out)
      jax.profiler.stop_trace()
      self.tracing, self.steps = False, 0
