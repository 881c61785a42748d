# Sourced by the root scripts. Sourcing only defines ROOT and the functions below; each script calls
# what it needs, so that a script can set up .venv (ensure_venv) before anything looks for cnnbench.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ensure_venv [MODULE...]: run ./setup.sh when .venv's python cannot import cnnbench (and the MODULEs,
# e.g. pytest), so that a fresh clone needs no separate setup step. Exits with setup's status if it fails.
ensure_venv() {
    local imports="cnnbench" module
    for module in "$@"; do
        imports="$imports, $module"
    done
    if "$ROOT/.venv/bin/python" -c "import $imports" >/dev/null 2>&1; then
        return 0
    fi
    echo "$(basename "$0"): .venv cannot import $imports yet; running ./setup.sh first"
    "$ROOT/setup.sh" || {
        local status=$?
        echo "$(basename "$0"): ./setup.sh failed (exit $status); see its output above" >&2
        exit "$status"
    }
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
