#!/usr/bin/env bash
# The tests: sets up .venv first when it cannot import cnnbench and pytest (a fresh clone), then runs
# pytest. Arguments go to pytest, e.g. ./test.sh tests/test_stats.py -k median.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
ensure_venv pytest
exec .venv/bin/pytest -q "$@"
