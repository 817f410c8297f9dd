"""The package's shape, as docs and reviews rely on it: every module is in the README's layout section, the core
never imports the lab, and no function needs scrolling (60 lines at most; the config defaults excepted)."""

from __future__ import annotations

import ast
import pathlib
import re

from conftest import REPO

PACKAGE = REPO / "mola_jax"
LONG_ALLOWED = {("config_lib.py", "default")}  # every key of the run config with its comment, in one place


def modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts)


def test_every_module_is_in_the_readme_layout():
  text = (REPO / "README.md").read_text()
  layout = text[text.index("## Layout") :]
  missing = [str(p.relative_to(PACKAGE)) for p in modules() if p.name != "__init__.py" and p.name not in layout]
  assert not missing, f"README.md's Layout section does not list {missing}"


def test_the_core_never_imports_the_lab():
  for path in modules():
    if "lab" in path.relative_to(PACKAGE).parts:
      continue
    assert not re.search(r"mola_jax\.lab|from mola_jax import .*\blab\b", path.read_text()), path


def test_no_function_is_longer_than_sixty_lines():
  long = []
  for path in modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > 60 and (path.name, node.name) not in LONG_ALLOWED:
          long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, long
