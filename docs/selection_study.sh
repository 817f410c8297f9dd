#!/usr/bin/env bash
# Per-segment selection as a whole study (docs/results.md §11): the datasets study's MoLA (auto S, the reproduce
# default) again with --config.adapt.selection=per_segment (each segment keeps the adapter deltas of its own best
# validation epoch instead of the official "any segment improved" rule), 3 seeds, S chosen on validation as
# before. Stage 1 and mtf are the datasets study's very runs (reuse_from its paper study; segment lengths only the
# auto study proposed train their stage 1 again). Prints the multi-dataset table with this column added.
# Usage: [DATASETS="national_illness exchange_rate etth1"] [SEEDS=3] bash docs/selection_study.sh [RUNS_DIR]
# (after docs/datasets_study.sh; default runs/datasets). Finished cells are skipped.
set -euo pipefail
out=${1:-runs/datasets}
for name in ${DATASETS:-national_illness exchange_rate etth1}; do
  python -m mola_jax.reproduce --config "$name" --config.reproduce.methods='("mtf","mola")' \
    --config.reproduce.num_seeds="${SEEDS:-3}" --config.adapt.selection=per_segment \
    --config.reproduce.reuse_from="$out/$name/paper" --workdir "$out/$name/per_segment"
done
python tools/segments_summary.py "$out" per_segment
