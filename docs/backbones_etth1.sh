#!/usr/bin/env bash
# ETTh1 test MSE/MAE of mtf and MoLA for PatchTST, the vanilla Transformer and DLinear at T = 96 and 336 (the
# table of docs/results.md §7). Seed 2023, the official recipe with S fixed to its default option
# (`configs/etth1.py:fixed_s`: T=96 -> S=24, T=336 -> S=84; no choice on validation), TSLib's model sizes.
#
# Epoch caps: at TSLib's sizes (d_model 512, d_ff 2048) one epoch on the 2-core development CPU takes 1.5 min
# (PatchTST stage 1) to 20-30 min (Transformer stage 2), so there the study caps the epochs: PatchTST
# stage 1 / mtf <= 3 and stage 2 <= 1, the Transformer 1 and 1; DLinear (seconds per epoch) runs the full
# recipe. FULL=1 drops the caps (the recipe's 5 / 10 epochs with early stopping), for an accelerator.
# Usage: [FULL=1] bash docs/backbones_etth1.sh [RUNS_DIR]   (default runs/backbones_etth1). Finished cells are
# skipped, so a killed study picks up where it stopped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/backbones_etth1.sh
set -euo pipefail
out=${1:-runs/backbones_etth1}
study() {
  local backbone=$1 caps=()  # $2, $3: the stage-1 / stage-2 epoch caps, if any
  [ $# = 3 ] && [ "${FULL:-0}" != 1 ] && caps=(--config.pretrain.epochs="$2" --config.adapt.epochs="$3")
  python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/$backbone" \
    --config.backbone="$backbone" --study.horizons='(96,336)' --study.methods='("mtf","mola")' \
    --study.num_seeds=1 ${caps[@]+"${caps[@]}"} ${STUDY_FLAGS:-}
}
study patchtst 3 1
study transformer 1 1
study dlinear
