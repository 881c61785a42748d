#!/usr/bin/env bash
# The whole benchmark: training sweep, then inference sweep (the original's run.sh).
set -euo pipefail
here="$(dirname "$0")"
source "$here/scripts/common.sh"
"$here/train-all.sh" "$@"
echo "run.sh: inference is not yet part of cnnbench; run.sh runs the training sweep only"
