#!/usr/bin/env bash
# Old against new, side by side in one sitting: the train-step time of both stages (tools/step_time.py) and the
# README's default run end to end (`python -m mola_jax.train --config configs/etth1.py`), each version run in
# turn, A B A B ..., so that a drift of the machine's speed hits both alike. Prints every run and the medians.
#   MOLA_DATA_DIR=../shared/data bash tools/speed_vs_commit.sh f23142c [ROUNDS]
# The new tree's runs start with an empty persistent compilation cache (cold), as a user's first run does; the
# last round also times a warm rerun. Results go to runs/speed_vs_<commit>/.
set -euo pipefail
base=${1:?usage: speed_vs_commit.sh COMMIT [ROUNDS]}
rounds=${2:-3}
here=$(pwd)
out="$here/runs/speed_vs_$base"
old=$(mktemp -d)/old
mkdir -p "$out"; rm -f "$out/log"
git worktree add --detach "$old" "$base" >/dev/null
trap 'git worktree remove --force "$old"' EXIT
cache=$(mktemp -d)  # the new version's compilation cache, emptied before each cold run

steps() {  # $1 = checkout; prints "stage ms/step" lines
  (cd "$1" && PYTHONPATH="$1" python "$here/tools/step_time.py" --config configs/etth1.py 2>/dev/null)
}
e2e() {  # $1 = checkout, $2 = workdir; prints wall seconds
  (cd "$1" && /usr/bin/time -f "%e" python -m mola_jax.train --config configs/etth1.py --workdir "$2" \
     2>&1 >/dev/null | tail -1)
}
for r in $(seq 1 "$rounds"); do
  echo "round $r: old step $(steps "$old" | tr '\n' ' ')" | tee -a "$out/log"
  rm -rf "$cache"/*; echo "round $r: new step $(JAX_COMPILATION_CACHE_DIR=$cache steps "$here" | tr '\n' ' ')" \
    | tee -a "$out/log"
  rm -rf "$out/old_$r"; echo "round $r: old e2e $(e2e "$old" "$out/old_$r") s" | tee -a "$out/log"
  rm -rf "$cache"/* "$out/new_$r"
  echo "round $r: new e2e $(JAX_COMPILATION_CACHE_DIR=$cache e2e "$here" "$out/new_$r") s (cold cache)" | tee -a "$out/log"
done
rm -rf "$out/new_warm"
echo "new e2e $(JAX_COMPILATION_CACHE_DIR=$cache e2e "$here" "$out/new_warm") s (warm cache)" | tee -a "$out/log"
python - "$out/log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
  m = re.match(r"round \d+: (old|new) step pretrain ([\d.]+) ms/step adapt ([\d.]+) ms/step "
               r"eval_pretrain ([\d.]+) ms/test-split eval_adapt ([\d.]+)", line)
  if m:
    for i, what in enumerate(("stage-1 step ms", "stage-2 step ms", "stage-1 eval ms", "stage-2 eval ms"), 2):
      rows.setdefault((m[1], what), []).append(float(m[i]))
  m = re.match(r"round \d+: (old|new) e2e ([\d.]+) s", line)
  if m:
    rows.setdefault((m[1], "end-to-end s"), []).append(float(m[2]))
for what in ("stage-1 step ms", "stage-2 step ms", "stage-1 eval ms", "stage-2 eval ms", "end-to-end s"):
  o, n = statistics.median(rows[("old", what)]), statistics.median(rows[("new", what)])
  print(f"{what:16s} old {o:8.2f}  new {n:8.2f}  old/new {o / n:5.2f}x  (medians of {len(rows[('new', what)])})")
PY
