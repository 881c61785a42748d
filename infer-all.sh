#!/usr/bin/env bash
# Inference for every model at batch sizes 16, 32, 64 from the training checkpoints, and
# results_infer/results.csv (the original's infer-all.sh). Extra arguments (after an optional `--`) go
# to `cnnbench infer-all`.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_num_accelerators
read_framework
[ "${1:-}" != -- ] || shift
if [ "$NUM_ACCELERATORS" -gt 1 ]; then
    echo "infer-all.sh: inference runs on one accelerator, as in the original; NUM_ACCELERATORS=$NUM_ACCELERATORS applies to training only"
fi
exec "$CNNBENCH" infer-all --plan auto "${SWEEP_FRAMEWORKS[@]}" "$@"
