"""The package a user installs: metadata that matches requirements.txt, a wheel that installs into a fresh
virtual environment and trains from any directory with a built-in config, console scripts."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO


def requirement_names(lines) -> dict:
  out = {}
  for line in lines:
    line = line.split("#", 1)[0].strip()
    if line and not line.startswith("-r"):
      name = re.split(r"[<>=!\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
      out[name] = line.replace(" ", "")
  return out


def test_pyproject_dependencies_are_requirements_txt():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  assert requirement_names(project["dependencies"]) == requirement_names((REPO / "requirements.txt").open())
  assert project["requires-python"] == ">=3.11"
  assert {"dev", "cuda12", "tpu", "ray"} <= set(project["optional-dependencies"])
  scripts = project["scripts"]
  assert {"mola-train", "mola-reproduce", "mola-forecast", "mola-bench", "mola-export"} <= set(scripts)
  for target in scripts.values():  # every console script names a function that exists
    module, function = target.split(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function)), target


def see_this_environment(python) -> None:
  """Make the new environment see this one's packages, whatever this one is: a virtual environment (where
  `venv --system-site-packages` would give the base interpreter's packages, not these) or a global interpreter. A
  .pth file in the new environment's site-packages appends this environment's site directories to its path, after
  its own, so what the wheel installs there comes first."""
  mine = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if os.path.isdir(p)]
  proc = subprocess.run(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr
  pathlib.Path(proc.stdout.strip(), "parent_environment.pth").write_text("".join(p + "\n" for p in mine))


@pytest.mark.package
def test_a_wheel_installs_into_a_fresh_venv_and_trains_from_any_directory(tmp_path):
  """Build the wheel, install it into a new virtual environment (it sees the packages of the environment that
  runs the suite, so nothing is downloaded; pip still checks that every dependency is satisfied), and train the
  built-in synthetic config from a directory outside the checkout with the installed console script."""
  dist, venv, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
  run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
  # Built from a copy of the source: setuptools writes build/ and *.egg-info next to the sources it builds.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__"))
  proc = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source))
  assert proc.returncode == 0, proc.stderr[-2000:]
  (wheel,) = dist.glob("mola_jax-*.whl")
  assert run(sys.executable, "-m", "venv", str(venv)).returncode == 0
  bin_dir = venv / "bin"
  see_this_environment(bin_dir / "python")
  proc = run(str(bin_dir / "python"), "-m", "pip", "install", "--no-index", str(wheel))
  assert proc.returncode == 0, proc.stderr[-2000:]
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  where = run(str(bin_dir / "python"), "-c", "import mola_jax, sys; print(mola_jax.__file__)", cwd=elsewhere, env=env)
  assert str(venv) in where.stdout, where.stdout + where.stderr  # the installed copy, not the checkout
  # Package data: the GPU target configs that lab/aot.py compiles for are in the wheel.
  read = "from mola_jax.lab import targets as t; print(all('core_count' in t.target_config(n) for n in t.GPU_TARGETS))"
  proc = run(str(bin_dir / "python"), "-c", read, cwd=elsewhere, env=env)
  assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stdout + proc.stderr[-2000:]
  proc = run(
    str(bin_dir / "mola-train"),
    "--config",
    "synthetic",
    "--workdir",
    "run",
    "--config.pretrain.epochs=1",
    "--config.adapt.epochs=1",
    cwd=elsewhere,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (elsewhere / "run" / "results.json").is_file()
  proc = run(str(bin_dir / "mola-train"), "--config", "nosuch", "--workdir", "x", cwd=elsewhere, env=env)
  assert proc.returncode == 2 and "unknown config 'nosuch'" in proc.stderr and "etth1" in proc.stderr
