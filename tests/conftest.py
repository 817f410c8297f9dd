"""Shared fixtures: the data directory (CI sets MOLA_DATA_DIR=../shared/data) and tiny configs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

# The suite runs on the CPU whatever else is installed (libtpu, for tests/test_tpu_compile.py, or a GPU's jax):
# set before anything imports jax, and inherited by every subprocess a test starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pooch  # noqa: E402

# Every process of the suite (pytest's workers and the programs the tests start: sharding_check, the AOT and bench
# CLIs, the multi-process launches) keeps its XLA programs in JAX's persistent cache, where a run of mola_jax keeps
# them (runtime.use_compile_cache), and loads them on the next run instead of compiling again. A run does that
# itself; the cache here also covers programs jitted outside a run. Same programs, same results: only compile time
# changes (the first run on a machine compiles them all).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(pooch.os_cache("mola_jax")) / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # runtime.MIN_COMPILE_SECONDS

import pytest  # noqa: E402

from mola_jax import config_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


# The files that take longest (`pytest --durations=0`, summed per file), first: pyproject runs each file whole in
# one of 4 workers, in this order (--no-loadscope-reorder), so that no long file starts last and runs alone at the end.
SLOWEST_FIRST = ("test_multiprocess", "test_reliability", "test_own_data", "test_sharding", "test_bench",
                 "test_reproduce", "test_tpu_compile", "test_engine", "test_forecast", "test_train")  # fmt: skip


def pytest_collection_modifyitems(items) -> None:
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(pathlib.Path(str(item.fspath)).stem, len(rank)))  # stable: the rest as found


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  # Absolute: tests start subprocesses in other directories (CI passes the relative ../shared/data).
  path = pathlib.Path(os.environ.get("MOLA_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
  if not (path / "ETTh1.csv").is_file():
    pytest.fail(f"ETTh1.csv not found in {path}; set MOLA_DATA_DIR to the folder of the benchmark CSVs")
  os.environ["MOLA_DATA_DIR"] = str(path)
  return path


def tiny(cfg=None):
  """A small, fast variant of a config: the real code paths, a fraction of the compute."""
  cfg = cfg or config_lib.default()
  cfg.model.itransformer.update(d_model=16, d_ff=16, n_heads=2, e_layers=1)
  cfg.pretrain.epochs = 1
  cfg.adapt.epochs = 1
  for settings in cfg.technique.values():  # every method's banks small: two experts, rank 2
    settings.update(**{k: 2 for k in ("num_experts", "rank") if k in settings})
  cfg.data.eval_batch_size = 512
  return cfg


@pytest.fixture
def tiny_cfg():
  return tiny()


def forecast_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m mola_jax.forecast ARGS` from the repository root, output captured."""
  return subprocess.run(
    [sys.executable, "-m", "mola_jax.forecast", *args], capture_output=True, text=True, cwd=REPO, timeout=300
  )


def new_state(model, stage: str = "adapt", lr: float = 1e-2):
  """The model's train state for `stage`: Adam at `lr`, a fixed dropout stream."""
  import jax

  from mola_jax import steps
  from mola_jax.state import TrainState

  tx = steps.make_tx(steps.lr_schedule(lr, 10))
  return TrainState.create(model, stage, tx, jax.random.key_data(jax.random.key(0)))


def train_step(segments: int, groups: int | None = None, **options):
  """The core's train step jitted alone, the state donated: step(state, batch, (ids, active)) -> (state, loss)."""
  import jax

  from mola_jax import steps

  opts = steps.StepOptions(segments, **options)
  return jax.jit(steps.train_step_fn(steps.train_forecast(groups), opts), donate_argnums=0)
