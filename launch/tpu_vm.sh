#!/usr/bin/env bash
# Training on a Cloud TPU VM (single host or pod slice): the same command on every worker.
#
# Usage (from your workstation, with gcloud configured):
#   TPU=my-tpu ZONE=us-central2-b launch/tpu_vm.sh experiments/cifar10.py gs://bucket/runs/c10 \
#       [--config.key=value ...]
# It copies this repository to every worker (~/mixjax), installs it with `jax[tpu]` on the
# first use, and starts mixjax.main on all workers at once. On a TPU VM
# jax.distributed.initialize() finds the coordinator and process ids itself. WORKDIR should
# be a GCS path (or a shared filesystem) so that all workers see the same checkpoints;
# re-running the same command resumes.
#
# ImageNet (experiments/imagenet.py, docs/imagenet.md): every worker reads its 1/P of each
# batch from the tfds data_dir DIR (imagenet2012 as array_record), which must exist at the
# same path on every worker (a copy on each worker's disk, or a bucket mounted with
# gcsfuse); a v4-32 slice has 16 chips, so the default global batch 1024 is 64 per chip:
#   TPU=my-tpu ZONE=us-central2-b launch/tpu_vm.sh experiments/imagenet.py \
#       gs://bucket/runs/imagenet --config.dataset.data_dir=DIR
set -euo pipefail

TPU=${TPU:?set TPU=<tpu name>}
ZONE=${ZONE:?set ZONE=<zone>}
CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG WORKDIR [flags]}
WORKDIR=${2:?usage: launch/tpu_vm.sh CONFIG WORKDIR [flags]}
shift 2
EXTRA=$(printf '%q ' "$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)

gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
  "$ROOT" "$TPU":~/mixjax
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  set -e; cd ~/mixjax
  test -x .venv/bin/python || (python3 -m venv .venv && .venv/bin/pip install -q -U pip \
    && .venv/bin/pip install -q -e . 'jax[tpu]')
  .venv/bin/python -m mixjax.main --config=$CONFIG --workdir=$WORKDIR --jax_distributed $EXTRA
"
