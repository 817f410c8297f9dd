"""The host's time per training step under a device mesh when every step is dispatched alone, as fit did before it
ran chunks: the batch gathered on the device (DeviceWindows.take), then the sharded train step called. Uses only
what every version since the library/lab split has, so old and new checkouts compare side by side:

    PYTHONPATH=$PWD launch/local.sh 8 python tools/host_per_step.py        # this checkout, 8 simulated devices
    PYTHONPATH=/path/to/old launch/local.sh 8 python tools/host_per_step.py   # another checkout's mola_jax

Stage 2 of the ETTh1 config (T = 96, S = 24, K = 4) on a data-parallel mesh over every device, global batch 32. The
device is idle before each timed call (only the host's work is timed: a call returns once its programs are
enqueued); prints the median host ms per step of 50 steps, after 3 untimed ones that compile. fit's own figure
in chunks is the scaling study's host_ms_per_step (python -m mola_jax.lab.scaling).
"""

from __future__ import annotations

import statistics
import sys
import time

import jax

from mola_jax import config_lib, data, plan, sharding, steps
from mola_jax.train import stage_model


def main(name: str = "etth1", calls: int = 50) -> None:
  cfg = config_lib.load(name)
  cfg.mesh.shape = (-1, 1)
  run_plan = plan.make(cfg)
  stage = run_plan.method_stages[1]
  series = data.load_series(cfg.data)
  with sharding.use(sharding.make_mesh(cfg.mesh), cfg.mesh.rules):
    model = stage_model(run_plan.model, stage, channels=series.values.shape[1], marks=series.marks.shape[1])
    tx = steps.make_tx(steps.lr_schedule(1e-3, 100))
    graphdef, state, frozen = steps.init_state(model, stage.name, tx, jax.random.key_data(jax.random.key(0)))
    step = steps.make_train_step(graphdef, tx, segments=stage.segments, share_prefix_dropout=True)
    windows = data.DeviceWindows(data.window_source(series, "train", cfg.data.seq_len, stage.window))
    order = data.train_order(windows, cfg.adapt.batch_size, seed=0, epoch=1)
    segs = steps.training_segments([True] * stage.segments)
    seconds = []
    for i in range(calls + 3):
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      state, loss = step(state, frozen, windows.take(order[i % len(order)]), segs)
      seconds.append(time.perf_counter() - t0)
    jax.block_until_ready((state, loss))
  ms = statistics.median(seconds[3:]) * 1e3
  print(f"host ms per step, one step a dispatch, {jax.device_count()} devices: {ms:.3f}")


if __name__ == "__main__":
  main(*sys.argv[1:2])
