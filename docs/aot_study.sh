#!/usr/bin/env bash
# The TPU memory table of docs/performance.md ("Compiled for TPU slices"): both stages' train and eval steps of
# ETTh1 (the paper's model, batch 32) and traffic (862 variates, d_model 512, 4 layers, batch 16) at T = 96 and
# T = 720, AOT-compiled for a v5e-8 (v5e:2x4) and a v5e-256 (v5e:16x16) slice under data_parallel, segment and
# variate (model axis 4), each data shard holding the config's per-device batch. Needs libtpu
# (pip install "jax[tpu]"), no TPU. Usage: bash docs/aot_study.sh [RUNS_DIR] (default runs/aot); it ends by
# printing the table (python -m mola_jax.lab.report.aot RUNS_DIR). TOPOLOGIES_traffic=v5e:2x4 compiles traffic for
# the v5e-8 slice only (its v5e:16x16 programs take most of the study's hour on a 2-core CPU; a chip's memory
# hardly changes with the slice, since each data shard holds the same batch); DATASETS=traffic runs one dataset.
set -euo pipefail
out=${1:-runs/aot}
export JAX_PLATFORMS=cpu
for name in ${DATASETS:-etth1 traffic}; do
  per_shard=$([ "$name" = traffic ] && echo 16 || echo 32)
  topologies_var="TOPOLOGIES_$name"
  topologies=${!topologies_var:-v5e:2x4,v5e:16x16}
  for horizon in 96 720; do
    python -m mola_jax.lab.aot --config "$name" --config.horizon="$horizon" --study.topology="$topologies" \
      --study.rules=data_parallel,segment,variate --study.model_axis=4 --study.batch_per_shard="$per_shard" \
      --workdir "$out/$name-T$horizon"
  done
done
python -m mola_jax.lab.report.aot "$out"
