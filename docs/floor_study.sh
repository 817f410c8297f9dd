#!/usr/bin/env bash
# The GPU and TPU tables of docs/performance.md ("What a step is made of, and its floor"): fit's programs compiled
# without the devices (lab/aot.py), each step counted from its compiled HLO (kernels, matmul FLOPs, bytes: lab/hlo.py)
# and its floor on the device (lab/targets.py; a projection, not a measurement). Needs jax's CUDA plugin and libtpu
# (requirements-dev.txt), no GPU, no TPU. Three parts, each into its own folder of RUNS_DIR:
#   devices/    the README config (ETTh1, iTransformer MoLA, T = 96) on one H100, a node of 8 H100s, two nodes of 8,
#               one A100, one H200 and a v5e-8, v6e-8 and v5p-8 slice, data parallel;
#   table/      ETTh1's 4 horizons x mtf / lora / mola on one H100 and a v5e-8: the projection of the full table;
#   backbones/  every backbone on ETTh1 (its own recipe: CycleNet's and OLinear's variants) at T = 96 and 720, MoLA,
#               on one H100 and a v5e-8: which term dominates a step.
# Then the tables: python -m mola_jax.lab.report.floors steps RUNS_DIR/devices (and project, bounds).
#   bash docs/floor_study.sh [RUNS_DIR] [README_RESULTS_JSON]     (default runs/floors; a README run's results.json
#                                                                  gives the projection's epochs)
#   PARTS="devices table" bash docs/floor_study.sh ...             (a subset of the parts)
set -euo pipefail
out=${1:-runs/floors}
results=${2:-}
export JAX_PLATFORMS=cpu
aot() { python -m mola_jax.lab.aot --study.rules=data_parallel "$@"; }
for part in ${PARTS:-devices table backbones}; do
  case $part in
    devices)
      aot --config etth1 --study.topology=h100,h100:1x1x8,h100:2x1x8,a100,h200,v5e:2x4,v6e:2x4,v5p:2x2x1 \
        --workdir "$out/devices"
      python -m mola_jax.lab.report.floors steps "$out/devices"
      ;;
    table)
      for horizon in 96 192 336 720; do
        for method in mtf lora mola; do
          aot --config etth1 --config.horizon="$horizon" --config.method="$method" --study.topology=h100,v5e:2x4 \
            --workdir "$out/table/T$horizon-$method"
        done
      done
      if [[ -n $results ]]; then python -m mola_jax.lab.report.floors project "$out/table" "$results"; fi
      ;;
    backbones)
      for backbone in itransformer patchtst transformer informer autoformer dlinear cyclenet olinear; do
        config=etth1
        case $backbone in cyclenet | olinear) config=etth1:$backbone ;; esac
        for horizon in 96 720; do
          aot --config "$config" --config.backbone="$backbone" --config.horizon="$horizon" \
            --study.topology=h100,v5e:2x4 --workdir "$out/backbones/$backbone-T$horizon"
        done
      done
      python -m mola_jax.lab.report.floors bounds "$out/backbones"
      ;;
    *) echo "unknown part $part (devices, table, backbones)" >&2 && exit 2 ;;
  esac
done
