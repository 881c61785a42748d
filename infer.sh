#!/usr/bin/env bash
# Inference for one model (or several with -m) at batch sizes 16, 32 and 64, from the checkpoints
# ./train.sh wrote (the original's infer.sh). Options of `cnnbench infer` go after `--`.
set -uo pipefail
source "$(dirname "$0")/scripts/common.sh"
DEFAULT_MODELS=resnet50
DEFAULT_BATCHS='16 32 64'
models="$DEFAULT_MODELS"
batchs="$DEFAULT_BATCHS"

usage() {
    echo "Usage: $0 [MODEL] [-m models] [-b batch_sizes] [-- cnnbench infer options]"
    echo "  MODEL, -m  models to run, registered names or JSON spec files. By default, $DEFAULT_MODELS"
    echo "             A list splits at , : ; - or space; an item holding a '/' or ending in .json stays whole."
    echo "  -b         batch sizes to sweep (should be >=1; separators as for models). By default, $DEFAULT_BATCHS"
    echo "  --         what follows goes to cnnbench infer, e.g. -- --device cpu --engine onnxruntime"
    echo "             (an option spelt --name also ends this script's options and goes there with the rest)"
    echo "  FRAMEWORK=pytorch|tensorflow|pytorch,tensorflow in the environment (default pytorch)"
}

bad_usage() {
    echo "infer.sh: $1" >&2
    usage >&2
    exit 2
}

# The original's short options by hand rather than getopts: getopts rejects cnnbench's long options
# ("illegal option -- -"), and those must pass through whole.
model_given=false
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        -m | -b)
            [ $# -ge 2 ] || bad_usage "option $1 needs a value"
            if [ "$1" = -m ]; then models="$2"; else batchs="$2"; fi
            shift 2 ;;
        -m?*) models="${1#-m}"; shift ;;
        -b?*) batchs="${1#-b}"; shift ;;
        --) shift; break ;;
        --?*) break ;;
        -*) bad_usage "unknown option $1 (options of cnnbench infer go after --)" ;;
        *)
            $model_given && bad_usage "unexpected argument '$1' (several models: -m 'a,b')"
            models="$1"; model_given=true; shift ;;
    esac
done
find_cnnbench
read_num_accelerators
read_framework
mapfile -t model_list < <(split_models "$models")
batchs="${batchs//[:,;-]/ }"
[ "${#model_list[@]}" -gt 0 ] || bad_usage "no model given"
if [ "$NUM_ACCELERATORS" -gt 1 ]; then
    echo "infer.sh: inference runs on one accelerator, as in the original; NUM_ACCELERATORS=$NUM_ACCELERATORS applies to training only"
fi
echo "models=${model_list[*]}"
echo "batch_size=$batchs"
status=0
for framework in "${FRAMEWORKS[@]}"; do
    framework_options "$framework"
    for model in "${model_list[@]}"; do
        for batch in $batchs; do
            # No --log-dir: cnnbench's default, log_<name>_<batch>, is where ./train.sh's runs saved, and a
            # spec file's path would make a nested directory of it.
            "$CNNBENCH" infer "$model" --batch-size "$batch" "${FRAMEWORK_OPTIONS[@]}" "$@" || status=$?
            [ "$status" -eq 2 ] || [ "$status" -eq 130 ] && exit "$status"
        done
    done
done
exit "$status"
