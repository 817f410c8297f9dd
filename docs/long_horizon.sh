#!/usr/bin/env bash
# Two principled stage-2 changes for the long horizons, each selected on validation (docs/results.md, "Beyond
# ETTh1"): (a) adapt the head as well as the FFN (--config.mola.targets="('ffn','head')"): every segment gets its
# own change to the map from features to its S steps; (b) per-segment selection (--config.adapt.selection=
# per_segment): each segment keeps its own best epoch instead of the official "any segment improved" rule.
# Each is a stage-2 run from the datasets study's stage-1 model (seed 2023, the first paper option of S), beside
# that study's own MoLA cell as the baseline. Prints validation and test MSE of all three.
# Usage: bash docs/long_horizon.sh DATASET [RUNS_DIR]   (after docs/datasets_study.sh; default runs/datasets)
set -euo pipefail
name=$1 root=${2:-runs/datasets}
paper=$root/$name/paper out=$root/$name/long_horizon
horizons=$(python -c "import mola_jax; print(*mola_jax.get_config('$name').reproduce.horizons[2:])")
for t in $horizons; do
  s=$(python -c "import mola_jax; print(mola_jax.get_config('$name').segment_options[str($t)][0])")
  for option in head per_segment; do
    case $option in
      head) extra=(--config.mola.targets="('ffn','head')") ;;
      per_segment) extra=(--config.adapt.selection=per_segment) ;;
    esac
    [ -f "$out/T$t-$option/results.json" ] || python -m mola_jax.train --config "$name" --config.stage=adapt \
      --config.horizon="$t" --config.segment_len="$s" --config.init_from="$paper/pretrain/S$s-seed2023" \
      --workdir "$out/T$t-$option" "${extra[@]}"
  done
done
python - "$paper" "$out" <<'PY'
import json, pathlib, sys
paper, out = map(pathlib.Path, sys.argv[1:])
print("| T | S | variant | val MSE | test MSE |\n|---|---|---|---|---|")
for run in sorted(out.glob("T*/results.json")):
    r = json.loads(run.read_text())
    base = json.loads((paper / f"cells/mola-T{r['horizon']}-S{r['segment_len']}-seed2023/results.json").read_text())
    if run.parent.name.endswith("head"):
        print(f"| {r['horizon']} | {r['segment_len']} | MoLA (paper) | {base['val_mse']:.4f} | {base['test_mse']:.4f} |")
    print(f"| {r['horizon']} | {r['segment_len']} | {run.parent.name.split('-', 1)[1]} | {r['val_mse']:.4f} | {r['test_mse']:.4f} |")
PY
