#!/usr/bin/env bash
# The original's infer-all-accuracy.sh: top-1/top-5 of every model at batch 16, 32, 64 over the whole
# validation split of DATA_DIR (TFRecord shards or image folders), eager fp32, with the speed figures.
# Extra arguments (after an optional `--`) go to `cnnbench infer-all` and win over these.
set -euo pipefail
source "$(dirname "$0")/scripts/common.sh"
find_cnnbench
read_framework
require_data_dir
[ "${1:-}" != -- ] || shift
exec "$CNNBENCH" infer-all --plan auto --engines eager --precisions fp32 --data-dir "$DATA_DIR" --num-epochs 1 "${SWEEP_FRAMEWORKS[@]}" "$@"
