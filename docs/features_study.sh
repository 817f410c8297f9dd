#!/usr/bin/env bash
# Feature modes on ETTh1 (docs/results.md §14): oil temperature from all seven series (MS) and from its own history
# alone (S), iTransformer on the official MoLA recipe, the direct model (mtf) and MoLA at T = 96, 3 seeds, S chosen
# on validation (the reproduce defaults).
#
#   bash docs/features_study.sh runs/features
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/features_study.sh
set -euo pipefail
out=${1:-runs/features}
for features in MS S; do
  python -m mola_jax.lab.reproduce --config etth1 --workdir "$out/etth1-$features" --config.data.features=$features \
    --config.data.target=OT --study.horizons='(96,)' --study.methods='("mtf","mola")' ${STUDY_FLAGS:-}
done
