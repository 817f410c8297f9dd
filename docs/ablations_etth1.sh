#!/usr/bin/env bash
# Single-seed (2023) lever ablations behind docs/results.md, ETTh1, iTransformer. Each line is one training
# run; stage 2 starts from the official study's stage-1 checkpoints, so run that study first:
#   python -m mola_jax.lab.reproduce --config configs/etth1.py --workdir runs/repro_etth1 \
#       --study.segment_options=config
# Usage: bash docs/ablations_etth1.sh [RUNS_DIR]   (default runs/ablations); prints a summary table at the end.
set -euo pipefail
out=${1:-runs/ablations}
s1=runs/repro_etth1/stage1
mkdir -p "$out"
train() { local name=$1; shift; [ -f "$out/$name/results.json" ] || python -m mola_jax.train --config configs/etth1.py "$@" --workdir "$out/$name"; }
adapt() { local name=$1 t=$2 s=$3; shift 3; train "$name" --config.stage=adapt --config.horizon="$t" --config.segment_len="$s" --config.init_from="$s1/S$s-seed2023" "$@"; }

# Segment length: whole days (multiples of 24) against the official options (T=336: 84/42, T=720: 180/90).
adapt T336-S48 336 48
train stage1-S240 --config.stage=pretrain --config.horizon=240 --config.segment_len=240
train T720-S240 --config.stage=adapt --config.horizon=720 --config.segment_len=240 --config.init_from="$out/stage1-S240"
# Stage-2 learning rate, selection rule, adapted layers, early stopping, rank, experts (T=192, S=48).
adapt lr5e-3 192 48 --config.adapt.lr=5e-3
adapt lr1e-2 192 48 --config.adapt.lr=1e-2
adapt per_segment-T96 96 24 --config.adapt.selection=per_segment
adapt per_segment-T192 192 48 --config.adapt.selection=per_segment
adapt attn 192 48 --config.adapt.targets="('ffn','attn')"
adapt nostop 192 48 --config.adapt.patience=100
adapt rank4 192 48 --config.technique.mola.rank=4
adapt rank16 192 48 --config.technique.mola.rank=16
adapt experts3 192 48 --config.technique.mola.num_experts=3
adapt experts12 192 48 --config.technique.mola.num_experts=12
# Stage-1 epochs: 10 (patience 3) instead of 5 (patience 2), same stage 2.
train stage1-S48-e10 --config.stage=pretrain --config.horizon=48 --config.segment_len=48 --config.pretrain.epochs=10 --config.pretrain.patience=3
train stage1e10 --config.stage=adapt --config.horizon=192 --config.segment_len=48 --config.pretrain.epochs=10 --config.pretrain.patience=3 --config.init_from="$out/stage1-S48-e10"

python - "$out" <<'PY'
import json, pathlib, sys
for d in sorted(pathlib.Path(sys.argv[1]).glob("*/results.json")):
    r = json.loads(d.read_text())
    print(f"{d.parent.name:20s} T={r['horizon']:4d} S={r['segment_len']:4d} val {r['val_mse']:.4f} test {r['test_mse']:.4f} / {r['test_mae']:.4f}")
PY
