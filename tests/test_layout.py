"""The package's shape, as docs and reviews rely on it: every module is in the Layout section of
docs/architecture.md, the core never imports the lab, and no function needs scrolling (60 lines at most; the config
defaults excepted)."""

from __future__ import annotations

import ast
import pathlib
import re

from conftest import REPO

PACKAGE = REPO / "mola_jax"
LONG_ALLOWED = {("config_lib.py", "default")}  # every key of the run config with its comment, in one place


def modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts)


def test_every_module_is_in_the_architecture_layout():
  text = (REPO / "docs" / "architecture.md").read_text()
  layout = text[text.index("## Layout") :].split("\n## ")[0]  # the section alone, up to the next one
  missing = [str(p.relative_to(PACKAGE)) for p in modules() if p.name != "__init__.py" and p.name not in layout]
  assert not missing, f"docs/architecture.md's Layout section does not list {missing}"


def test_the_readme_is_a_front_page_and_the_docs_links_resolve():
  """The README stays a front page (under 200 lines) whose test command is the one .ci/run runs, and every
  relative link of the README, docs/ and launch/ names a file that exists."""
  readme = (REPO / "README.md").read_text()
  assert len(readme.splitlines()) < 200
  ci = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest -q" in line)
  assert ci.strip() in readme, ci
  broken = []
  for page in [REPO / "README.md", REPO / "launch" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
      if "://" not in target and not (page.parent / target).exists():
        broken.append(f"{page.relative_to(REPO)}: {target}")
  assert not broken, broken


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
