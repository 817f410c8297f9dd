#!/usr/bin/env bash
# MoLA on OLinear (docs/results.md §13): OLinear on its own recipe (mola_jax/configs/_recipes.py), the direct model
# (mtf) and MoLA, 3 seeds, the four horizons; segment lengths: the config's (for ETTh1 whole days, one per horizon:
# the ones validation chose for CycleNet), one stage-1 model per horizon and seed (each option would train its own).
#
#   bash docs/olinear_study.sh runs/olinear [DATASETS...]
#   python -m mola_jax.lab.report.backbones runs/olinear
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/olinear_study.sh
set -euo pipefail
out=${1:-runs/olinear}
shift || true
datasets=("$@")
if [ ${#datasets[@]} -eq 0 ]; then datasets=(etth1); fi
for dataset in "${datasets[@]}"; do
  start=$(date +%s)
  python -m mola_jax.lab.reproduce --config "$dataset:olinear" --workdir "$out/$dataset-olinear" \
    --study.methods='("mtf","mola")' --study.segment_options=config ${STUDY_FLAGS:-}
  echo "$dataset olinear: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_seconds.txt"
done
