#!/usr/bin/env bash
# Three principled stage-2 changes for the long horizons, each judged on validation (docs/results.md, "Beyond
# ETTh1"): (a) adapt the head as well as the FFN (--config.adapt.targets="('ffn','head')"): every segment gets its
# own change to the map from features to its S steps; (b) per-segment selection (--config.adapt.selection=
# per_segment): each segment keeps its own best epoch instead of the official "any segment improved" rule;
# (c) a constant stage-2 learning rate (--config.adapt.lr_decay=1.0) instead of halving it every epoch.
# Each is a stage-2 run from the datasets study's stage-1 model (seed 2023) at the S the auto study chose (the
# reproduce default: data-driven options), beside that study's own MoLA cell as the baseline. Prints validation
# and test MSE of all four.
# Usage: bash docs/long_horizon.sh DATASET [RUNS_DIR]   (after docs/datasets_study.sh; default runs/datasets)
set -euo pipefail
name=$1 root=${2:-runs/datasets}
out=$root/$name/long_horizon
# "T S stage1-dir baseline-cell-dir" for the last two horizons: the auto study's choice, wherever the run lives
# (the auto study's own folder, or the paper study it reused).
python - "$root/$name" > "$out.plan" <<'PY'
import csv, pathlib, sys
sys.path.insert(0, "tools")
from segments_summary import run_dir
root = pathlib.Path(sys.argv[1])
rows = {int(r["horizon"]): int(r["segment_len"]) for r in csv.DictReader(open(root / "auto/table.csv")) if r["method"] == "mola"}
find = lambda rel: run_dir((root / "auto", root / "paper"), rel)
for t in sorted(rows)[2:]:
    s = rows[t]
    print(t, s, find(f"pretrain/S{s}-seed2023"), find(f"cells/mola-T{t}-S{s}-seed2023"))
PY
while read -r t s stage1 base; do
  for option in head per_segment constant_lr; do
    case $option in
      head) extra=(--config.adapt.targets="('ffn','head')") ;;
      per_segment) extra=(--config.adapt.selection=per_segment) ;;
      constant_lr) extra=(--config.adapt.lr_decay=1.0) ;;
    esac
    [ -f "$out/T$t-$option/results.json" ] || python -m mola_jax.train --config "$name" --config.stage=adapt \
      --config.horizon="$t" --config.segment_len="$s" --config.init_from="$stage1" \
      --workdir "$out/T$t-$option" "${extra[@]}"
  done
done < "$out.plan"
python - "$out.plan" "$out" <<'PY'
import json, pathlib, sys
plan, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
print("| T | S | variant | val MSE | test MSE |\n|---|---|---|---|---|")
for line in plan.read_text().split("\n"):
    if not line:
        continue
    t, s, _, base = line.split()
    variants = [("MoLA (auto S)", base), ("+ head", out / f"T{t}-head")]
    variants += [("per-segment selection", out / f"T{t}-per_segment"), ("constant lr", out / f"T{t}-constant_lr")]
    for label, path in variants:
        r = json.loads((pathlib.Path(path) / "results.json").read_text())
        print(f"| {t} | {s} | {label} | {r['val_mse']:.4f} | {r['test_mse']:.4f} |")
PY
