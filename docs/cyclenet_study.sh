#!/usr/bin/env bash
# MoLA on CycleNet (docs/results.md §13): per dataset, CycleNet/Linear and CycleNet/MLP on their own recipe
# (mola_jax/configs/_recipes.py), the direct model (mtf) and MoLA, 3 seeds, the four horizons, segment lengths
# chosen on validation among the paper's options and those found in the data (the reproduce defaults).
#
#   bash docs/cyclenet_study.sh runs/cyclenet                      # the five datasets of the table
#   bash docs/cyclenet_study.sh runs/cyclenet etth1 weather        # some of them
#   VARIANTS=cyclenet bash docs/cyclenet_study.sh runs/cyclenet    # CycleNet/Linear only
#   python -m mola_jax.lab.report.backbones runs/cyclenet          # the table of docs/results.md §13
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/cyclenet_study.sh
set -euo pipefail
out=${1:-runs/cyclenet}
shift || true
datasets=("$@")
if [ ${#datasets[@]} -eq 0 ]; then datasets=(etth1 ettm2 exchange_rate national_illness weather); fi
for dataset in "${datasets[@]}"; do
  for variant in ${VARIANTS:-cyclenet cyclenet_mlp}; do
    start=$(date +%s)
    python -m mola_jax.lab.reproduce --config "$dataset:$variant" --workdir "$out/$dataset-$variant" \
      --study.methods='("mtf","mola")' ${STUDY_FLAGS:-}
    echo "$dataset $variant: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_seconds.txt"
  done
done
