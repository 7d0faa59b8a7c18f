#!/usr/bin/env bash
# Runs N processes of sst_jax.main on this machine, each with its own CPU
# devices, joined through jax.distributed into one multi-process job.
#
# This is how multi-host code paths (jax.distributed, per-process data
# shards, make_array_from_process_local_data, orbax multi-process saves) are
# exercised without a cluster. Cross-process CPU collectives use gloo (the
# default of jax >= 0.5; set explicitly below).
#
# Usage:
#   launch/local_multiprocess.sh N_PROCS DEVICES_PER_PROC WORKDIR [flags...]
#   launch/local_multiprocess.sh 2 4 /tmp/sst_mp \
#       --config=configs/tiny.py:baseline --config.total_steps=4
#
# Extra flags are passed to every process unchanged. The job's global device
# count is N_PROCS * DEVICES_PER_PROC; the global batch must divide by it.
#
# Needs bash >= 5.1 (wait -n -p).
#
# Environment variables read:
#   PYTHON            interpreter (default: python3 on PATH).
#   COORDINATOR_PORT  localhost port of process 0 (default: a free port).
#   LOG_DIR           per-process logs process_<i>.log (default: WORKDIR/logs).
#   XLA_FLAGS         kept, with --xla_force_host_platform_device_count
#                     replaced by DEVICES_PER_PROC.
#
# Process 0's output is echoed to the terminal; every process also writes its
# log file. The script waits for all processes; when one fails, the others
# are stopped (they would block in a collective) and the script exits with
# the failing process's status after printing the end of its log.

set -euo pipefail

if (( $# < 3 )); then
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
n_procs=$1
devices_per_proc=$2
workdir=$3
shift 3

python_bin=${PYTHON:-python3}
log_dir=${LOG_DIR:-${workdir}/logs}
mkdir -p "${log_dir}"

if [[ -n "${COORDINATOR_PORT:-}" ]]; then
  port=${COORDINATOR_PORT}
else
  # Bind port 0 to get a free port from the kernel, then release it.
  port=$("${python_bin}" -c 'import socket; s = socket.socket(); \
s.bind(("localhost", 0)); print(s.getsockname()[1]); s.close()')
fi

export JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
# Replace any device count inherited from the caller (e.g. pytest's 8).
xla_flags=$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' \
    <<< "${XLA_FLAGS:-}")
export XLA_FLAGS="${xla_flags} --xla_force_host_platform_device_count=${devices_per_proc}"

declare -A running=()  # pid -> process index, while it runs
tail_pid=""
# shellcheck disable=SC2317  # invoked through the trap
cleanup() {
  local pid
  for pid in "${!running[@]}" ${tail_pid}; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

for (( i = 0; i < n_procs; i++ )); do
  "${python_bin}" -m sst_jax.main --workdir="${workdir}" \
      --coordinator_address="localhost:${port}" \
      --num_processes="${n_procs}" --process_id="${i}" "$@" \
      > "${log_dir}/process_${i}.log" 2>&1 &
  running[$!]=${i}
done
tail -n +1 -f "${log_dir}/process_0.log" &
tail_pid=$!

status=0
while (( ${#running[@]} > 0 )); do
  finished_pid=""
  set +e
  wait -n -p finished_pid "${!running[@]}"
  rc=$?
  set -e
  if [[ -z "${finished_pid}" ]]; then
    break
  fi
  i=${running[${finished_pid}]}
  unset "running[${finished_pid}]"
  if (( rc != 0 )); then
    status=${rc}
    echo "local_multiprocess: process ${i} failed with status ${rc}; last" \
         "lines of ${log_dir}/process_${i}.log:" >&2
    tail -n 30 "${log_dir}/process_${i}.log" >&2
    break
  fi
done
sleep 0.2  # let tail print process 0's last lines
exit "${status}"
