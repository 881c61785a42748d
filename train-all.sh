#!/usr/bin/env bash
# Train every model at batch sizes 16, 32, 64 and build results_train/results.csv (the original's train-all.sh).
# The plan (batches, warm-up, duration) is chosen for the device; NUM_ACCELERATORS data-parallel processes
# train each configuration. Extra arguments (after an optional `--`) go to `cnnbench train-all`
# (e.g. --num-accelerators 1,2,4).
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_num_accelerators
read_framework
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" train-all --plan auto --num-accelerators "$NUM_ACCELERATORS" "${SWEEP_FRAMEWORKS[@]}" "$@"
