#!/usr/bin/env bash
# Trains on a Cloud TPU VM or pod slice: creates the TPU VM (or reuses it
# when it exists), copies this repository to every worker, installs it with
# jax[tpu] and the [gcs] extra, and starts the same command on all workers at
# once. Each worker
# runs one process; jax.distributed.initialize() (--multihost) finds the
# other workers through the TPU metadata.
#
# Usage (from anywhere; the repository is the one holding this script):
#   TPU_NAME=sst-v5e ZONE=us-west4-a launch/tpu_pod.sh CONFIG WORKDIR [flags...]
#   TPU_NAME=sst-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#     RUNTIME_VERSION=tpu-ubuntu2204-base \
#     launch/tpu_pod.sh configs/synthetic.py gs://my-bucket/runs/sst \
#     --config.batch_size=128
#
# WORKDIR must be one location that every worker sees (checkpoints are
# written by all processes together): a gs:// URL (docs/launch.md, "Remote
# workdirs"). Re-running the script resumes from WORKDIR's latest checkpoint
# (e.g. after a spot preemption, where the processes save the step they
# reached and exit 0).
#
# Environment variables read:
#   TPU_NAME          TPU VM name (required).
#   ZONE              GCP zone (required).
#   PROJECT           GCP project (default: gcloud's configured project).
#   ACCELERATOR_TYPE  for creation (default: v5litepod-16, 4 hosts).
#   RUNTIME_VERSION   TPU software version for creation
#                     (default: v2-alpha-tpuv5-lite).
#   SPOT              1 to create a spot (preemptible) TPU (default: 0).
#   GCS_BUCKET        bucket to mount at /mnt/gcs on every worker with gcsfuse
#                     (optional; for data read through local paths, not for
#                     the workdir).
#   JAX_PACKAGE       pip requirement for JAX on TPU (default: jax[tpu]).
#   REMOTE_DIR        repository location on the workers (default: sst_jax,
#                     under the remote home directory).
#   SKIP_INSTALL      1 to skip copying/installing (code already there).
set -euo pipefail

if (( $# < 2 )) || [[ -z "${TPU_NAME:-}" || -z "${ZONE:-}" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
remote_dir=${REMOTE_DIR:-sst_jax}
tpu=(gcloud compute tpus tpu-vm)
where=(--zone="${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project="${PROJECT}")
fi

on_all_workers() {
  "${tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command="$1"
}

# Create or reuse the TPU VM.
if "${tpu[@]}" describe "${TPU_NAME}" "${where[@]}" > /dev/null 2>&1; then
  echo "tpu_pod: reusing ${TPU_NAME}"
else
  create=(--accelerator-type="${ACCELERATOR_TYPE:-v5litepod-16}"
          --version="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}")
  if [[ "${SPOT:-0}" == 1 ]]; then
    create+=(--spot)
  fi
  echo "tpu_pod: creating ${TPU_NAME} (${create[*]})"
  "${tpu[@]}" create "${TPU_NAME}" "${where[@]}" "${create[@]}"
fi

# Copy and install the repository on every worker.
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  tarball=$(mktemp -d)/sst_jax.tar.gz
  tar -czf "${tarball}" -C "${repo}" --exclude=.git --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.pytest_cache .
  "${tpu[@]}" scp "${tarball}" "${TPU_NAME}:sst_jax.tar.gz" "${where[@]}" \
      --worker=all
  rm -f "${tarball}"
  on_all_workers "set -e; rm -rf ${remote_dir}; mkdir -p ${remote_dir};
    tar -xzf sst_jax.tar.gz -C ${remote_dir};
    python3 -m pip install -q -U pip;
    python3 -m pip install -q -e '${remote_dir}[gcs]' '${JAX_PACKAGE:-jax[tpu]}'"
fi

if [[ -n "${GCS_BUCKET:-}" ]]; then
  on_all_workers "set -e; if ! mountpoint -q /mnt/gcs; then
    if ! command -v gcsfuse > /dev/null; then
      export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s);
      echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list;
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
        sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc > /dev/null;
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi;
    sudo mkdir -p /mnt/gcs && sudo chown \$(id -u) /mnt/gcs;
    gcsfuse --implicit-dirs ${GCS_BUCKET} /mnt/gcs; fi"
fi

# Train: the same command on every worker, quoted for the remote shell.
args=$(printf ' %q' --config="${config}" --workdir="${workdir}" --multihost \
       "$@")
echo "tpu_pod: python3 -m sst_jax.main${args}"
on_all_workers "cd ${remote_dir} && python3 -m sst_jax.main${args}"
