#!/usr/bin/env bash
# Old against new, side by side in one sitting: the README's default run end to end (`python -m mola_jax.train
# --config configs/etth1.py`, what every version has), each version in turn, A B A B ..., so that a drift of the
# machine's speed hits both alike. Each run starts with an empty persistent compilation cache of its own (cold),
# as a user's first run does; a last round reruns each with its cache warm. Prints every run and the medians.
#   MOLA_DATA_DIR=../shared/data bash tools/speed_vs_commit.sh 9535b6b [ROUNDS]
# Results go to runs/speed_vs_<commit>/. Nothing else should run on the machine meanwhile.
set -euo pipefail
base=${1:?usage: speed_vs_commit.sh COMMIT [ROUNDS]}
rounds=${2:-3}
here=$(pwd)
out="$here/runs/speed_vs_$base"
old=$(mktemp -d)/old
mkdir -p "$out"; rm -f "$out/log"
git worktree add --detach "$old" "$base" >/dev/null
caches=$(mktemp -d)
trap 'git worktree remove --force "$old"; rm -rf "$caches"' EXIT

e2e() {  # $1 = old|new, $2 = checkout, $3 = workdir; prints wall seconds (its cache: $caches/$1)
  mkdir -p "$caches/$1"
  (cd "$2" && JAX_COMPILATION_CACHE_DIR="$caches/$1" PYTHONPATH="$2" /usr/bin/time -f "%e" \
     python -m mola_jax.train --config configs/etth1.py --workdir "$3" 2>&1 >/dev/null | tail -1)
}
for r in $(seq 1 "$rounds"); do
  for which in old new; do
    dir=$([ "$which" = old ] && echo "$old" || echo "$here")
    rm -rf "$caches/$which" "$out/${which}_$r"
    echo "round $r: $which e2e $(e2e "$which" "$dir" "$out/${which}_$r") s (cold cache)" | tee -a "$out/log"
  done
done
for which in old new; do
  dir=$([ "$which" = old ] && echo "$old" || echo "$here")
  rm -rf "$out/${which}_warm"
  echo "warm: $which e2e $(e2e "$which" "$dir" "$out/${which}_warm") s (warm cache)" | tee -a "$out/log"
done
python - "$out/log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
  m = re.match(r"round \d+: (old|new) e2e ([\d.]+) s", line)
  if m:
    rows.setdefault(m[1], []).append(float(m[2]))
o, n = statistics.median(rows["old"]), statistics.median(rows["new"])
print(f"end-to-end s, cold cache: old {o:.2f}  new {n:.2f}  old/new {o / n:.3f}x  (medians of {len(rows['new'])})")
PY
