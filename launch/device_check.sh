#!/usr/bin/env bash
# The accelerator check: on a machine with a GPU or a TPU, the README run, the benchmark (its train and eval
# programs, K = 4 only), the scaling study's host time on one device, a one-horizon reproduce of ETTh1 with the
# seeds of each cell in one program (mtf, lora, mola x 3 seeds), and the README config's programs compiled for this
# device with the floor of their steps (lab/aot.py --study.topology=local); then one table of what they measured
# (device, step and compile times beside each step's floor, host time per step, wall times). About 8 minutes on
# one GPU.
#
#   launch/device_check.sh [DIR]          # default DIR: runs/device_check; the table also goes to DIR/table.md
#   QUICK=1 launch/device_check.sh DIR    # the synthetic config, one epoch a stage: the script's own check (CPU)
#
# Needs MOLA_DATA_DIR (default ../shared/data) and the package installed for the device (README "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/device_check}
export MOLA_DATA_DIR=${MOLA_DATA_DIR:-$PWD/../shared/data}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
mkdir -p "$out"
config=configs/etth1.py
quick=()
bench=(--study.segments='(4,)' --study.horizons='(96,)' --study.channels='(7,)' --study.sweep_loop=False)
if [[ -n ${QUICK:-} ]]; then
  config=configs/synthetic.py
  quick=(--config.pretrain.epochs=1 --config.adapt.epochs=1 --config.horizon=48 --config.segment_len=24)
  bench+=(--study.tiny=True)
fi
timed() {  # timed NAME COMMAND...: wall seconds of COMMAND into DIR/wall.tsv, its output into DIR/NAME.log
  local name=$1 t0 t1
  shift
  echo "== $name: $*" >&2
  t0=$EPOCHREALTIME
  if ! "$@" >"$out/$name.log" 2>&1; then
    echo "device_check: $name failed; see $out/$name.log" >&2
    tail -20 "$out/$name.log" >&2
    exit 1
  fi
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", n, b - a }' >>"$out/wall.tsv"
}
rm -f "$out/wall.tsv"
timed readme python -m mola_jax.train --config "$config" --workdir "$out/readme" --overwrite "${quick[@]}"
timed readme_warm python -m mola_jax.train --config "$config" --workdir "$out/readme_warm" --overwrite "${quick[@]}"
timed bench python -m mola_jax.lab.bench --config "$config" --workdir "$out/bench" "${quick[@]}" "${bench[@]}"
timed host python -m mola_jax.lab.scaling --config "$config" --workdir "$out/host" --study.meshes=1x1 \
  --study.batches=32 "${quick[@]}"
timed aot python -m mola_jax.lab.aot --config "$config" --workdir "$out/aot" --study.topology=local "${quick[@]}"
repro=(--study.horizons='(96,)' --study.seeds_in_one_program=True)
[[ -n ${QUICK:-} ]] && repro=(--study.horizons='(48,)' --study.seeds_in_one_program=True --study.num_seeds=2)
rm -rf "$out/reproduce"  # a study skips finished cells: a timing needs a fresh one
timed reproduce python -m mola_jax.lab.reproduce --config "$config" --workdir "$out/reproduce" "${quick[@]}" \
  "${repro[@]}"
python -m mola_jax.lab.report.device_check "$out" | tee "$out/table.md"
