"""The lab: the studies that use the library, each a short driver with settings of its own (`--study.*`), none
of them in the run config. Every run a study makes is an ordinary training workdir made by
mola_jax.train_and_evaluate.

  reproduce.py   horizons x methods x seeds, S chosen on validation, tables with 95% intervals and plots
  sweep.py       sensitivity sweeps over config keys
  bench.py       the benchmark: its registered measurements, run in order, and the driver
  bench_setup.py the benchmark's machinery: problems, steps as fit builds them, AOT compiles, the timed loop
  bench_report.py  bench.md, one renderer
  scaling.py     the scaling study: train steps compiled and timed over meshes and global batches
  aot.py         TPU programs compiled for topologies that are not here (libtpu, no TPU)
  periods.py     the dominant periods of a series (the studies' data-driven segment lengths)
  op_profile.py  where a train step's time goes: a profiler trace summarised per XLA op
  study.py       what the drivers share: their command line, finished-run reuse and resume, identities, CSVs
  engine.py      a study's cells as a task graph: run here in order (local) or as Ray tasks over a cluster (ray)
  stats.py       the Student-t interval and run lookups of the report tools (numpy and scipy only)
  report/        tables printed from finished studies (python -m mola_jax.lab.report.<name> DIR)
"""
