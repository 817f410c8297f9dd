"""Process-wide JAX settings a run asks for: the persistent compilation cache."""

from __future__ import annotations

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
