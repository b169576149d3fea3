#!/bin/bash
# UNTRIED: this script has never run on a TPU pod (docs/clusters.md).
# Trains one network on a Cloud TPU VM pod slice (e.g. v4-32 = 4 hosts): the same
# command runs on every host, and JAX reads the slice's layout from the TPU
# metadata (`--multihost`).
#
#   launch/tpu_pod.sh NAME ZONE --setup            # copy this checkout to every host, install
#   launch/tpu_pod.sh NAME ZONE --config=configs/cifar10.py:resnet110 --workdir=/mnt/runs/r110
#
# --workdir must be a directory every host sees, on a filesystem with atomic
# renames (Filestore or another NFS mount): each host writes its part of every
# checkpoint there, host 0 writes metrics.jsonl. Spot / preemptible TPUs get
# SIGTERM before they are taken away: the hosts agree on one step, save it and
# exit 0 ("stopped by a signal at step N"); run the same command on the
# recreated slice to resume from it. Set RESJAX_DIR to place the code elsewhere
# than ~/resjax on the hosts.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE (--setup | LAUNCH_TRAIN_FLAGS...)" >&2
  exit 2
fi
name=$1
zone=$2
shift 2
dir=${RESJAX_DIR:-resjax}
on_all() {
  gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"
}
if [[ "$1" == "--setup" ]]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  on_all "rm -rf ~/$dir && mkdir -p ~/$dir"
  gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all \
    "$root"/pyproject.toml "$root"/setup.py "$root"/README.md "$root"/resjax "$root"/configs \
    "$root"/launch "$root"/benchmarks \
    "$name":"~/$dir/"
  on_all "cd ~/$dir && pip install -q -e . 'jax[tpu]'"
  exit 0
fi
on_all "cd ~/$dir && python -u -m launch.train --multihost $(printf '%q ' "$@")"
