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


def start(argv, distributed: bool = False, *, multi_process: bool = True) -> None:
  """What every command's main does first: refuse stray arguments, quieten orbax (it logs every save at INFO), and
  with `distributed` (cfg.distributed) or MOLA_DISTRIBUTED=1 join the other processes (jax.distributed) before
  anything touches a device. Only process 0 prints to stdout; errors still reach everyone's stderr. A command
  that cannot run on several processes (`multi_process=False`) says so in one line."""
  from absl import app, logging

  from mola_jax import sharding

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.horizon=192")
  logging.set_verbosity(logging.WARNING)
  if not sharding.initialize_distributed(distributed):
    return
  if not multi_process:
    fail(
      f"{pathlib.Path(sys.argv[0]).stem} measures one process; run it without MOLA_DISTRIBUTED / --config.distributed"
    )
  if not sharding.is_lead():
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)


def config_command(run, workdir_help: str, *, multi_process: bool = True) -> None:
  """Entry point of a `--config FILE --workdir DIR` command that calls run(cfg, workdir)."""
  from absl import app
  from ml_collections import config_flags

  def main(argv) -> None:
    start(argv, flags.FLAGS.config.distributed, multi_process=multi_process)
    with user_errors():
      run(flags.FLAGS.config, flags.FLAGS.workdir)

  config_flags.DEFINE_config_file("config", None, CONFIG_HELP, lock_config=True)
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
