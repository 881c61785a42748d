#!/usr/bin/env bash
# The original's pressure test (train-all-pressure.sh): every model trained at batch 64 for 2,000 batches,
# results in results_train_pressure/, plus a verdict per run on whether performance held (`cnnbench soak-all`;
# on a CPU a bounded plan). NUM_ACCELERATORS data-parallel processes train each model. Extra arguments
# (after an optional `--`) go to `cnnbench soak-all`, e.g. --duration 3600 for an hour per model.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_framework
read_num_accelerators
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" soak-all --plan auto --num-accelerators "$NUM_ACCELERATORS" "${SWEEP_FRAMEWORKS[@]}" "$@"
