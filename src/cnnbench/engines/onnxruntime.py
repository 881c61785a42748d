"""ONNX Runtime: the model exported to ONNX (and quantised for int8, onnx_export.py), run by ONNX Runtime's CPU
provider or its CUDA provider; on CUDA bound to torch's tensors and, where it can, torch's stream.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from cnnbench.core.errors import EngineRefused, UsageError
from cnnbench.core.placement import Placement
from cnnbench.engines.artifacts import ArtifactCache
from cnnbench.engines.base import BuildInputs, Engine, refusal
from cnnbench.engines.onnx_export import BATCH_DIM, ONNX_OPSET, export_onnx, quantize_int8, resolve_int8_activations


def ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def installed_providers() -> list[str]:
    """ONNX Runtime's execution providers, none where it is not installed."""
    return ort_providers() if importlib.util.find_spec("onnxruntime") is not None else []


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], int8_activations: str = "u8", shared: bool = False,
                 calibration_tag: str = "", any_batch: bool = False, spinning: bool = True, threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        self.placement = placement
        self.int8_activations = int8_activations
        # A shared cache entry (BuildInputs.shared) holds a dynamic-batch export, fixed to this batch on loading.
        self.batch = example.shape[0] if shared else None
        self.any_batch = shared and any_batch  # then the batch stays free: partial batches run at their size
        self.spinning, self.threads = spinning, threads
        self.info["intra_op_spinning"] = spinning if placement.device.type == "cpu" else None
        self.calibration_tag = f"-cal{calibration_tag}" if calibration_tag else ""
        self.input_dtype = torch.float16 if placement.precision == "fp16" else torch.float32
        self.info.update(onnx_opset=ONNX_OPSET, onnxruntime=ort.__version__)
        # The stream offered to ONNX Runtime: torch's current one at build time, which the measured loop
        # keeps using; each call checks that it still is (run_bound).
        stream = torch_stream(placement.device)
        self._stream_handle = stream.cuda_stream if stream is not None else 0
        self._rebuilt = False
        try:
            self.session = self._load(self._build(model, example, cache, calibration), cache)
        except _StaleArtifact as stale:
            # An artefact that passed its checksum but does not load (written by another onnxruntime or
            # TensorRT): rebuild once, TensorRT's engines with it.
            cache.notes.append(f"cache entry {stale.path} does not load ({stale.reason}); rebuilding it")
            for old in cache.dir.glob("*.onnx"):
                old.unlink()
            shutil.rmtree(cache.dir / "trt", ignore_errors=True)
            self._rebuilt = True
            self.session = self._load(self._build(model, example, cache, calibration), cache)
        self.shared_stream = self._shared_stream()
        if placement.device.type == "cuda":
            self.info["ort_stream"] = "torch's" if self.shared_stream is not None else "its own, synchronised with torch's"

    @classmethod
    def unavailable(cls, device_type: str, offered: list[str] | None = None) -> str | None:
        """The CUDA provider (onnxruntime-gpu) on a CUDA device; the CPU provider is in every build."""
        providers = ort_providers() if offered is None else offered
        if device_type == "cuda" and "CUDAExecutionProvider" not in providers:
            return "--engine onnxruntime on a CUDA device needs onnxruntime-gpu: pip install onnxruntime-gpu; or use --device cpu"
        return None

    @classmethod
    def build(cls, inputs: BuildInputs) -> "OnnxRuntimeEngine":
        activations = resolve_int8_activations(inputs.int8_activations, inputs.placement.device.type)
        return cls(inputs.model, inputs.placement, inputs.example, inputs.cache, inputs.calibration, activations,
                   inputs.shared, inputs.calibration_tag, inputs.any_batch, inputs.spinning, inputs.threads)

    def _build(self, model, example, cache: ArtifactCache, calibration) -> Path:
        """Export (and quantise) unless the cache holds the artefacts; returns the ONNX file to run."""
        start, built = time.perf_counter(), False
        onnx_name = "model.fp16.onnx" if self.placement.precision == "fp16" else "model.onnx"
        onnx_path = cache.lookup(onnx_name)
        if onnx_path is None:
            onnx_path = cache.dir / onnx_name
            with refusal(self.name, "the ONNX export"):
                self.info["exporter"] = export_onnx(model, example, onnx_path, half=self.placement.precision == "fp16",
                                                    dynamic_batch=self.batch is not None)
            cache.record(onnx_name)
            built = True
        if self.placement.precision == "int8":
            # The activation type and the calibration are in the artefact's name: the cache key (inference.py) holds neither.
            name = f"model.int8-{self.int8_activations}{self.calibration_tag}.onnx"
            quantized = cache.lookup(name)
            if quantized is None:
                quantized = cache.dir / name
                calib = calibration()
                self.info.update(calibration_batches=len(calib), calibration_images=sum(b.shape[0] for b in calib))
                with refusal(self.name, "ONNX Runtime's int8 quantisation"):
                    quantize_int8(onnx_path, quantized, calib, activations=self.int8_activations)
                cache.record(name)
                built = True
            self.info.update(fp32_onnx_bytes=onnx_path.stat().st_size, int8_onnx_bytes=quantized.stat().st_size,
                             int8_activations=self.int8_activations)
            onnx_path = quantized
        self.info["engine_build_seconds"] = time.perf_counter() - start if built else 0.0
        self.info["cache_hit"] = cache.persistent and not built
        self._built = built
        return onnx_path

    def _load(self, onnx_path: Path, cache: ArtifactCache):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise in a benchmark log
        if self.batch is not None and not self.any_batch:
            options.add_free_dimension_override_by_name(BATCH_DIM, self.batch)
        if not self.spinning:  # documented session config key (onnxruntime_session_options_config_keys.h)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers = self._providers(cache)
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:
            if self._built:  # a graph just exported that ONNX Runtime cannot load (an operator without a kernel)
                raise EngineRefused(self.name, "loading the exported graph into ONNX Runtime", exc) from exc
            raise _StaleArtifact(onnx_path, str(exc).splitlines()[0][:120]) from None
        self.info["engine_load_seconds"] = time.perf_counter() - start
        self.info["execution_provider"] = check_provider(session.get_providers(), _provider_name(providers[0]), self.name)
        return session

    def _providers(self, cache: ArtifactCache) -> list:
        if self.placement.device.type == "cuda":
            return [("CUDAExecutionProvider", cuda_provider_options(self._device_index, self._stream_handle, self.info["onnxruntime"]))]
        return ["CPUExecutionProvider"]

    def _shared_stream(self) -> int | None:
        """torch's stream handle if the session really runs on it (ONNX Runtime reports its options back)."""
        if self.placement.device.type != "cuda":
            return None
        return shared_stream(self.session.get_provider_options(), self._stream_handle)

    @property
    def _device_index(self) -> int:
        return self.placement.device.index or 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.input_dtype).contiguous()
        if self.placement.device.type == "cpu":
            (logits,) = self.session.run(None, {"images": images.numpy()})
            return torch.from_numpy(logits)
        out = torch.empty((images.shape[0], self.num_outputs), dtype=self.input_dtype, device=images.device)
        run_bound(self.session, images, out, self._device_index, torch_stream(self.placement.device), self.shared_stream)
        return out

    @property
    def num_outputs(self) -> int:
        return self.session.get_outputs()[0].shape[1]


class _StaleArtifact(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path, self.reason = path, reason


# The first ONNX Runtime releases that take a caller's CUDA stream from Python: CUDA provider
# microsoft/onnxruntime#19229 (merged January 2024), TensorRT provider #20168 (April 2024); a release
# before them throws on the unknown option, so each is given one release of margin. user_compute_stream
# alone: it sets has_user_compute_stream itself, which set from Python has no effect (#19229). Stream 0,
# torch's default (legacy) stream, is refused, and ONNX Runtime keeps its own stream (#19619). Usage:
# https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#user_compute_stream
USER_STREAM_SINCE = {"CUDAExecutionProvider": (1, 18), "TensorrtExecutionProvider": (1, 19)}


def stream_option(provider: str, stream_handle: int, ort_version: str) -> dict:
    """The provider option that puts ONNX Runtime's kernels on torch's stream, where this ONNX Runtime can."""
    major_minor = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", ort_version).groups())
    if stream_handle == 0 or major_minor < USER_STREAM_SINCE[provider]:
        return {}
    return {"user_compute_stream": str(stream_handle)}


def cuda_provider_options(device_index: int, stream_handle: int, ort_version: str) -> dict:
    return {"device_id": device_index, **stream_option("CUDAExecutionProvider", stream_handle, ort_version)}


def shared_stream(session_options: dict[str, dict], stream_handle: int) -> int | None:
    """`stream_handle` if every GPU provider of a session runs on that stream, by the options the session
    reports (get_provider_options); None if any keeps its own."""
    gpu = [options for provider, options in session_options.items() if provider != "CPUExecutionProvider"]
    on_it = [options.get("has_user_compute_stream") == "1" and options.get("user_compute_stream") == str(stream_handle)
             for options in gpu]
    return stream_handle if stream_handle and gpu and all(on_it) else None


def torch_stream(device: torch.device):
    """torch's current stream on a CUDA device; None on the CPU."""
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def run_bound(session, images: torch.Tensor, out: torch.Tensor, device_index: int, stream, shared: int | None) -> None:
    """Run the session on CUDA tensors bound in place (no host round trip), ordered with torch's work on `stream`.

    On a shared stream ONNX Runtime's kernels queue behind torch's (the conversion of `images`, the reuse of
    `out`'s memory) and ahead of whatever reads `out`. On any other stream nothing orders them: wait for
    torch's work before the run, and for ONNX Runtime's after it."""
    ordered = shared is not None and stream.cuda_stream == shared
    if not ordered:
        stream.synchronize()
    binding = session.io_binding()
    dtype = _ORT_TYPES[images.dtype]
    binding.bind_input("images", "cuda", device_index, dtype, tuple(images.shape), images.data_ptr())
    binding.bind_output("logits", "cuda", device_index, dtype, tuple(out.shape), out.data_ptr())
    session.run_with_iobinding(binding)
    if not ordered:
        binding.synchronize_outputs()


# What ONNX Runtime does instead of failing (issue 10): it lists the TensorRT provider as available without
# TensorRT's libraries, and a session asked for it then registers the CUDA provider only; a CUDA provider
# whose CUDA or cuDNN libraries do not load leaves the CPU provider. get_providers() lists what registered.
WHY_NOT_REGISTERED = {
    "TensorrtExecutionProvider": "TensorRT's libraries did not load: install the tensorrt release onnxruntime-gpu was built for",
    "CUDAExecutionProvider": "CUDA's or cuDNN's libraries did not load: install the releases onnxruntime-gpu was built for",
}


def check_provider(registered: list[str], requested: str, engine: str) -> str:
    """The provider that runs the session, which must be the one asked for: a results table must never
    name an engine for a run of another provider."""
    ran = registered[0] if registered else "no provider"
    if ran != requested:
        why = WHY_NOT_REGISTERED.get(requested, "ONNX Runtime's messages above say why")
        raise UsageError(f"--engine {engine}: ONNX Runtime would run on {ran}, not {requested} ({why}); nothing was measured")
    return ran


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


_ORT_TYPES = {torch.float32: np.float32, torch.float16: np.float16}
