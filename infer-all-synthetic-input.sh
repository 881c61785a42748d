#!/usr/bin/env bash
# The original's infer-all-synthetic-input.sh: every model at batch 16, 32, 64 with the framework's own
# inference (eager fp32) on synthetic input, from the training checkpoints; results_infer/ tables.
# Extra arguments (after an optional `--`) go to `cnnbench infer-all` and win over these.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_framework
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" infer-all --plan auto --engines eager --precisions fp32 "${SWEEP_FRAMEWORKS[@]}" "$@"
