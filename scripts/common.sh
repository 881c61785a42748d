# Sourced by the root scripts. Sourcing only defines ROOT and the functions below; each script calls
# what it needs, so that a script can set up .venv (ensure_venv) before anything looks for cnnbench.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ensure_venv [--test] [MODULE...]: run ./setup.sh (with --test: ./setup.sh --test, which adds the test extra)
# when .venv's python cannot import cnnbench (and the MODULEs, e.g. pytest), so that a fresh clone needs no
# separate setup step. Exits with setup's status if it fails.
ensure_venv() {
    local imports="cnnbench" module setup="./setup.sh"
    if [ "${1:-}" = --test ]; then
        setup="./setup.sh --test"
        shift
    fi
    for module in "$@"; do
        imports="$imports, $module"
    done
    if "$ROOT/.venv/bin/python" -c "import $imports" >/dev/null 2>&1; then
        return 0
    fi
    echo "$(basename "$0"): .venv cannot import $imports yet; running $setup first"
    # shellcheck disable=SC2086
    "$ROOT/"$setup || {
        local status=$?
        echo "$(basename "$0"): ./setup.sh failed (exit $status); see its output above" >&2
        exit "$status"
    }
}

# ensure_chromium: the report's browser test (tests/test_report.py) opens report.html in headless Chromium,
# Debian's chromium package; install it when it is missing and this user can (root with apt-get). Otherwise
# one loud line says that test will be skipped; the rest of the suite runs.
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    local log="${TMPDIR:-/tmp}/cnnbench-chromium-install.log"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$(basename "$0"): installing chromium (Debian's package) for the report's browser test; log in $log"
        if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >"$log" 2>&1; then
            return 0
        fi
        tail -n 3 "$log" >&2
    fi
    echo "$(basename "$0"): WARNING: chromium is not installed and could not be (as root: apt-get install chromium);" \
        "the report's browser test will be SKIPPED" >&2
}

# find_cnnbench: CNNBENCH = the command to run: $CNNBENCH when set (another installation), else .venv's,
# else the one on PATH; exit 2 when there is none.
find_cnnbench() {
    if [ -n "${CNNBENCH:-}" ]; then
        return 0
    elif [ -x "$ROOT/.venv/bin/cnnbench" ]; then
        CNNBENCH="$ROOT/.venv/bin/cnnbench"
    elif command -v cnnbench >/dev/null 2>&1; then
        CNNBENCH=cnnbench
    else
        echo "cnnbench is not installed: run ./setup.sh first (./run.sh and ./test.sh do it themselves)" >&2
        exit 2
    fi
}

# read_num_accelerators: NUM_ACCELERATORS (default 1), exit 2 unless it is a positive integer.
# Training runs data-parallel over NUM_ACCELERATORS processes (one per GPU; batch size per process): the
# training scripts pass it as --num-accelerators, and cnnbench checks it against the visible GPUs.
# Inference always runs on one accelerator, as in the original.
read_num_accelerators() {
    NUM_ACCELERATORS="${NUM_ACCELERATORS:-1}"
    if ! [[ "$NUM_ACCELERATORS" =~ ^[1-9][0-9]*$ ]]; then
        echo "NUM_ACCELERATORS must be a positive integer, got '$NUM_ACCELERATORS'" >&2
        exit 2
    fi
}

# split_models LIST: one model per line. The original's separators (, : ; - and space) split the list,
# except that an item holding a '/' or ending in .json is a spec file's path and keeps its hyphens
# (the same rule as cnnbench's --models, sweep.py).
split_models() {
    local items item part parts
    IFS=',:; ' read -r -a items <<<"$1"
    for item in "${items[@]}"; do
        if [[ "$item" == */* || "$item" == *.json ]]; then
            printf '%s\n' "$item"
        else
            IFS='-' read -r -a parts <<<"$item"
            for part in "${parts[@]}"; do
                [ -z "$part" ] || printf '%s\n' "$part"
            done
        fi
    done
}

# require_data_dir: exit 2 in one line naming DATA_DIR when it is not set (the accuracy scripts read real data).
require_data_dir() {
    if [ -z "${DATA_DIR:-}" ]; then
        echo "$(basename "$0"): DATA_DIR is not set; point it at ImageNet TFRecord shards or image folders, e.g. DATA_DIR=/data/imagenet $0" >&2
        exit 2
    fi
}

# read_framework: FRAMEWORK (default pytorch): pytorch, tensorflow, or both (pytorch,tensorflow), exit 2 on
# anything else. Sets FRAMEWORKS (one per item; train.sh and infer.sh run each in turn, framework_options
# giving one's options) and SWEEP_FRAMEWORKS, the sweeps' --frameworks (one pair of tables per framework in
# one results folder). PyTorch alone, the default, adds no option. TensorFlow needs the tensorflow extra.
read_framework() {
    FRAMEWORK="${FRAMEWORK:-pytorch}"
    local item
    IFS=',' read -r -a FRAMEWORKS <<<"$FRAMEWORK"
    for item in "${FRAMEWORKS[@]}"; do
        case "$item" in
            pytorch | tensorflow) ;;
            *) echo "FRAMEWORK must be pytorch, tensorflow or both (pytorch,tensorflow), got '$FRAMEWORK'" >&2; exit 2 ;;
        esac
    done
    SWEEP_FRAMEWORKS=()
    [ "$FRAMEWORK" = pytorch ] || SWEEP_FRAMEWORKS=(--frameworks "$FRAMEWORK")
}

# framework_options NAME: the options of one framework's run (none for PyTorch, the default).
framework_options() {
    FRAMEWORK_OPTIONS=()
    [ "$1" = pytorch ] || FRAMEWORK_OPTIONS=(--framework "$1")
}
