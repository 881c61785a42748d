#!/usr/bin/env bash
# The whole benchmark (the original's run.sh): the training sweep, whose checkpoints the inference
# sweep then runs. Sets up .venv first when it is missing. Extra arguments go to both sweeps, so they
# must be options both accept: `./run.sh --quick` (batch 16, every model, minutes on a small CPU),
# `./run.sh --time-budget 1800` (each sweep bounded to about that many seconds).
set -euo pipefail
here="$(dirname "$0")"
source "$here/scripts/common.sh" && ensure_venv
"$here/train-all.sh" "$@"
"$here/infer-all.sh" "$@"
