#!/usr/bin/env bash
# A long-horizon option as a whole study (docs/results.md §11): the datasets study's MoLA (auto S, the reproduce
# default) again with OPTION (default per_segment), 3 seeds, S chosen on validation as before:
#   per_segment   --config.adapt.selection=per_segment (each segment keeps the adapter deltas of its own best
#                 validation epoch instead of the official "any segment improved" rule)
#   constant_lr   --config.adapt.lr_decay=1.0 (the stage-2 lr stays at 1e-3 instead of halving every epoch)
#   both          the two together
# Stage 1 and mtf are the datasets study's very runs (reuse_from its paper study; segment lengths only the auto
# study proposed train their stage 1 again). Prints the multi-dataset table with this column added.
# Usage: [OPTION=per_segment] [DATASETS="national_illness exchange_rate etth1"] [SEEDS=3] [HORIZONS="(720,)"] \
#          bash docs/selection_study.sh [RUNS_DIR]      (HORIZONS: a subset of the dataset's horizons; default all)
# (after docs/datasets_study.sh; default runs/datasets). Finished cells are skipped.
set -euo pipefail
out=${1:-runs/datasets} option=${OPTION:-per_segment}
case $option in
  per_segment) flags=(--config.adapt.selection=per_segment) ;;
  constant_lr) flags=(--config.adapt.lr_decay=1.0) ;;
  both) flags=(--config.adapt.selection=per_segment --config.adapt.lr_decay=1.0) ;;
  *) echo "unknown OPTION=$option; use per_segment, constant_lr or both" >&2; exit 2 ;;
esac
[ -n "${HORIZONS:-}" ] && flags+=(--study.horizons="$HORIZONS")
for name in ${DATASETS:-national_illness exchange_rate etth1}; do
  python -m mola_jax.lab.reproduce --config "$name" --study.methods='("mtf","mola")' \
    --study.num_seeds="${SEEDS:-3}" "${flags[@]}" \
    --study.reuse_from="$out/$name/paper" --workdir "$out/$name/$option"
done
python -m mola_jax.lab.report.segments "$out" "$option"
