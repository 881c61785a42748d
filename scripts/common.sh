# Sourced by the root scripts: find cnnbench (the repository's .venv first) and read NUM_ACCELERATORS
# (default 1; a positive integer).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$ROOT/.venv/bin/cnnbench" ]; then
    CNNBENCH="$ROOT/.venv/bin/cnnbench"
elif command -v cnnbench >/dev/null 2>&1; then
    CNNBENCH=cnnbench
else
    echo "cnnbench is not installed: run ./setup.sh first" >&2
    exit 2
fi

NUM_ACCELERATORS="${NUM_ACCELERATORS:-1}"
if ! [[ "$NUM_ACCELERATORS" =~ ^[1-9][0-9]*$ ]]; then
    echo "NUM_ACCELERATORS must be a positive integer, got '$NUM_ACCELERATORS'" >&2
    exit 2
fi

# Training runs data-parallel over NUM_ACCELERATORS processes (one per GPU; batch size per process):
# the training scripts pass it as --num-accelerators, and cnnbench checks it against the visible GPUs.
# Inference always runs on one accelerator, as in the original.
