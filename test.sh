#!/usr/bin/env bash
# The tests: sets up .venv first when it cannot import cnnbench, pytest, jsonschema, mlperf_loadgen and tensorflow (a fresh
# clone, or one set up before they joined the test extra), installs chromium for the report's browser test when
# it is missing (ensure_chromium), then runs pytest. Arguments go to pytest, e.g. ./test.sh tests/test_stats.py -k median.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
ensure_venv pytest jsonschema mlperf_loadgen tensorflow
ensure_chromium
exec .venv/bin/pytest -q "$@"
