#!/usr/bin/env bash
# Informer and Autoformer on ETTh1 at T = 96 (S = 24, K = 4), mtf against MoLA (the encoder FFN adapted, as the
# official versions place it), seed 2023, the official recipe otherwise.
#
# CPU caps: at TSLib's widths (d_model 512, d_ff 2048) a stage-2 epoch of these encoder-decoders takes 20-30
# minutes on the 2-core development CPU (as the Transformer's, docs/backbones_etth1.sh), so here they run at
# iTransformer's MoLA width (d_model 128, d_ff 256, 8 heads, 2 encoder + 1 decoder layers, factor 3), with at
# most 3 epochs of stage 1 and mtf and 1 of stage 2 (an Informer epoch takes over a minute here even so).
# FULL=1 runs TSLib's sizes and the recipe's epochs, for an accelerator.
# Usage: [FULL=1] bash docs/encdec_etth1.sh [RUNS_DIR]   (default runs/encdec_etth1). Finished cells are skipped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/encdec_etth1.sh
set -euo pipefail
out=${1:-runs/encdec_etth1}
for backbone in informer autoformer; do
  caps=()
  [ "${FULL:-0}" != 1 ] && caps=(--config.model.$backbone.d_model=128 --config.model.$backbone.d_ff=256
                                 --config.pretrain.epochs=3 --config.adapt.epochs=1)
  python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/$backbone" \
    --config.backbone="$backbone" --study.horizons='(96,)' --study.methods='("mtf","mola")' \
    --study.num_seeds=1 ${caps[@]+"${caps[@]}"} ${STUDY_FLAGS:-}
done
