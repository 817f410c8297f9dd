#!/usr/bin/env bash
# Run any mola_jax command on N simulated CPU devices, in one process or (PROCESSES=P) in P processes on this
# machine that find each other through jax.distributed, as the hosts of a pod would.
#
#   launch/local.sh 8 python -m mola_jax.train --config configs/etth1.py --workdir runs/etth1_8dev \
#       --config.mesh.shape='(-1,1)'
#   launch/local.sh 8 python -m mola_jax.lab.scaling --config configs/etth1.py --workdir runs/scaling
#   PROCESSES=2 launch/local.sh 8 python -m mola_jax.train --config configs/synthetic.py --workdir runs/mh \
#       --config.mesh.shape='(-1,1)'                       # 2 processes x 4 devices, process 0 writes
#
# The flag must be set before jax is imported, which is why this is a launcher and not a config key.
set -euo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: [PROCESSES=P] launch/local.sh NUM_DEVICES COMMAND [ARGS...]" >&2
  exit 2
fi
devices=$1
shift
processes=${PROCESSES:-1}
if (( devices % processes )); then
  echo "NUM_DEVICES ($devices) must be a multiple of PROCESSES ($processes)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$((devices / processes))"
export MOLA_DATA_DIR=${MOLA_DATA_DIR:-$PWD/../shared/data}
if (( processes == 1 )); then
  exec "$@"
fi

export MOLA_DISTRIBUTED=1 MOLA_NUM_PROCESSES=$processes
export JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-127.0.0.1:$((20000 + RANDOM % 20000))}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < processes; i++)); do
  MOLA_PROCESS_ID=$i "$@" &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
  wait "$pid" || rc=$?
done
exit "$rc"
