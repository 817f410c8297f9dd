#!/usr/bin/env bash
# Stage-2 options on CycleNet (docs/results.md §13), after docs/cyclenet_study.sh: MoLA again with an option of
# docs/selection_study.sh, reusing the study's stage 1 and mtf, S chosen on validation as before.
#   per_segment   --config.adapt.selection=per_segment
#   constant_lr   --config.adapt.lr_decay=1.0
#   both          the two together
# Each option is one more study, <RUNS>/<dataset>-<variant>-<option>, which the backbones report lists beside the
# others and among which its last table lets validation choose.
#
#   OPTIONS="per_segment constant_lr both" bash docs/cyclenet_options.sh runs/cyclenet national_illness
#   python -m mola_jax.lab.report.backbones runs/cyclenet
set -euo pipefail
out=${1:-runs/cyclenet}
shift || true
datasets=("$@")
if [ ${#datasets[@]} -eq 0 ]; then datasets=(national_illness); fi
for dataset in "${datasets[@]}"; do
  for variant in ${VARIANTS:-cyclenet cyclenet_mlp}; do
    for option in ${OPTIONS:-both}; do
      case $option in
        per_segment) flags=(--config.adapt.selection=per_segment) ;;
        constant_lr) flags=(--config.adapt.lr_decay=1.0) ;;
        both) flags=(--config.adapt.selection=per_segment --config.adapt.lr_decay=1.0) ;;
        *) echo "unknown option $option; use per_segment, constant_lr or both" >&2; exit 2 ;;
      esac
      start=$(date +%s)
      python -m mola_jax.lab.reproduce --config "$dataset:$variant" --study.methods='("mtf","mola")' "${flags[@]}" \
        --study.reuse_from="$out/$dataset-$variant" --workdir "$out/$dataset-$variant-$option"
      echo "$dataset $variant $option: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_seconds.txt"
    done
  done
done
