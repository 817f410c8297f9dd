#!/usr/bin/env bash
# Stage-2 options on CycleNet (docs/results.md §13), after docs/cyclenet_study.sh: MoLA again with an option of
# docs/stage2_options.sh (per_segment, constant_lr, both), reusing the study's stage 1 and mtf, S chosen on
# validation as before.
# Each option is one more study, <RUNS>/<dataset>-<variant>-<option>, which the backbones report lists beside the
# others and among which its last table lets validation choose.
#
#   OPTIONS="per_segment constant_lr both" bash docs/cyclenet_options.sh runs/cyclenet national_illness
#   python -m mola_jax.lab.report.backbones runs/cyclenet
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/cyclenet_options.sh
set -euo pipefail
# shellcheck source=docs/stage2_options.sh
. "$(dirname "$0")/stage2_options.sh"
out=${1:-runs/cyclenet}
shift || true
datasets=("$@")
if [ ${#datasets[@]} -eq 0 ]; then datasets=(national_illness); fi
for dataset in "${datasets[@]}"; do
  for variant in ${VARIANTS:-cyclenet cyclenet_mlp}; do
    for option in ${OPTIONS:-both}; do
      stage2_flags "$option"
      start=$(date +%s)
      python -m mola_jax.lab.reproduce --config "$dataset:$variant" --study.methods='("mtf","mola")' "${flags[@]}" \
        --study.reuse_from="$out/$dataset-$variant" --workdir "$out/$dataset-$variant-$option" ${STUDY_FLAGS:-}
      echo "$dataset $variant $option: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_seconds.txt"
    done
  done
done
