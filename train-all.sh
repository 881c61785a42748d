#!/usr/bin/env bash
# Train every model at batch sizes 16, 32, 64 and build results_train/results.csv (the original's train-all.sh).
# The plan (batches, warm-up, duration) is chosen for the device; extra arguments go to `cnnbench train-all`.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
require_single_accelerator
exec "$CNNBENCH" train-all --plan auto "$@"
