#!/usr/bin/env bash
# Builds the four human-parsing benchmarks into array_record, without
# TensorFlow (python -m datasets.build takes `tfds build`'s arguments).
#
# Usage:
#   bash launch/build_datasets.sh RAW_ROOT DATA_DIR [NAME ...]
#
#   RAW_ROOT  folder holding one unpacked raw dataset per sub-folder, named
#             after the builder: RAW_ROOT/lip, RAW_ROOT/cihp, RAW_ROOT/atr,
#             RAW_ROOT/pascal_person_part (accepted layouts: docs/datasets.md).
#   DATA_DIR  TFDS data_dir to write to (DATA_DIR/<name>/<config>/1.0.0/).
#   NAME ...  builders to run (default: all four). A dataset whose raw folder
#             is missing is reported and skipped; any failed build makes the
#             script exit non-zero after trying the others.
#
# Environment:
#   PYTHON       interpreter with tensorflow-datasets (default: python).
#   TFDS_CONFIG  builder config: strict (default; stops at the first bad
#                example) or skip_bad (skips and logs bad examples).
#   TFDS_EXTRA   extra arguments for the build, e.g. "--overwrite".
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
raw_root=$(cd "$1" && pwd)
mkdir -p "$2"
data_dir=$(cd "$2" && pwd)
shift 2
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  names=(pascal_person_part atr cihp lip)
fi
python=${PYTHON:-python}
config=${TFDS_CONFIG:-strict}
read -r -a extra <<< "${TFDS_EXTRA:-}"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# The builders import sst_jax and datasets/ from the repository.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

failed=()
for name in "${names[@]}"; do
  if [[ ! -d "datasets/$name" ]]; then
    echo "unknown dataset '$name' (no datasets/$name)" >&2
    failed+=("$name")
    continue
  fi
  if [[ ! -d "$raw_root/$name" ]]; then
    echo "== $name: no raw folder $raw_root/$name, skipped" >&2
    continue
  fi
  echo "== $name: $raw_root/$name -> $data_dir ($config)"
  start=$SECONDS
  if "$python" -m datasets.build "datasets/$name" \
      --manual_dir="$raw_root/$name" --data_dir="$data_dir" \
      --file_format=array_record --config="$config" ${extra[@]+"${extra[@]}"}; then
    echo "== $name: done in $((SECONDS - start)) s"
  else
    echo "== $name: FAILED (see the message above)" >&2
    failed+=("$name")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
