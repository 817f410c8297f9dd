"""What every command-line entry point shares: user mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys

from absl import flags

from mola_jax.errors import CheckpointError, ConfigError, DataError, Diverged

CONFIG_HELP = "A built-in config's name (etth1, etth1:fixed_s) or a config file's path"

# Errors that mean "the input is wrong", never "the program is": one line, exit 2, nothing written.
USER_ERRORS = (ConfigError, DataError, CheckpointError)


def fail(message: str, code: int = 2):
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(code)


def resolve_config(value: str) -> str:
  """`--config` takes a path (configs/etth1.py, optionally :VARIANT) or a built-in config's name (etth1,
  etth1:fixed_s), which works from any directory once the package is installed."""
  from mola_jax import config_lib

  try:
    file, variant = config_lib.config_file(value)
  except ConfigError as e:
    fail(str(e))
  return str(file) + (f":{variant}" if variant else "")


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


def start(argv, distributed: bool = False, *, multi_process: bool = True) -> None:
  """What every command's main does first: refuse stray arguments, quieten orbax (it logs every save at INFO), and
  with `distributed` (cfg.distributed) or MOLA_DISTRIBUTED=1 join the other processes (jax.distributed) before
  anything touches a device. Only process 0 prints to stdout; errors still reach everyone's stderr. A command
  that cannot run on several processes (`multi_process=False`) says so in one line."""
  from absl import app, logging

  from mola_jax import distributed as multi_host

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.horizon=192")
  logging.set_verbosity(logging.WARNING)
  if not multi_host.initialize_distributed(distributed):
    return
  if not multi_process:
    fail(
      f"{pathlib.Path(sys.argv[0]).stem} measures one process; run it without MOLA_DISTRIBUTED / --config.distributed"
    )
  if not multi_host.is_lead():
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


@contextlib.contextmanager
def user_errors():
  """A user error -> one line and exit 2; a diverged run -> one line and exit 3 (its checkpoints are kept)."""
  try:
    yield
  except USER_ERRORS as e:
    fail(str(e))
  except Diverged as e:
    fail(str(e), code=3)
