#!/usr/bin/env bash
# One-command device check: what sst_jax achieves on this host's accelerator,
# in under 8 minutes, with nothing installed.
#
# Usage (from anywhere; the repository is the one holding this script):
#   bash benchmarks/device_check.sh OUTDIR           # on a GPU host or TPU VM
#   bash benchmarks/device_check.sh --smoke OUTDIR   # the same path on a CPU
#
# Steps, each in its own process under its own timeout (a failing or hung
# step is recorded and the check goes on):
#   versions   device, driver and library versions (device_check.py).
#   baseline   the ResNet-101 parser at 473x473, bfloat16, batch 16 per
#              device: JAX baseline train step and inference forward, timed
#              in turns with the same network and SGD step in PyTorch on the
#              same GPU (channels_last, bf16 autocast) (train_step.py).
#   main_job   the synthetic main job, configs/synthetic.py, in a fresh
#              workdir: wall time, images/s, final mIoU.
#   sst        the baseline's train step with the SST modules
#              (train_step.py).
# --smoke runs every step on the CPU with the tiny preset (32x32, two timed
# steps) and configs/tiny.py; the tests run it.
#
# Writes OUTDIR/<step>.log, OUTDIR/<step>.json, OUTDIR/steps.tsv and
# OUTDIR/summary.json, and prints a Markdown summary. Exit status 0 when
# every step passed, 1 otherwise, 2 on a usage error.
#
# Environment variables read:
#   PYTHON               interpreter (default: python3 on PATH); sst_jax is
#                        imported from this repository.
#   DEVICE_CHECK_BUDGET  seconds for the whole check (default: 460; smoke
#                        900). Each step's timeout is cut to what is left.
#   DEVICE_CHECK_STEPS   the steps to run, e.g. "main_job sst" to repeat
#                        two (default: all); versions always runs, the
#                        others are recorded as skipped.
#   JAX_PLATFORMS, CUDA_VISIBLE_DEVICES, XLA_FLAGS  passed through.
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi
(( $# == 1 )) || usage
[[ "$1" != -* ]] || usage

python_bin=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
outdir=$(cd "$1" && pwd)
cd "${repo}" || exit 2
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

if (( smoke )); then
  budget=${DEVICE_CHECK_BUDGET:-900}
  # A single-threaded PyTorch: its thread pool spins against JAX's on a
  # small shared CPU.
  step_flags=(--preset=tiny --batch_per_device=2 --warmup=1 --steps=2
              --torch_threads=1)
  main_config=configs/tiny.py
  timeouts=(versions=60 baseline=240 main_job=300 sst=240)
else
  budget=${DEVICE_CHECK_BUDGET:-460}
  step_flags=(--preset=resnet101 --batch_per_device=16 --warmup=3 --steps=10)
  main_config=configs/synthetic.py
  # Compiling the ResNet-101 steps dominates. Each timeout is also cut to
  # what is left of the budget: the last step, sst, gets the rest.
  timeouts=(versions=45 baseline=220 main_job=200 sst=200)
fi
step_flags+=(--dtype=bfloat16)
selected=${DEVICE_CHECK_STEPS:-baseline main_job sst}
kill_after=5
reserve=10  # for the summary
start=$(date +%s)
deadline=$(( start + budget ))
for name in steps summary versions baseline sst main_job main_job_metrics; do
  rm -f "${outdir}/${name}".{tsv,json,jsonl,log}  # a previous check's
done

timeout_of() {
  local item
  for item in "${timeouts[@]}"; do
    [[ "${item%%=*}" == "$1" ]] && echo "${item#*=}"
  done
}

# run_step NAME COMMAND...: runs COMMAND under NAME's timeout (cut to the
# time left), its output in OUTDIR/NAME.log; appends NAME, exit status,
# milliseconds, timeout and the command to OUTDIR/steps.tsv (or, for a step
# not run, "not_run" or "skipped" and the reason).
run_step() {
  local name=$1
  shift
  local limit left t0 rc ms
  if [[ " ${selected} " != *" ${name} "* && "${name}" != versions ]]; then
    printf '%s\tskipped\t0\t0\tnot in DEVICE_CHECK_STEPS\n' "${name}" \
        >> "${outdir}/steps.tsv"
    echo "[$(date +%T)] ${name}: skipped (DEVICE_CHECK_STEPS)"
    return
  fi
  limit=$(timeout_of "${name}")
  left=$(( deadline - $(date +%s) - reserve - kill_after ))
  (( limit > left )) && limit=${left}
  if (( limit < 5 )); then
    printf '%s\tnot_run\t0\t0\tno time left\n' "${name}" >> "${outdir}/steps.tsv"
    echo "[$(date +%T)] ${name}: not run, no time left"
    return
  fi
  echo "[$(date +%T)] ${name}: running, timeout ${limit} s: $*"
  t0=$(date +%s%3N)
  timeout -k "${kill_after}" "${limit}" "$@" > "${outdir}/${name}.log" 2>&1 \
      < /dev/null
  rc=$?
  ms=$(( $(date +%s%3N) - t0 ))
  printf '%s\t%d\t%d\t%d\t%s\n' "${name}" "${rc}" "${ms}" "${limit}" "$*" \
      >> "${outdir}/steps.tsv"
  if (( rc == 0 )); then
    echo "[$(date +%T)] ${name}: done in $(( ms / 1000 )) s"
  else
    if (( rc == 124 || rc == 137 )); then
      echo "[$(date +%T)] ${name}: TIMED OUT after ${limit} s"
    else
      echo "[$(date +%T)] ${name}: FAILED (exit ${rc}) after $(( ms / 1000 )) s"
    fi
    tail -n 25 "${outdir}/${name}.log" | sed 's/^/    | /'
  fi
}

echo "# device check ($( (( smoke )) && echo smoke || echo device )), budget" \
     "${budget} s, results in ${outdir}"

run_step versions "${python_bin}" benchmarks/device_check.py versions \
    --json="${outdir}/versions.json"
platform=$("${python_bin}" -c \
    'import json, sys; print(json.load(open(sys.argv[1]))["jax"]["platform"])' \
    "${outdir}/versions.json" 2>/dev/null || echo unknown)

torch_flags=(--torch --channels_last)
if [[ "${platform}" == tpu ]]; then
  torch_flags=()  # PyTorch has no TPU backend here.
fi
if (( ! smoke )) && [[ "${platform}" == cpu ]]; then
  echo "JAX sees no GPU or TPU (platform cpu): the ResNet-101 steps would" \
       "not finish; see ${outdir}/versions.log, or run with --smoke." >&2
  for name in baseline main_job sst; do
    printf '%s\tnot_run\t0\t0\tno accelerator\n' "${name}" \
        >> "${outdir}/steps.tsv"
  done
else
  run_step baseline "${python_bin}" benchmarks/train_step.py \
      "${step_flags[@]}" --variants baseline "${torch_flags[@]}" \
      --json="${outdir}/baseline.json"
  # A fresh workdir: an existing one would resume instead of training.
  workdir=$(mktemp -d "${TMPDIR:-/tmp}/sst_device_check.XXXXXX")
  run_step main_job "${python_bin}" -m sst_jax.main \
      --config="${main_config}" --workdir="${workdir}" \
      --config.cpu_devices=0 --compilation_cache=
  cp "${workdir}/metrics.jsonl" "${outdir}/main_job_metrics.jsonl" \
      2>/dev/null
  rm -rf "${workdir}"
  # Last: its compilation is the longest and least predictable, and it gets
  # whatever is left of the budget.
  run_step sst "${python_bin}" benchmarks/train_step.py "${step_flags[@]}" \
      --variants sst --json="${outdir}/sst.json"
fi

"${python_bin}" benchmarks/device_check.py summary --outdir="${outdir}" \
    --mode="$( (( smoke )) && echo smoke || echo device )" \
    --total_s=$(( $(date +%s) - start )) --budget_s="${budget}"
