"""What every command-line entry point shares: user mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import pathlib
import sys

from absl import flags

from mola_jax.errors import CheckpointError, ConfigError, DataError, Diverged

# Errors that mean "the input is wrong", never "the program is": one line, exit 2, nothing written.
USER_ERRORS = (ConfigError, DataError, CheckpointError)


def fail(message: str, code: int = 2):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(code)


def resolve_config(value: str) -> str:
  """`--config` takes a path (configs/etth1.py, optionally :VARIANT) or a built-in config's name (etth1,
  etth1:fixed_s), which works from any directory once the package is installed."""
  from mola_jax import configs

  path, sep, variant = value.partition(":")
  if path.endswith(".py") or "/" in path or pathlib.Path(path).exists():
    return value
  if path not in configs.names():
    fail(f"unknown config {path!r}; give a config file's path or a built-in name: {', '.join(configs.names())}")
  return str(configs.DIR / f"{path}.py") + sep + variant


def _with_config_resolved(argv: list[str]) -> list[str]:
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with built-in config names, and unknown flags, config-key typos ("did you mean ...") and bad
  values as one line."""
  try:
    rest = flags.FLAGS(_with_config_resolved(argv))
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    text = str(e).replace("\\n", ". ").replace("\\", "").replace("'", "")  # a KeyError repr inside an AttributeError
    if "Traceback" in text:  # the config file's get_config raised: keep its last line (the reason)
      text = text.strip().splitlines()[-1].split("Error: ", 1)[-1]
    fail(f"bad command line: {text}; see --helpfull for the flags")
  if "config" in flags.FLAGS:
    try:  # config_flags defers a failed load of the config file until first use; surface it here
      flags.FLAGS.config.keys()
    except OSError as e:
      fail(f"cannot load the config file: {' '.join(str(e).split())}")
  return rest


def config_command(run, workdir_help: str) -> None:
  """Entry point of a `--config FILE --workdir DIR` command that calls run(cfg, workdir)."""
  from absl import app, logging
  from ml_collections import config_flags

  def main(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    with user_errors():
      run(flags.FLAGS.config, flags.FLAGS.workdir)

  config_flags.DEFINE_config_file(
    "config", None, "A built-in config's name (etth1, etth1:fixed_s) or a config file's path", lock_config=True
  )
  flags.DEFINE_string("workdir", None, workdir_help, required=True)
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=parse_flags)


@contextlib.contextmanager
def user_errors():
  """A user error -> one line and exit 2; a diverged run -> one line and exit 3 (its checkpoints are kept)."""
  try:
    yield
  except USER_ERRORS as e:
    fail(str(e))
  except Diverged as e:
    fail(str(e), code=3)
