#!/usr/bin/env bash
# Every check that needs a GPU, in one run of under 8 minutes, ending with one summary table
# (benchmarks/gpu_checks.py says what each check does):
#
#   bash benchmarks/gpu_checks.sh OUT      # OUT (default gpu_checks_out): logs, records, summary
#
# Runs from any folder, with OUT relative to it or absolute. The python is $PYTHON, else python3 when it
# imports torch (a lent GPU machine's: nothing to install, src/ is put on PYTHONPATH), else .venv's.
# Without CUDA every check is skipped, the summary says so, and the exit status is 0.
set -euo pipefail
out="${1:-${OUT:-gpu_checks_out}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
if [ -z "${PYTHON:-}" ] && ! python3 -c 'import torch' >/dev/null 2>&1 && [ -x "$repo/.venv/bin/python" ]; then
    py="$repo/.venv/bin/python"
fi
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$repo/benchmarks/gpu_checks.py" "$out"
