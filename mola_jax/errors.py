"""The errors a user can cause and fix. This module imports nothing from the package, so every module may raise
them without an import circle. The command-line entry points turn each into one line on stderr (mola_jax/cli.py):
exit code 2 for the first three, 3 for a diverged run."""


class ConfigError(ValueError):
  """A config that cannot run; the message says what is wrong and how to fix it."""


class DataError(ValueError):
  """Data that cannot be used (missing, unreadable, malformed, too short); the message names the file and the fix."""


class CheckpointError(RuntimeError):
  """A missing, mismatched or unreadable checkpoint or workdir; the message says which and what to do."""


class Diverged(FloatingPointError):
  """A non-finite training loss; the last good checkpoints are left in place."""
