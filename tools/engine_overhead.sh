#!/usr/bin/env bash
# The study engine's overhead (docs/performance.md, "Studies on Ray: engine overhead"): the ETTh1 CycleNet/Linear
# study (mtf and MoLA, 3 seeds, the four horizons, the reproduce defaults) under --study.engine=local and under
# --study.engine=ray on a Ray cluster of this machine with WORKERS one-CPU workers (`ray start --head
# --num-cpus=WORKERS`, default 2, started once, as a user's cluster would be), alternated PAIRS times (the first of
# each pair alternates too). Every run has a fresh study folder, so every cell trains; the XLA compile cache is as
# a user has it (on, in its default place), warmed by one local study first that is not counted (WARMUP=0 skips
# it). Prints each run's wall time, the medians, their ratio, and whether the two engines' tables agree (same S,
# test MSE to 1e-6).
#
#   bash tools/engine_overhead.sh [OUT_DIR] [PAIRS]      # default runs/engine_overhead, 2 pairs
#   WORKERS=1 WARMUP=0 bash tools/engine_overhead.sh runs/engine_overhead_1 1   # the engine alone, no parallelism
set -euo pipefail
out=${1:-runs/engine_overhead}
pairs=${2:-2}
mkdir -p "$out"
tmp=$(mktemp -d /tmp/rayXXXXXX)  # short: Ray's socket paths must stay under 108 bytes
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid python -m ray.scripts.scripts start --head --block --num-cpus="${WORKERS:-2}" --node-ip-address=127.0.0.1 --port="$port" --temp-dir="$tmp" \
  --include-dashboard=false --disable-usage-stats >"$out/ray.log" 2>&1 &
head=$!
disown  # the shell says nothing when the trap ends it
trap 'kill -9 -- -$head 2>/dev/null; rm -rf "$tmp"' EXIT
export RAY_ADDRESS=127.0.0.1:$port
until python -c 'import ray; ray.init(); ray.shutdown()' >/dev/null 2>&1; do sleep 1; done

study() {  # ENGINE RUN: one study, its wall seconds appended to $out/times.csv
  rm -rf "${out:?}/$2"
  local start ms
  start=$(date +%s%N)
  python -m mola_jax.lab.reproduce --config etth1:cyclenet --study.methods='("mtf","mola")' --workdir "$out/$2" \
    --study.engine="$1" >"$out/$2.log" 2>&1
  ms=$((($(date +%s%N) - start) / 1000000))
  printf '%s,%s,%d.%03d\n' "$1" "$2" $((ms / 1000)) $((ms % 1000)) | tee -a "$out/times.csv"
}
echo "engine,run,seconds" >"$out/times.csv"
if [[ ${WARMUP:-1} != 0 ]]; then study local warmup >/dev/null && sed -i '/,warmup,/d' "$out/times.csv"; fi
for ((i = 0; i < pairs; i++)); do
  if ((i % 2 == 0)); then study local "local$i"; study ray "ray$i"; else study ray "ray$i"; study local "local$i"; fi
done

python - "$out" "$pairs" <<'PY'
import csv, statistics, sys, pathlib
out, pairs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
times = {}
for r in csv.DictReader(open(out / "times.csv")):
  times.setdefault(r["engine"], []).append(float(r["seconds"]))
local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
print(f"local {times['local']} s, median {local:.1f}; ray {times['ray']} s, median {ray:.1f}; ray/local {ray / local:.3f}")
tables = [list(csv.DictReader(open(out / f"{e}{i}" / "table.csv"))) for i in range(pairs) for e in ("local", "ray")]
key = lambda t: [(r["method"], r["horizon"], r["segment_len"]) for r in t]
mse = lambda t: [float(r["test_mse_mean"]) for r in t]
same = all(key(t) == key(tables[0]) and max(abs(a - b) for a, b in zip(mse(t), mse(tables[0]))) <= 1e-6 for t in tables)
print("tables:", "the same (S, test MSE to 1e-6)" if same else "DIFFERENT")
PY
