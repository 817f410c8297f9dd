#!/usr/bin/env bash
# The generalisation table of docs/results.md: every fine-tuning technique, per segment and as a per-segment
# mixture, on ETTh1 with iTransformer, the official recipe with S fixed to its default option
# (`configs/etth1.py:fixed_s`: T=96 -> S=24, T=336 -> S=84), 3 seeds. One stage-1 model per (S, seed) serves
# every technique; mtf is the direct baseline. Then adapter, moadapter, fourier and mofourier again with the
# official initialisation (`adapt.official_init`; FourierFT also without scaling, `technique.fourier.scale=1`: the
# official code exactly), and fourier and mofourier with zero init but no scaling, reusing the stage-1 runs.
# Usage: [HORIZONS="96 336"] [SEEDS=3] [REUSE_FROM=STUDY] [OFFICIAL_METHODS='("adapter","fourier")'] \
#        bash docs/tuners_etth1.sh [RUNS_DIR]
# (default runs/tuners_etth1). REUSE_FROM: a study whose identical runs (stage 1, mtf, lora, mola) are taken.
# Finished cells are skipped, so a killed study picks up where it stopped.
# STUDY_FLAGS: more --study.* flags for every study below, e.g. the engine (docs/studies_on_a_cluster.md):
#   STUDY_FLAGS='--study.engine=ray --study.cell_resources={"GPU":1}' bash docs/tuners_etth1.sh
set -euo pipefail
out=${1:-runs/tuners_etth1}
horizons=$(echo "${HORIZONS:-96 336}" | tr ' ' ',')
common=(--study.horizons="($horizons,)" --study.num_seeds="${SEEDS:-3}")
python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/zero_init" "${common[@]}" \
  --study.methods='("mtf","lora","mola","ia3","moia3","adapter","moadapter","fourier","mofourier","lora_heads")' \
  ${REUSE_FROM:+--study.reuse_from="$REUSE_FROM"} ${STUDY_FLAGS:-}
python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/official_init" "${common[@]}" \
  --study.methods="${OFFICIAL_METHODS:-(\"adapter\",\"moadapter\",\"fourier\",\"mofourier\")}" \
  --config.adapt.official_init=True --config.technique.fourier.scale=1.0 --config.technique.mofourier.scale=1.0 \
  --study.reuse_from="${REUSE_FROM:-$out/zero_init}" ${STUDY_FLAGS:-}  # where the stage-1 runs are
python -m mola_jax.lab.reproduce --config configs/etth1.py:fixed_s --study.segment_options=config --workdir "$out/fourier_unscaled" "${common[@]}" \
  --study.methods='("fourier","mofourier")' --config.technique.fourier.scale=1.0 --config.technique.mofourier.scale=1.0 \
  --study.reuse_from="${REUSE_FROM:-$out/zero_init}" ${STUDY_FLAGS:-}
