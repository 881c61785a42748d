"""Where an ONNX Runtime inference spends its time, by operation type, from ONNX Runtime's own profiler.

`synth --calibrate --calibrate-engine onnxruntime` (issue 25, item 2) matches a proxy's time shares to its
targets' on the engine that runs them, at fp32 or int8: what the engine fuses is then fused in both (a
conv-BN-ReLU folds into one quantized conv; DenseNet's pre-activation BN-ReLU and its concatenations do not),
which eager PyTorch's shares cannot show. The model is exported and (int8) quantised as `cnnbench infer
--engine onnxruntime` does it (engines/onnx_export.py), on seeded random images; the session's profile
(SessionOptions.enable_profiling, https://onnxruntime.ai/docs/performance/tune-performance/profiling-tools.html)
gives every node's kernel time. The result has measure()'s shape (tools/profile/measure.py), forward only,
so synth_calibration.shares_of reads either.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from cnnbench.engines.onnx_export import export_onnx, quantize_int8

# ONNX operator types (as ONNX Runtime reports them, fused and quantised forms included) -> cnnbench's operation
# types (tools/profile/layers.py). A fused Conv+activation counts as the conv: the engine does it in one kernel.
OP_TYPES = {
    "conv": ("Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv"),
    "linear": ("Gemm", "MatMul", "FusedGemm", "QLinearMatMul", "MatMulInteger", "FusedMatMul", "DynamicQuantizeMatMul"),
    "batchnorm": ("BatchNormalization",),
    "activation": ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "QLinearSigmoid",
                   "QuickGelu", "LeakyRelu"),
    "maxpool": ("MaxPool",),
    "avgpool": ("AveragePool", "QLinearAveragePool"),
    "global_pool": ("GlobalAveragePool", "GlobalMaxPool", "QLinearGlobalAveragePool", "ReduceMean"),
    "add": ("Add", "Sum", "QLinearAdd"),
    "concat": ("Concat", "QLinearConcat"),
    "mul": ("Mul", "QLinearMul"),
}
KIND_OF = {op: kind for kind, ops in OP_TYPES.items() for op in ops}


def measure(entry, image_size: int, batch_size: int, precision: str, warmup: int, steps: int) -> dict:
    """Kernel time per operation type of `steps` runs after `warmup` (the profile of the warm-up runs is
    dropped: each run's nodes are told apart by the session's run order)."""
    import onnxruntime as ort

    model = entry.build(image_size).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    with tempfile.TemporaryDirectory(prefix="cnnbench-ort-profile-") as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, images, path)
        if precision == "int8":
            calibration = [torch.rand(batch_size, 3, image_size, image_size, generator=generator) for _ in range(2)]
            quantize_int8(path, path.with_suffix(".int8.onnx"), calibration)
            path = path.with_suffix(".int8.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images.numpy()}
        for _ in range(warmup + steps):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return figures(events, warmup, steps, batch_size)


def figures(events: list[dict], warmup: int, steps: int, batch_size: int) -> dict:
    """measure()'s shape from ONNX Runtime's profile events: the node events of the last `steps` runs (the
    "model_run" events mark each run's span), their kernel microseconds summed per operation type."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    seconds: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not any(start <= e["ts"] <= end for start, end in spans):
            continue
        kind = KIND_OF.get(e.get("args", {}).get("op_name", ""), "other")
        seconds[kind] = seconds.get(kind, 0.0) + e["dur"] / 1e6
    total = sum(seconds.values())
    per_step = total / max(steps, 1)
    empty = {"labelled_seconds_per_step": 0.0, "time_share": {}}
    return {"batch_size": batch_size, "backward": empty,
            "forward": {"labelled_seconds_per_step": per_step,
                        "time_share": {k: v / total for k, v in seconds.items()} if total else {}}}
