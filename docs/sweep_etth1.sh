#!/usr/bin/env bash
# The sensitivity sweep of docs/results.md (the paper's Figure 5): ETTh1, iTransformer, T = 96, S = 24, MoLA,
# one key at a time around the official recipe (rank 8, stage-2 lr 1e-3, 6 experts), SEEDS seeds (default 2).
# The default grid is the one docs/results.md reports (3 values a key, on the 2-core CPU); the paper's finer one:
#   GRID="technique.mola.rank=2,4,8,16;adapt.lr=1e-4,3e-4,1e-3,3e-3,1e-2;technique.mola.num_experts=1,2,3,6,12"
# Usage: [SEEDS=2] [GRID=...] bash docs/sweep_etth1.sh [RUNS_DIR]   (default runs/sweep_etth1). Finished points
# are skipped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/sweep_etth1.sh
set -euo pipefail
out=${1:-runs/sweep_etth1}
python -m mola_jax.lab.sweep --config etth1 --workdir "$out" --config.horizon=96 --config.segment_len=24 \
  --study.num_seeds="${SEEDS:-2}" \
  --study.grid="${GRID:-technique.mola.rank=2,8,16;adapt.lr=1e-4,1e-3,1e-2;technique.mola.num_experts=1,6,12}" ${STUDY_FLAGS:-}
