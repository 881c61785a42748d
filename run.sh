#!/usr/bin/env bash
# The whole benchmark (the original's run.sh): the training sweep, whose checkpoints the inference
# sweep then runs. Sets up .venv first when it is missing. Extra arguments go to both sweeps, so they
# must be options both accept: `./run.sh --quick` (batch 16, every model, minutes on a small CPU),
# `./run.sh --time-budget 1800` (each sweep bounded to about that many seconds). Ends by writing report.html
# (charts of both sweeps' records) beside results_train/ and results_infer/, and printing its path.
set -euo pipefail
here="$(dirname "$0")"
source "$here/scripts/common.sh" && ensure_venv
"$here/train-all.sh" "$@"
"$here/infer-all.sh" "$@"
find_cnnbench
"$CNNBENCH" report --out report.html
