#!/usr/bin/env bash
# The whole benchmark (the original's run.sh): the training sweep, whose checkpoints the inference
# sweep then runs. Extra arguments go to both sweeps, so they must be options both accept.
set -euo pipefail
here="$(dirname "$0")"
"$here/train-all.sh" "$@"
"$here/infer-all.sh" "$@"
