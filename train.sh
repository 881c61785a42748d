#!/usr/bin/env bash
# Train one model at batch sizes 16, 32 and 64 (the original's train.sh), on NUM_ACCELERATORS accelerators
# (batch size per accelerator). Extra arguments go to `cnnbench train`.
set -uo pipefail
source "$(dirname "$0")/scripts/common.sh"
model="${1:?usage: ./train.sh MODEL [cnnbench train options]}"
shift
status=0
for batch in 16 32 64; do
    "$CNNBENCH" train "$model" --batch-size "$batch" --log-dir "./log_${model}_${batch}" \
        --num-accelerators "$NUM_ACCELERATORS" "$@" || status=$?
    [ "$status" -eq 2 ] || [ "$status" -eq 130 ] && exit "$status"
done
exit "$status"
