"""TensorRT, through ONNX Runtime's TensorRT execution provider: the ONNX export (int8: the same QDQ model with
symmetric activations, explicit quantisation) built into TensorRT engines, which TensorRT caches itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.core.placement import Placement
from cnnbench.engines.artifacts import ArtifactCache
from cnnbench.engines.base import BuildInputs
from cnnbench.engines.onnx_export import resolve_int8_activations
from cnnbench.engines.onnxruntime import OnnxRuntimeEngine, cuda_provider_options, ort_providers, stream_option


class TensorRTEngine(OnnxRuntimeEngine):
    """TensorRT writes its engines into the cache's trt folder itself: verified before TensorRT may load
    them (a mismatch deletes the folder, so that TensorRT rebuilds it), checksummed once it has written them."""

    name = "tensorrt"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], int8_activations: str = "s8"):
        engines_intact = cache.verify_folder("trt")
        super().__init__(model, placement, example, cache, calibration, int8_activations)
        self.info["trt_engine_cache_hit"] = engines_intact and not self._rebuilt
        # By the first run TensorRT has built (or loaded) and written its engine: its time counts as load time.
        start = time.perf_counter()
        self(example)
        self.info["engine_load_seconds"] += time.perf_counter() - start
        if cache.persistent:
            cache.record_folder("trt")

    @classmethod
    def unavailable(cls, device_type: str, offered: list[str] | None = None) -> str | None:
        providers = ort_providers() if offered is None else offered
        if "TensorrtExecutionProvider" not in providers:
            return ("--engine tensorrt needs TensorRT and onnxruntime-gpu with its TensorRT execution provider, which are "
                    "not installed here: pip install onnxruntime-gpu tensorrt (on a CUDA machine); or use --engine "
                    "onnxruntime or compile")
        return None

    @classmethod
    def build(cls, inputs: BuildInputs) -> "TensorRTEngine":
        activations = resolve_int8_activations(inputs.int8_activations, inputs.placement.device.type)
        if inputs.placement.precision == "int8" and activations != "s8":
            raise UsageError(f"--engine tensorrt takes int8 with s8 activations only (symmetric int8), not {activations}")
        return cls(inputs.model, inputs.placement, inputs.example, inputs.cache, inputs.calibration, activations)

    def _providers(self, cache: ArtifactCache) -> list:
        version, index, handle = self.info["onnxruntime"], self._device_index, self._stream_handle
        trt = tensorrt_provider_options(index, self.placement.precision, cache.dir / "trt", handle, version)
        # The CUDA provider after TensorRT takes the nodes TensorRT cannot (ONNX Runtime's partitioning).
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda_provider_options(index, handle, version))]


def tensorrt_provider_options(device_index: int, precision: str, engine_dir: Path, stream_handle: int, ort_version: str) -> dict:
    return {
        "device_id": device_index,
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",  # the QDQ model carries the scales
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        **stream_option("TensorrtExecutionProvider", stream_handle, ort_version),
    }
