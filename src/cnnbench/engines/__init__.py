"""Inference engines: one interface (base.py: Engine, BuildInputs), one table (table.py), one class per engine.

Each engine's record in table.py (TensorFlow's included) says which precisions it runs on which device, its
input layout, whether it is a device's optimized engine, its default sweep pairs, what the estimate needs,
its install line and the class that builds it; nothing else in cnnbench lists engines. The classes of
PyTorch's: eager.py (eager, torch.compile), onnxruntime.py, tensorrt.py; ONNX export and int8 quantisation
shared by the last two: onnx_export.py; the artefact cache: artifacts.py.

This package's names are imported on first use (PEP 562), so that reading the table (the configuration does,
at import time) imports no runtime, nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from cnnbench.engines import table

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnbench.core.placement import Placement
    from cnnbench.engines.artifacts import ArtifactCache
    from cnnbench.engines.base import Engine

# name -> the module that defines it
_LAZY = {
    "ArtifactCache": "artifacts", "sha256_file": "artifacts",
    "Engine": "base", "BuildInputs": "base",
    "EagerEngine": "eager", "CompiledEngine": "eager",
    "ONNX_OPSET": "onnx_export", "INT8_ACTIVATIONS": "onnx_export", "default_int8_activations": "onnx_export",
    "export_onnx": "onnx_export", "quantize_int8": "onnx_export",
    "OnnxRuntimeEngine": "onnxruntime", "installed_providers": "onnxruntime", "cuda_provider_options": "onnxruntime",
    "stream_option": "onnxruntime", "shared_stream": "onnxruntime", "torch_stream": "onnxruntime",
    "run_bound": "onnxruntime", "check_provider": "onnxruntime", "USER_STREAM_SINCE": "onnxruntime",
    "TensorRTEngine": "tensorrt", "tensorrt_provider_options": "tensorrt",
}

def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"cnnbench.engines.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cnnbench.engines' has no attribute {name!r}")


def build_engine(name: str, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], compile_mode: str, *,
                 int8_activations: str | None = None, model_name: str | None = None, shared: bool = False,
                 calibration_tag: str = "", any_batch: bool = False, spinning: bool = True, threads: int = 0) -> Engine:
    """The PyTorch engine `name`, built by the class its record names. int8_activations: u8 | s8 for int8
    (onnx_export.quantize_int8); None or "auto": the device's default (u8 on the CPU, s8 on CUDA). An engine
    that cannot take the model raises EngineRefused (base.refusal), to which the model's name is added here."""
    from cnnbench.core.errors import EngineRefused
    from cnnbench.engines.base import BuildInputs

    spec = table.find("pytorch", name)
    inputs = BuildInputs(model, placement, example, cache, calibration, compile_mode, int8_activations, shared,
                         calibration_tag, any_batch, spinning, threads)
    try:
        return table.engine_class(spec).build(inputs)
    except EngineRefused as refused:
        if model_name is None or refused.model:
            raise
        raise refused.with_model(model_name) from refused.__cause__
