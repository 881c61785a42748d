#!/usr/bin/env bash
# The original's infer-all-trt-accuracy.sh: top-1/top-5 over the whole validation split of DATA_DIR with the
# device's optimized engine (as nvcnn.py --use_trt chooses it, the sweep says which) at fp32, fp16 and int8 (int8
# calibrated on DATA_DIR); a precision the engine cannot run on this device is skipped with a line.
# Extra arguments (after an optional `--`) go to `cnnbench infer-all` and win over these.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_framework
require_data_dir
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" infer-all --plan auto --engines optimized --precisions fp32,fp16,int8 --data-dir "$DATA_DIR" --num-epochs 1 "${SWEEP_FRAMEWORKS[@]}" "$@"
