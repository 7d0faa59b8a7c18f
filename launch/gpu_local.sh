#!/usr/bin/env bash
# Trains on one host with all of its GPUs: a single process whose jit-compiled
# step shards each global batch over every visible GPU (data parallel,
# synchronized BatchNorm). No jax.distributed is needed on one host.
#
# Usage:
#   launch/gpu_local.sh CONFIG WORKDIR [flags...]
#   launch/gpu_local.sh configs/synthetic.py /tmp/sst_gpu --config.batch_size=64
#
# Re-running with the same WORKDIR resumes from its latest checkpoint.
# The global batch (config.batch_size) must divide by the number of GPUs.
#
# Environment variables read:
#   PYTHON                          interpreter (default: python3 on PATH).
#   CUDA_VISIBLE_DEVICES            the GPUs to use (default: all).
#   JAX_PLATFORMS                   default "cuda": fail instead of silently
#                                   training on the CPU when no GPU is found.
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory JAX preallocates
#                                   (JAX's default 0.75 when unset).
#   XLA_FLAGS                       extra XLA flags, passed through.
set -euo pipefail

if (( $# < 2 )); then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

python_bin=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}

cd "${repo}"
"${python_bin}" -c 'import jax; print("GPUs:", jax.devices())'
exec "${python_bin}" -m sst_jax.main --config="${config}" \
    --workdir="${workdir}" "$@"
