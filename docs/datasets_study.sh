#!/usr/bin/env bash
# The multi-dataset table of docs/results.md (section "Beyond ETTh1"): per dataset, mtf and MoLA with the
# paper's segment options (chosen on validation), then MoLA with data-driven options
# (`study.segment_options=auto`: whole multiples of the training split's dominant period, mola_jax/lab/periods.py)
# reusing every run the first study already finished. 4 horizons (ILI: 24/36/48/60 with look-back 36), 3 seeds.
# Usage: [DATASETS="etth1 ettm2 exchange_rate national_illness"] [SEEDS=3] bash docs/datasets_study.sh [RUNS_DIR]
# (default runs/datasets). Finished cells are skipped; mola_jax/lab/report/segments.py prints the table.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/datasets_study.sh
set -euo pipefail
out=${1:-runs/datasets}
for name in ${DATASETS:-etth1 ettm2 exchange_rate national_illness}; do
  common=(--config "$name" --study.methods='("mtf","mola")' --study.num_seeds="${SEEDS:-3}")
  python -m mola_jax.lab.reproduce "${common[@]}" --workdir "$out/$name/paper" --study.segment_options=config ${STUDY_FLAGS:-}
  python -m mola_jax.lab.reproduce "${common[@]}" --workdir "$out/$name/auto" \
    --study.segment_options=auto --study.reuse_from="$out/$name/paper" ${STUDY_FLAGS:-}
done
python -m mola_jax.lab.report.segments "$out"
