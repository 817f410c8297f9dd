#!/usr/bin/env bash
# Cloud TPU pod slice: create it (or use an existing one), install the code and environment on every worker,
# and run the same command on all workers at once. jax.distributed.initialize() (MOLA_DISTRIBUTED=1) finds the
# other workers through the TPU metadata. Every worker loads the whole series (a benchmark file is a few MB) onto
# its chips, and each chip gathers its own rows of every global batch there; process 0 writes the logs and
# results; every worker writes its shards of the checkpoints.
#
#   export TPU=mola-v5e-32 ZONE=us-west4-a TYPE=v5litepod-32 BUCKET=my-bucket   # BUCKET: a GCS bucket (no gs://)
#   launch/tpu_pod.sh create                   # skip for an existing pod
#   launch/tpu_pod.sh setup                    # code (this checkout's HEAD), environment, bucket mount: every worker
#   launch/tpu_pod.sh train --config configs/etth1.py --config.mesh.shape='(-1,1)' --workdir /mnt/mola/runs/etth1
#   launch/tpu_pod.sh scaling --config configs/etth1.py --workdir /mnt/mola/runs/scaling --study.meshes=8x1,16x1,32x1,16x2
#   launch/tpu_pod.sh exec 'python -c "import jax; print(jax.device_count())"'
#   launch/tpu_pod.sh delete
#
# A study over the pod's hosts (docs/studies_on_a_cluster.md): Ray on every worker (the head on worker 0), then
# the study's driver on worker 0, each cell a Ray task on one host and its chips (CELL_RESOURCES, default
# '{"TPU": 4}': a host of 4 chips is one worker). The study's workdir on the bucket mount, seen by every host:
#   launch/tpu_pod.sh ray-start
#   launch/tpu_pod.sh study reproduce --config etth1:cyclenet --workdir /mnt/mola/runs/cyclenet_etth1 \
#       --study.methods='("mtf","mola")'
#   launch/tpu_pod.sh ray-stop
#
# The workdir must be visible to every worker: the bucket mounted with gcsfuse at $MOUNT (setup does that), or a
# Filestore/NFS share. train.py writes its workdir with ordinary file operations, so pass a mounted path, not a
# gs:// URL. Put the dataset CSVs in $MOUNT/data (e.g. gsutil cp ETTh1.csv gs://$BUCKET/data/).
# gcsfuse: orbax commits a checkpoint by renaming its temporary directory, which gcsfuse refuses for a directory
# of more than --rename-dir-limit objects (default 0), so setup mounts with a high limit. The workdir lock is an
# flock, which gcsfuse keeps on the one machine that takes it (process 0's): it stops a second run from that
# machine, not from another one; that is not verified on gcsfuse here.
#
# Python: the TPU VM images (Ubuntu 22.04) have Python 3.10; mola_jax needs 3.11 or newer, so setup installs uv
# and makes a Python 3.11 virtual environment at ~/$VENV on every worker, and the commands run in it.
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE, e.g. us-west4-a}"
TYPE=${TYPE:-v5litepod-32}                 # accelerator type of `create`
VERSION=${VERSION:-v2-alpha-tpuv5-lite}    # TPU VM software version of `create` (v4: tpu-ubuntu2204-base)
BUCKET=${BUCKET:-}                         # GCS bucket mounted at $MOUNT on every worker (optional)
MOUNT=${MOUNT:-/mnt/mola}
CODE=${CODE:-mola_jax}                     # checkout directory on every worker, relative to $HOME
VENV=${VENV:-mola_venv}                    # Python >= 3.11 virtual environment on every worker, relative to $HOME
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
EXTRA=()
[[ -n ${PROJECT:-} ]] && EXTRA+=(--project="$PROJECT")

on_all() {  # run a shell command on every worker at the same time
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" "${EXTRA[@]}" --worker=all --command="$1"
}

quote() { printf '%q ' "$@"; }

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION" \
      "${EXTRA[@]}"
    ;;
  setup)
    cd "$(dirname "$0")/.."
    archive=$(mktemp /tmp/mola_jax.XXXXXX.tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD   # committed code only: the run is identified by its SHA
    gcloud compute tpus tpu-vm scp "$archive" "$TPU":mola_jax.tar.gz --zone="$ZONE" "${EXTRA[@]}" --worker=all
    rm -f "$archive"
    on_all "set -e; rm -rf ~/$CODE && mkdir -p ~/$CODE && tar -xzf ~/mola_jax.tar.gz -C ~/$CODE
      echo $(git rev-parse HEAD) > ~/$CODE/COMMIT
      python3 -m pip install -q --user -U uv
      ~/.local/bin/uv venv -q --python $PYTHON_VERSION ~/$VENV
      ~/.local/bin/uv pip install -q --python ~/$VENV/bin/python -U 'jax[tpu]' -r ~/$CODE/requirements.txt"
    if [[ -n $BUCKET ]]; then
      on_all "set -e; if ! command -v gcsfuse >/dev/null; then
          echo 'deb https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' |
            sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
          curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - >/dev/null
          sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi
        sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
        mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT"
    fi
    ;;
  train | scaling | reproduce)
    module=mola_jax.lab.$cmd
    [[ $cmd == train ]] && module=mola_jax.train
    on_all "cd ~/$CODE && MOLA_DISTRIBUTED=1 MOLA_DATA_DIR=\${MOLA_DATA_DIR:-$MOUNT/data} \
      ~/$VENV/bin/python -m $module $(quote "$@")"
    ;;
  ray-start)  # Ray on every worker: the head on worker 0 (found by its internal IP), the others join it
    head=$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" "${EXTRA[@]}" \
      --format='value(networkEndpoints[0].ipAddress)')
    on_all "set -e; cd ~/$CODE; ~/$VENV/bin/python -c 'import ray' 2>/dev/null ||
        ~/.local/bin/uv pip install -q --python ~/$VENV/bin/python 'ray>=2.40,<3'
      if hostname -I | grep -qw $head; then ~/$VENV/bin/ray start --head --port=6379 --disable-usage-stats
      else sleep 15; ~/$VENV/bin/ray start --address=$head:6379 --disable-usage-stats; fi"
    ;;
  ray-stop)
    on_all "~/$VENV/bin/ray stop"
    ;;
  study)  # MODULE ARGS...: a study driver (reproduce, sweep) on worker 0, its cells over the pod's hosts
    module=$1
    shift
    cells=${CELL_RESOURCES:-'{"TPU": 4}'}
    gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" "${EXTRA[@]}" --worker=0 --command="cd ~/$CODE && \
      MOLA_DATA_DIR=\${MOLA_DATA_DIR:-$MOUNT/data} RAY_ADDRESS=127.0.0.1:6379 ~/$VENV/bin/python -m \
      mola_jax.lab.$module $(quote "$@" --study.engine=ray --study.cell_resources="$cells")"
    ;;
  exec)
    on_all "cd ~/$CODE && source ~/$VENV/bin/activate && $*"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU" --zone="$ZONE" "${EXTRA[@]}" --quiet
    ;;
  *)
    echo "usage: launch/tpu_pod.sh create|setup|train|scaling|reproduce|exec|ray-start|study|ray-stop|delete [ARGS...]" >&2
    exit 2
    ;;
esac
