#!/usr/bin/env bash
# Every check that needs a GPU, in one run of under 8 minutes (the timeouts add up to 470 s) (for a session lent a GPU machine, whose
# python3 has torch but not this package installed: PYTHONPATH=src makes it importable).
#
#   bash benchmarks/gpu_checks.sh            # output and records under $OUT (or ./gpu_checks_out); the benchmark
#                                            # scripts' saved results (record.py) under $OUT/benchmark_results
#
# 1. CUDA training: synchronised timing, bf16 + channels-last, tf32, compile          (issue 2)
# 2. engines: eager vs compile at bf16 and fp16, ResNet-50 batch 256 (compile must win) (issue 3);
#    compile mode 'default' here: max-autotune's kernel search would not fit the time box
#    onnxruntime / tensorrt on CUDA where onnxruntime-gpu / TensorRT are installed
# 3. real data on CUDA: pinned memory, side-stream copy, data-wait share              (issue 4)
# 4. distributed path with N=1 against the plain path (target < 2%)                   (issue 5)
# 5. harness overhead on the GPU (target < 3%)                                        (issue 2)
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
# Absolute paths: the checks run inside $out, which may be a relative name or lie outside the repository.
mkdir -p "${OUT:-gpu_checks_out}"
out="$(cd "${OUT:-gpu_checks_out}" && pwd)"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=python3
[ -x .venv/bin/python ] && py="$repo/.venv/bin/python"
run() {  # name, timeout seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "--- exit $? ; last lines:"
    tail -n 12 "$out/$name.log"
}
cd "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tail -n 2
run train_bf16 50 "$py" -m cnnbench train resnet50 --device cuda --batch-size 128 --num-batches 60 --warmup 10 \
    --precision bf16 --channels-last --display-every 20 --results-dir results_train --log-dir log_r50
run train_tf32_compile 90 "$py" -m cnnbench train resnet50 --device cuda --batch-size 128 --num-batches 40 --warmup 5 \
    --precision tf32 --compile --display-every 20 --results-dir results_train --log-dir log_r50_c
saved=benchmark_results  # relative to $out: comes back with it
run engines_gpu 120 "$py" "$repo"/benchmarks/engines.py --gpu --steps 40 --compile-mode default --save-to $saved
run infer_onnxruntime 30 "$py" -m cnnbench infer resnet50 --device cuda --random-weights --batch-size 64 --num-batches 40 \
    --warmup 5 --engine onnxruntime --precision fp16 --results-dir results_infer
run infer_tensorrt 40 "$py" -m cnnbench infer resnet50 --device cuda --random-weights --batch-size 64 --num-batches 40 \
    --warmup 5 --engine tensorrt --precision int8 --calib-batches 4 --results-dir results_infer --cache-path cache
run real_data 40 bash -c "$py -m cnnbench data sample digits --image-size 64 && $py -m cnnbench train resnet50 --device cuda \
    --data-dir digits --image-size 64 --batch-size 64 --num-epochs 2 --warmup 2 --eval-at-end --results-dir results_real --log-dir log_real"
run distributed_n1 60 "$py" "$repo"/benchmarks/distributed_scaling.py --model resnet50 --batch-size 64 --steps 50 --rounds 2 --save-to $saved
run harness_overhead 40 "$py" "$repo"/benchmarks/harness_overhead.py --batch-size 64 --steps 50 --rounds 2 --save-to $saved
echo "=== done $(date +%T); logs and records in $out"
