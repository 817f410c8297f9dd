"""Seeds in one program: runs that differ only in their seed (and the stage-1 run they adapt) trained side by side,
each in its own workdir with the files a run of its own writes, their device work done by one vmapped program.

    results = train_runs(cfgs, workdirs)                  # what the studies' seeds_in_one_program runs
    results = train_runs(cfgs, workdirs, on_devices=True)  # run r on device r: R seeds on R chips, no traffic

This is the one place the run axis exists. Each run is the ordinary one-run loop (fit.epochs: its own orders,
dropout stream, early stopping, selection and checkpoints); each round the runs' requests that stand at the same
point of their loops become one call of jax.vmap of the one-run program over their stacked states. A run that is
done stops asking, so it leaves the program (one recompile for the smaller group) instead of being computed and
discarded; runs that a resume found at different points run apart, the one furthest behind first, until they
meet again.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mola_jax import evaluation, fit, plan, runtime, sharding, steps, train, workdir
from mola_jax.errors import ConfigError

RUNS = "runs"  # the mesh axis of the run axis when runs are placed on devices


def train_runs(cfgs: list, workdir_paths: list, *, data=None, overwrite: bool = False, on_devices=None) -> list:
  """Each run's results. `on_devices`: run r's state on device r (None: when there are as many devices as runs
  and no mesh is configured)."""
  run_plans = [plan.make(cfg) for cfg in cfgs]  # every check that needs no data
  if len(cfgs) == 1:
    return [train.train_and_evaluate(cfgs[0], workdir_paths[0], data=data, overwrite=overwrite)]
  check_side_by_side(cfgs)
  cfg, paths = cfgs[0], [pathlib.Path(p) for p in workdir_paths]
  runtime.use_compile_cache(cfg.compile_cache)
  if on_devices is None:
    on_devices = cfg.mesh.shape is None and jax.device_count() >= len(cfgs)
  devices = jax.devices()[: len(cfgs)] if on_devices else None
  with sharding.use(sharding.make_mesh(cfg.mesh), cfg.mesh.rules), runtime.matmul_precision(cfg.matmul_precision):
    series = train.load_data(cfg, run_plans[0], paths[0], data)
    for c, p in zip(cfgs[1:], paths[1:], strict=True):
      train.load_data(c, run_plans[0], p, data)
    with contextlib.ExitStack() as stack:
      logs = [stack.enter_context(train.opened(c, p, overwrite, series)) for c, p in zip(cfgs, paths, strict=True)]
      states, timings = [None] * len(cfgs), [{} for _ in cfgs]
      for j, stage in enumerate(run_plans[0].stages):
        outs = fit_runs([rp.stages[j] for rp in run_plans], run_plans, cfgs, paths, logs, series, devices)
        for i, (state, summary) in enumerate(outs):
          states[i], timings[i][stage.name] = state, summary
      return [
        train.test(*args, series) for args in zip(states, run_plans, paths, timings, logs, strict=True)
      ]  # fmt: skip


def check_side_by_side(cfgs: list) -> None:
  first = json.loads(cfgs[0].to_json_best_effort())
  for cfg in cfgs[1:]:
    diff = [
      k for k in workdir.config_diff(first, json.loads(cfg.to_json_best_effort())) if k not in ("seed", "init_from")
    ]
    if diff:
      raise ConfigError(f"runs trained side by side may differ only in seed and init_from; these differ in {diff[:5]}")


def fit_runs(stages, run_plans, cfgs, paths, logs, series, devices) -> list:
  """One stage of every run, side by side -> each run's (selected state, summary)."""
  stage = stages[0]
  windows = fit.Windows.of(series, stage, run_plans[0].evaluation.seq_len)
  tx = fit.stage_tx(stage, windows.steps_per_epoch)  # one optimizer: the stacked states share their structure
  loops = []
  for i, (st, rp, cfg, path, log) in enumerate(zip(stages, run_plans, cfgs, paths, logs, strict=True)):
    model = train.stage_model(rp, st, series, train.init_dir(cfg, path))
    setup = train.run_setup(rp, st, series, path, log)
    state = fit.new_state(model, st, setup.loop, tx)
    if devices is not None:
      state = jax.device_put(state, devices[i])
    loops.append(fit.epochs(state, st, windows, setup))
  setup = train.run_setup(run_plans[0], stage, series, paths[0], logs[0])
  return drive(loops, Programs(stage, setup, windows, devices))


def drive(loops: list, programs: Programs) -> list:
  """Run the loops' requests, the runs at the same point of their loops as one program -> each loop's result."""
  pending, results = {}, {}

  def advance(i: int, out) -> None:
    try:
      pending[i] = loops[i].send(out)  # the first send(None) starts a loop
    except StopIteration as done:
      results[i] = done.value
      pending.pop(i, None)

  for i in range(len(loops)):
    advance(i, None)
  while pending:
    point = {i: _point(request) for i, request in pending.items()}
    group = [i for i in pending if point[i] == min(point.values())]  # the runs furthest behind go first
    for i, out in zip(group, programs(group, [pending[i] for i in group]), strict=True):
      advance(i, out)
  return [results[i] for i in range(len(loops))]


def _point(request) -> tuple:
  """Where a request stands: its loop's (epoch, batch), then Train before Evaluate, then the segment bucket."""
  size = request.segs[0].shape[-1] if isinstance(request, fit.Train) else 0
  return (*request.at, isinstance(request, fit.Evaluate), size)


class Programs:
  """The stage's one-run programs, vmapped over a leading run axis: the train chunk (state donated) and the eval
  chunk. With `devices` the run axis lies on a mesh of the group's devices (run r on device r); else the runs are
  stacked on the stage's own layout (one device, or the configured mesh, the run axis replicated)."""

  def __init__(self, stage: plan.Stage, setup: fit.RunSetup, windows: fit.Windows, devices=None):
    w = windows.train
    step = steps.train_step_fn(steps.train_forecast(), plan.step_options(stage, setup.loop))
    one = steps.eval_step_fn(plan.eval_options(stage, setup.evaluation))
    over = lambda fn: jax.vmap(fn, in_axes=(0, None, 0, 0, None))  # per run: state, idx, segs or mask
    self.chunk = over(steps.train_chunk_fn(step, seq_len=w.seq_len, pred_len=w.pred_len))
    self.eval = over(steps.eval_chunk_fn(one, seq_len=w.seq_len, pred_len=w.pred_len))
    self.windows, self.devices, self.jitted = windows, devices, {}

  def __call__(self, group: list, requests: list) -> list:
    """The requests of runs `group`, at one point of their loops -> each one's result."""
    mesh, train, evaluate, series = self.programs(group)
    per_run = sharding.replicate if mesh is None else lambda t: jax.device_put(t, NamedSharding(mesh, P(RUNS)))
    states = stack([r.state for r in requests], mesh)
    if isinstance(requests[0], fit.Evaluate):
      idx, mask = np.stack([r.idx for r in requests]), np.stack([r.mask for r in requests])
      place = lambda args: (*per_run(args[:2]), *self.replicate(args[2:], mesh))
      sums = evaluation.batch_sums(evaluate, states, series["val"], idx, mask, place=place)  # [R, n, ...]
      return [jax.tree.map(lambda x, i=i: x[i], sums) for i in range(len(requests))]
    segs = tuple(np.stack([r.segs[k] for r in requests]) for k in (0, 1))
    args = (*per_run((np.stack([r.idx for r in requests]), segs)), *self.replicate((requests[0].valid,), mesh))
    states, losses = train(states, series["train"], *args)  # losses [R, C]
    return list(zip(unstack(states, len(requests), mesh), [losses[i] for i in range(len(requests))], strict=True))

  def programs(self, group: list) -> tuple:
    """(mesh or None, train, evaluate, the splits' arrays) for the runs `group`, made once per group."""
    key = None if self.devices is None else tuple(group)
    if key not in self.jitted:
      splits = {"train": self.windows.train.arrays, "val": self.windows.val.arrays}
      if key is None:
        layout = sharding.current()
        train = sharding.jit(self.chunk, donate_argnums=0, layout=layout, lead=1)
        self.jitted[key] = None, train, sharding.jit(self.eval, layout=layout, lead=1), splits
      else:
        devices = [self.devices[i] for i in key]
        mesh = jax.make_mesh((len(key),), (RUNS,), devices=devices, axis_types=(AxisType.Auto,))
        runs = NamedSharding(mesh, P(RUNS))
        train, evaluate = (
          jax.jit(self.chunk, donate_argnums=0, out_shardings=runs),
          jax.jit(self.eval, out_shardings=runs),
        )
        self.jitted[key] = mesh, train, evaluate, self.replicate(splits, mesh)
    return self.jitted[key]

  @staticmethod
  def replicate(tree, mesh):
    return sharding.replicate(tree) if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))


def stack(trees: list, mesh=None):
  """Run states -> one state with a leading run axis; on a runs mesh, assembled from each run's own buffers."""
  if mesh is None:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  runs = NamedSharding(mesh, P(RUNS))
  one = lambda *xs: jax.make_array_from_single_device_arrays((len(xs), *xs[0].shape), runs, [x[None] for x in xs])
  return jax.tree.map(one, *trees)


def unstack(tree, n: int, mesh=None) -> list:
  """A state with a leading run axis -> the runs' states; on a runs mesh, each run's own buffers."""
  if mesh is None:
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]
  leaves, treedef = jax.tree.flatten(tree)
  shards = [sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0) for x in leaves]
  return [treedef.unflatten([s[i].data[0] for s in shards]) for i in range(n)]
