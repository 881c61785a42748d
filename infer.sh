#!/usr/bin/env bash
# Inference for one model (or several with -m) at batch sizes 16, 32 and 64, from the checkpoints
# ./train.sh wrote (the original's infer.sh). Extra arguments after the options go to `cnnbench infer`.
set -uo pipefail
source "$(dirname "$0")/scripts/common.sh"
models=resnet50
batchs='16 32 64'

usage() {
    echo "Usage: $0 [MODEL] [-m models] [-b batch_sizes] [cnnbench infer options]"
    echo "  -m  models to run (separators , : ; - or space). By default, $models"
    echo "  -b  batch sizes to sweep (should be >=1). By default, $batchs"
}

if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    models="$1"
    shift
fi
while getopts "m:b:h" opt; do
    case $opt in
        m) models="$OPTARG" ;;
        b) batchs="$OPTARG" ;;
        h) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
models="${models//[:,;-]/ }"
batchs="${batchs//[:,;-]/ }"
if [ "$NUM_ACCELERATORS" -gt 1 ]; then
    echo "infer.sh: inference runs on one accelerator, as in the original; NUM_ACCELERATORS=$NUM_ACCELERATORS applies to training only"
fi
echo "models=$models"
echo "batch_size=$batchs"
status=0
for model in $models; do
    for batch in $batchs; do
        "$CNNBENCH" infer "$model" --batch-size "$batch" --log-dir "./log_${model}_${batch}" "$@" || status=$?
        [ "$status" -eq 2 ] || [ "$status" -eq 130 ] && exit "$status"
    done
done
exit "$status"
