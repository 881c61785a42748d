#!/usr/bin/env bash
# Create .venv in the repository and install cnnbench with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
# torch and torchvision releases cnnbench is tested with; on a CUDA machine pip takes the ordinary (CUDA) build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ -x .venv/bin/python ]; then
    echo "setup: reusing .venv ($(.venv/bin/python --version))"
else
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
else
    echo "setup: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    .venv/bin/pip install --quiet $TORCH_SPEC
fi
echo "setup: installing cnnbench (editable) with its test extra"
.venv/bin/pip install --quiet -e ".[test]"
echo "setup: done. Run ./run.sh for the benchmark, .venv/bin/pytest -q for the tests."
