#!/usr/bin/env bash
# The original's infer-all-trt-synthetic-input-int8.sh: every model at batch 16, 32, 64 on synthetic input with the
# device's optimized engine at int8, as nvcnn.py --use_trt chooses it: TensorRT where installed, else the fastest
# engine there (ONNX Runtime on a CPU); the sweep says which ran.
# Extra arguments (after an optional `--`) go to `cnnbench infer-all` and win over these.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_framework
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" infer-all --plan auto --engines optimized --precisions int8 "${SWEEP_FRAMEWORKS[@]}" "$@"
