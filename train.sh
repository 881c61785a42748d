#!/usr/bin/env bash
# Train one model at batch sizes 16, 32 and 64 (the original's train.sh), on NUM_ACCELERATORS accelerators
# (batch size per accelerator). Options of `cnnbench train` follow the model, after an optional `--`.
set -uo pipefail
source "$(dirname "$0")/scripts/common.sh"

usage() {
    echo "Usage: $0 MODEL [-- cnnbench train options]"
    echo "  MODEL  a registered name or a JSON spec file, trained at batch sizes 16, 32 and 64"
    echo "  --     what follows goes to cnnbench train, e.g. -- --device cpu --num-batches 100"
    echo "  NUM_ACCELERATORS=N in the environment: N data-parallel processes (default 1)"
    echo "  FRAMEWORK=pytorch|tensorflow|pytorch,tensorflow in the environment (default pytorch)"
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "" | -*) { echo "train.sh: the first argument must be the model"; usage; } >&2; exit 2 ;;
esac
model="$1"
shift
[ "${1:-}" != -- ] || shift
find_cnnbench
read_num_accelerators
read_framework
status=0
for framework in "${FRAMEWORKS[@]}"; do
    framework_options "$framework"
    for batch in 16 32 64; do
        # No --log-dir: cnnbench's default is log_<name>_<batch>, the original's, and keeps a spec path whole.
        "$CNNBENCH" train "$model" --batch-size "$batch" --num-accelerators "$NUM_ACCELERATORS" "${FRAMEWORK_OPTIONS[@]}" \
            "$@" || status=$?
        [ "$status" -eq 2 ] || [ "$status" -eq 130 ] && exit "$status"
    done
done
exit "$status"
