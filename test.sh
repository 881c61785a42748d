#!/usr/bin/env bash
# The tests: sets up .venv first when it cannot import cnnbench, pytest, xdist, jsonschema, mlperf_loadgen and tensorflow (a fresh
# clone, or one set up before they joined the test extra), installs chromium for the report's browser test when
# it is missing (ensure_chromium), then runs pytest. Arguments go to pytest, e.g. ./test.sh tests/test_stats.py -k median.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
ensure_venv pytest xdist jsonschema mlperf_loadgen tensorflow
ensure_chromium
# Two workers (pytest-xdist), each taking whole test files (--dist loadscope: a file's shared fixtures are made
# once): much of the suite waits on the cnnbench processes it starts, so two workers overlap those waits. The
# GPU suite (./test.sh -m gpu) runs in one process: its memory checks read the whole device.
workers=(-n 2 --dist loadscope)
for arg in "$@"; do
    [ "$arg" != gpu ] || workers=()
done
exec .venv/bin/pytest -q "${workers[@]}" "$@"
