#!/usr/bin/env bash
# MoLA against its own mtf (docs/results.md §15): a reproduction study of mtf and MoLA per config (the baseline),
# then stage-2 options of docs/stage2_options.sh as studies that reuse the baseline's stage 1 and mtf (S chosen on
# validation again), then the diagnosis of each. A config is DATASET[:VARIANT]; its studies are
# <RUNS>/<DATASET>-<VARIANT or itransformer>[-<OPTION>].
#
#   bash docs/diagnosis_study.sh runs/diag etth1:cyclenet national_illness:cyclenet national_illness
#   OPTIONS="heads heads_ps" bash docs/diagnosis_study.sh runs/diag etth1:cyclenet
#   EXTRA="--study.horizons=(96,)" bash docs/diagnosis_study.sh runs/diag etth1    # more study flags, e.g. one T
#   python -m mola_jax.lab.report.diagnosis runs/diag/etth1-cyclenet runs/diag/etth1-cyclenet-heads
#   python -m mola_jax.lab.report.segments ... / backbones runs/diag    # the test and validation tables
set -euo pipefail
# shellcheck source=docs/stage2_options.sh
. "$(dirname "$0")/stage2_options.sh"
out=${1:-runs/diag}
shift || true
for config in "$@"; do
  name=${config/:/-}
  [[ $config == *:* ]] || name="$config-itransformer"
  base="$out/$name"
  for option in ${OPTIONS:-baseline}; do
    flags=()
    workdir=$base
    if [ "$option" != baseline ]; then
      stage2_flags "$option"
      flags+=(--study.reuse_from="$base")
      workdir="$base-$option"
    fi
    start=$(date +%s)
    # shellcheck disable=SC2086  # EXTRA: flags split on spaces
    python -m mola_jax.lab.reproduce --config "$config" --study.methods='("mtf","mola")' "${flags[@]}" \
      ${EXTRA:-} --workdir "$workdir"
    echo "$name $option: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_seconds.txt"
  done
done
