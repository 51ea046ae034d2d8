#!/usr/bin/env bash
# Cloud TPU pod (TPU VM) launcher: installs jaxaffect on every worker and starts the same command
# on all of them; jax.distributed.initialize() detects the pod topology by itself.
#   TPU_NAME=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh \
#     train --config configs/former_dfer.py:dfew --workdir gs://bucket/runs/fdfer \
#     --config.data.source.train_list=/mnt/data/DFEW_set_1_train.txt ...
# Data: each host reads its own share of the files (per-host split by process index).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"; : "${ZONE:?set ZONE}"
REPO_URL="${REPO_URL:-$(git config --get remote.origin.url || true)}"
BRANCH="${BRANCH:-main}"
CMD="$*"
[ -n "$CMD" ] || { echo "usage: TPU_NAME=.. ZONE=.. bash launch/tpu_pod.sh <jaxaffect sub-command and flags>" >&2; exit 2; }
SETUP="set -e; if [ ! -d jaxaffect ]; then git clone -b $BRANCH $REPO_URL jaxaffect; fi; cd jaxaffect && git pull -q;
python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]>=0.12,<0.13'"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$SETUP"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd jaxaffect && JAXAFFECT_DISTRIBUTED=1 .venv/bin/jaxaffect --distributed $CMD"
