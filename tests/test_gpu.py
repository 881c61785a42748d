"""The GPU suite: `pytest -m gpu` on a machine with CUDA (skipped with its reason elsewhere; the default
run leaves it out, pyproject.toml's addopts). Each check is a real cnnbench run on the GPU, sized to
take seconds: the paths a CPU cannot exercise, not speed figures (benchmarks/gpu_checks.sh has those).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from cnnbench.engines import table
from cnnbench.core.errors import UsageError
from helpers import read_jsonl, run_process

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU suite needs one (pytest -m gpu)"),
]

# ResNet-50 at 64 px: real cuDNN convolutions in every layout and precision, a step of milliseconds.
SMALL = ["--device", "cuda", "--image-size", "64", "--batch-size", "32", "--num-batches", "6", "--warmup", "2",
         "--display-every", "3"]


def _last(kind: str) -> dict:
    return read_jsonl(f"results_{kind}/runs.jsonl")[-1]


def _memory_fields_present(record: dict) -> None:
    assert record["peak_memory_mib"] > 0
    # NVML's figure counts every allocation on the device, PyTorch's allocator peak only its own
    assert record["device_memory_used_mib"] is None or record["device_memory_used_mib"] >= record["peak_memory_mib"]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("memory_format", ["nchw", "nhwc"])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_training_on_cuda(cli, tiny_spec, precision, memory_format, compile):
    # compile on the tiny spec: inductor's compilation of ResNet-50 would take a minute per case
    model, extra = (str(tiny_spec), ["--compile"]) if compile else ("resnet50", [])
    code, out, err = cli("train", model, *SMALL, "--precision", precision, "--memory-format", memory_format, *extra)
    assert code == 0, err
    record = _last("train")
    assert record["status"] == "ok" and record["device"].startswith("cuda")
    assert (record["precision"], record["memory_format"], record["compile"]) == (precision, memory_format, compile)
    assert record["images_per_sec"] > 0 and math.isfinite(record["final_loss"])
    _memory_fields_present(record)


def _cuda_pairs() -> list[tuple[str, str]]:
    return [(spec.name, precision) for spec in table.specs("pytorch") for precision in spec.precisions.get("cuda", ())]


@pytest.mark.parametrize("engine, precision", _cuda_pairs())
def test_every_engine_and_precision_against_eager_fp32(cli, tiny_spec, engine, precision):
    try:
        table.check("pytorch", engine, precision, "cuda")
    except UsageError as missing:  # e.g. no onnxruntime-gpu or TensorRT on this machine
        pytest.skip(str(missing))
    model = str(tiny_spec) if engine == "compile" else "resnet50"  # as in training: compile time
    code, out, err = cli("infer", model, "--random-weights", *SMALL, "--engine", engine, "--precision", precision,
                         "--compile-mode", "default")
    assert code == 0, err
    record = _last("infer")
    assert (record["engine"], record["precision"], record["status"]) == (engine, precision, "ok")
    if (engine, precision) != ("eager", "fp32"):  # every other pair is checked against true fp32
        assert record["guard_ok"] is True and record["guard_batches"] > 0
    if engine in ("onnxruntime", "tensorrt"):  # the provider that ran is the one asked for (engines.check_provider)
        expected = {"onnxruntime": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[engine]
        assert record["execution_provider"] == expected
    _memory_fields_present(record)


def test_nccl_at_world_size_one(tmp_path):
    done = run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                        "-m", "cnnbench", "train", "resnet50", *SMALL, "--results-dir", "results_train"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    record = read_jsonl(tmp_path / "results_train" / "runs.jsonl")[-1]
    assert (record["backend"], record["world_size"], record["status"]) == ("nccl", 1, "ok")
    assert record["images_per_sec"] > 0


def test_real_data_on_cuda_overlaps_the_copy(cli):
    assert cli("data", "sample", "digits", "--image-size", "64")[0] == 0
    code, out, err = cli("train", "resnet50", "--device", "cuda", "--data-dir", "digits", "--image-size", "64",
                         "--batch-size", "32", "--num-epochs", "2", "--warmup", "2", "--eval-at-end", "--display-every", "5")
    assert code == 0, err
    record = _last("train")
    assert record["status"] == "ok" and record["data_wait_share"] is not None and 0 <= record["data_wait_share"] < 1
    assert record["top1"] is not None
    _memory_fields_present(record)


def test_the_parent_of_a_sweep_holds_no_cuda_context(tmp_path):
    # The sweep's own process plans, estimates (calibrating in a child) and reports; each configuration
    # runs in a child. Asked in a fresh process, since this one has used CUDA already. Reading device
    # properties (preflight's memory format) may initialise torch's CUDA module, which allocates nothing.
    sweep = ("import sys, torch; from cnnbench.cli import main; "
             "code = main(['train-all', '--models', 'resnet50', '--batch-sizes', '8', '--image-size', '64', "
             "'--num-batches', '3', '--warmup', '1']); "
             "print('reserved:', torch.cuda.memory_reserved() if torch.cuda.is_initialized() else 0); sys.exit(code)")
    done = run_process([sys.executable, "-c", sweep], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "reserved: 0"
