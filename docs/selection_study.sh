#!/usr/bin/env bash
# A long-horizon option as a whole study (docs/results.md §11): the datasets study's MoLA (auto S, the reproduce
# default) again with OPTION (default per_segment; the options and their flags: docs/stage2_options.sh), 3 seeds,
# S chosen on validation as before.
# Stage 1 and mtf are the datasets study's very runs (reuse_from its paper study; segment lengths only the auto
# study proposed train their stage 1 again). Prints the multi-dataset table with this column added.
# Usage: [OPTION=per_segment] [DATASETS="national_illness exchange_rate etth1"] [SEEDS=3] [HORIZONS="(720,)"] \
#          bash docs/selection_study.sh [RUNS_DIR]      (HORIZONS: a subset of the dataset's horizons; default all)
# (after docs/datasets_study.sh; default runs/datasets). Finished cells are skipped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/selection_study.sh
set -euo pipefail
out=${1:-runs/datasets} option=${OPTION:-per_segment}
# shellcheck source=docs/stage2_options.sh
. "$(dirname "$0")/stage2_options.sh"
stage2_flags "$option"
[ -n "${HORIZONS:-}" ] && flags+=(--study.horizons="$HORIZONS")
for name in ${DATASETS:-national_illness exchange_rate etth1}; do
  python -m mola_jax.lab.reproduce --config "$name" --study.methods='("mtf","mola")' \
    --study.num_seeds="${SEEDS:-3}" "${flags[@]}" \
    --study.reuse_from="$out/$name/paper" --workdir "$out/$name/$option" ${STUDY_FLAGS:-}
done
python -m mola_jax.lab.report.segments "$out" "$option"
