#!/usr/bin/env bash
# The tests: sets up .venv first (./setup.sh --test) when it cannot import cnnbench and the test stack (a fresh
# clone, or one set up before they joined the test extra), installs chromium for the report's browser test when
# it is missing (ensure_chromium), then runs pytest. Arguments go to pytest, e.g. ./test.sh tests/test_stats.py -k median.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
# tensorflow last: importing torch (timm does) after TensorFlow segfaults, so one python imports them in this order
ensure_venv --test pytest xdist jsonschema scipy mlperf_loadgen onnxruntime openvino timm tensorflow
ensure_chromium
# Two workers (pytest-xdist), each taking whole test files (--dist loadscope: a file's shared fixtures are made
# once): much of the suite waits on the cnnbench processes it starts, so two workers overlap those waits. Tests
# marked timing (latencies of tens of milliseconds) then run alone, where a neighbour cannot delay them. With -m
# (the GPU suite: ./test.sh -m gpu, whose memory checks read the whole device) one pytest process runs what it names.
for arg in "$@"; do
    [ "$arg" != -m ] || exec .venv/bin/pytest -q "$@"
done
parallel=0 alone=0
.venv/bin/pytest -q -n 2 --dist loadscope -m "not gpu and not timing" "$@" || parallel=$?
.venv/bin/pytest -q -m timing "$@" || alone=$?
# 5 is pytest's "no test selected": fine for one part (a -k that picks tests of the other), not for both.
for status in "$parallel" "$alone"; do
    [ "$status" -eq 0 ] || [ "$status" -eq 5 ] || exit "$status"
done
[ "$parallel" -eq 5 ] && [ "$alone" -eq 5 ] && exit 5
exit 0
