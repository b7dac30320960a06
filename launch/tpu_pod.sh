#!/usr/bin/env bash
# Runs one command on every worker of a TPU VM slice (one process per worker host), e.g.
#
#   TPU_NAME=aime-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       python experiments/main.py --config=configs/walker_visual.py --workdir=/mnt/shared/runs/walker_visual
#
# gcloud starts the command on all workers at once (--worker=all), with JAX_NUM_PROCESSES set to
# the slice's number of workers (from `gcloud ... describe`, or NUM_WORKERS), which tells main.py
# that the run is multi-process; jax.distributed.initialize then finds the coordinator and
# each worker's index in the TPU metadata, so no flags are needed. A single-host slice (v4-8)
# runs as one process. Every
# process reads its own shard of each batch, so the datasets must be readable from every
# worker (a copy on each, or a shared filesystem such as NFS or a gcsfuse-mounted bucket), and
# --workdir must be on a filesystem all workers share (a gs:// URL is refused: mount the bucket):
# Orbax writes each checkpoint collectively from all workers and process 0 writes config.json,
# metrics.jsonl, videos and results.json. A v4-32 slice is 16 chips (JAX devices) on 4 workers;
# the paper's batch of 50 is padded to 64 rows there, 14 of them masked (docs/scaling.md).
#
# Environment:
#   TPU_NAME   the TPU VM (required)
#   ZONE       its zone (required)
#   PROJECT    the GCP project (default: gcloud's configured project)
#   REPO_DIR   the checkout on the workers (default: ~/aime-jax), installed there with
#              `pip install -r requirements-tpu.txt && pip install -e . --no-deps`
#   NUM_WORKERS    the slice's number of worker hosts (default: asked from gcloud)
#   WANDB_API_KEY  passed on to the workers when set (for --config.wandb.mode=online)
#   AIME_SETUP     shell commands run on each worker first (e.g. `source ~/venv/bin/activate`)
#
# Setup once on all workers, e.g.:
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
#     --command="git clone <repo> ~/aime-jax && cd ~/aime-jax && pip install -r requirements-tpu.txt && pip install -e . --no-deps"
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: TPU_NAME=... ZONE=... $0 COMMAND [ARGS...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM's name}"
: "${ZONE:?set ZONE to the TPU VM's zone}"
REPO_DIR=${REPO_DIR:-'~/aime-jax'}

project_flag=()
if [ -n "${PROJECT:-}" ]; then
  project_flag=(--project="$PROJECT")
fi
if [ -z "${NUM_WORKERS:-}" ]; then
  NUM_WORKERS=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --format=json \
    | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["networkEndpoints"]))')
fi

quoted=$(printf '%q ' "$@")
remote="cd $REPO_DIR && export JAX_NUM_PROCESSES=$NUM_WORKERS && ${AIME_SETUP:+$AIME_SETUP && }"
if [ -n "${WANDB_API_KEY:-}" ]; then
  remote+="export WANDB_API_KEY=$(printf '%q' "$WANDB_API_KEY") && "
fi
# MUJOCO_GL=egl renders offscreen on the TPU host's CPU (visual evaluation).
remote+="export MUJOCO_GL=\${MUJOCO_GL:-egl} && $quoted"

exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project_flag[@]}" --worker=all --command="$remote"
