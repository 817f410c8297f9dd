#!/usr/bin/env bash
# Seeds one after another against seeds in one program, side by side in one sitting (serial, together, serial,
# together, ...): a one-cell reproduce of ETTh1 (mola, T = 96, S = 24, 3 seeds, 3 epochs a stage), each run in a
# fresh workdir, wall seconds from /usr/bin/time. Prints every run, the medians and their ratio.
#   MOLA_DATA_DIR=../shared/data bash tools/seeds_ab.sh [ROUNDS] [EXTRA --config/--study FLAGS...]
# Nothing else should run on the machine meanwhile.
set -euo pipefail
rounds=${1:-2}
shift || true
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for together in False True; do
    rm -rf "$out/study"
    /usr/bin/time -f "%e" python -m mola_jax.lab.reproduce --config configs/etth1.py --workdir "$out/study" \
      --study.horizons='(96,)' --study.methods='("mola",)' --study.segment_options=config \
      --config.segment_len=24 --config.pretrain.epochs=3 --config.adapt.epochs=3 \
      --study.seeds_in_one_program="$together" "$@" >/dev/null 2>"$out/err"
    s=$(tail -1 "$out/err")
    echo "round $r: seeds_in_one_program=$together $s s" | tee -a "$out/log"
  done
done
python - "$out/log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
  m = re.match(r"round \d+: seeds_in_one_program=(\w+) ([\d.]+) s", line)
  rows.setdefault(m[1], []).append(float(m[2]))
a, b = statistics.median(rows["False"]), statistics.median(rows["True"])
print(f"wall s: serial {a:.1f}  in one program {b:.1f}  serial / in one program {a / b:.3f}x  (medians of {len(rows['True'])})")
PY
