"""The built-in configs, one file per dataset. `--config etth1` (a name) and `--config path/to/etth1.py` (a path)
load the same file; `NAME:VARIANT` picks a variant that a file offers (etth1:fixed_s)."""

import pathlib

DIR = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  return sorted(p.stem for p in DIR.glob("*.py") if not p.stem.startswith("_"))
