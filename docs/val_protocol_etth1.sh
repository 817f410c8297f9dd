#!/usr/bin/env bash
# Does the validation protocol change who wins? ETTh1, iTransformer, the official recipe with the paper's S
# (`configs/etth1.py:fixed_s`), mtf and MoLA, 3 seeds, under data.val_protocol=full (every window in order, one
# global mean) and =official (the official code's shuffled, drop-last loader, mean of per-batch means). Only
# early stopping and the kept epoch can differ; the test pass is the same. docs/results.md reads the two tables
# and the selected epochs (metrics.jsonl) of both studies.
# Usage: [HORIZONS="96 192 336 720"] [SEEDS=3] [REUSE_FROM=runs/datasets/etth1/paper] \
#        bash docs/val_protocol_etth1.sh [RUNS_DIR]   (default runs/val_protocol_etth1)
# REUSE_FROM: a study (full protocol) whose identical runs the full-protocol study takes instead of training them.
# Finished cells are skipped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/val_protocol_etth1.sh
set -euo pipefail
out=${1:-runs/val_protocol_etth1}
horizons=$(echo "${HORIZONS:-96 192 336 720}" | tr ' ' ',')
for protocol in full official; do
  python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/$protocol" \
    --config.data.val_protocol="$protocol" --study.horizons="($horizons,)" \
    --study.num_seeds="${SEEDS:-3}" --study.methods='("mtf","mola")' \
    ${REUSE_FROM:+--study.reuse_from="$REUSE_FROM"} ${STUDY_FLAGS:-}
done
python -m mola_jax.lab.report.val_protocol "$out"
