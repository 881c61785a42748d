"""Inference engines: one interface, four back-ends.

An engine is built once from an eval-mode PyTorch model (export, quantise, compile: timed as build
time, kept out of the steady-state figures), then called on a batch of images on the device and
returns logits as a torch tensor on the device.

| engine      | back-end                                           | precisions                         |
| eager       | PyTorch, torch.inference_mode                      | fp32, tf32 (CUDA), fp16, bf16      |
| compile     | torch.compile (inductor)                           | fp32, tf32 (CUDA), fp16, bf16      |
| onnxruntime | ONNX export + ONNX Runtime (CPU EP / CUDA EP)      | fp32, int8 (CPU); fp32, fp16 (CUDA)|
| tensorrt    | ONNX Runtime's TensorRT execution provider         | fp32, fp16, int8 (CUDA only)       |

fp16/bf16 in eager and compile are autocast mixed precision, as in training. int8 is static
post-training quantisation in ONNX's QDQ form (per-channel weights; uint8 activations on the CPU,
symmetric int8 for TensorRT: quantize_int8), calibrated on real or synthetic batches; the TensorRT
provider reads the same QDQ model (explicit quantisation).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.core.placement import Placement

ENGINES = ("eager", "compile", "onnxruntime", "tensorrt")
SUPPORTED = {
    "eager": {"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
    "compile": {"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
    # ONNX Runtime's CPU provider has no fp16 convolution kernels; fp16 is for the CUDA provider.
    # int8 on CUDA: REFUSED below.
    "onnxruntime": {"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")},
    "tensorrt": {"cuda": ("fp32", "fp16", "int8")},
}
# Pairs that would run, but not as their name says; check_engine gives the reason.
# ONNX Runtime's CUDA provider has no int8 convolution: its CUDA build implements QuantizeLinear,
# DequantizeLinear and MatMulInteger only (FAQ "Do the GPU builds support quantized models?",
# https://github.com/microsoft/onnxruntime/blob/main/docs/FAQ.md), so a QDQ model's convolutions run in
# float between quantise/dequantise pairs; "ORT leverage TRT EP for quantization on GPU"
# (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#quantization-on-gpu).
REFUSED = {
    ("onnxruntime", "int8", "cuda"): "ONNX Runtime's CUDA provider has no int8 convolution kernels: it dequantises "
                                     "QDQ models to float; use --engine tensorrt --precision int8",
}
ONNX_OPSET = 18

# int8 activation types of the static quantisation: u8 (uint8, asymmetric) or s8 (int8, symmetric,
# zero-point 0: the only form TensorRT's explicit quantisation takes). See quantize_int8.
INT8_ACTIVATIONS = ("u8", "s8")


def default_int8_activations(device_type: str) -> str:
    """u8 on the CPU, where x86's int8 instructions want unsigned activations; s8 elsewhere (TensorRT)."""
    return "u8" if device_type == "cpu" else "s8"


def _check_int8_activations(kind: str) -> None:
    if kind not in INT8_ACTIVATIONS:
        raise UsageError(f"unknown int8 activation type {kind!r}; use one of: {', '.join(INT8_ACTIVATIONS)}")


def supported_pairs(device_type: str) -> str:
    return "; ".join(f"{e}: {', '.join(p[device_type])}" for e, p in SUPPORTED.items() if device_type in p)


def check_engine(engine: str, precision: str, device_type: str) -> None:
    """Fail early, with the pairs that do work, before any model is built."""
    if engine not in ENGINES:
        raise UsageError(f"unknown --engine {engine!r}; use one of: {', '.join(ENGINES)}")
    if (engine, precision, device_type) in REFUSED:
        raise UsageError(f"--engine {engine} --precision {precision} on {device_type}: {REFUSED[engine, precision, device_type]}")
    if engine in ("onnxruntime", "tensorrt"):
        _require_onnx(engine)
        providers = _ort_providers()
        if engine == "tensorrt" and "TensorrtExecutionProvider" not in providers:
            raise UsageError(
                "--engine tensorrt needs TensorRT and onnxruntime-gpu with its TensorRT execution provider, which are not "
                "installed here: pip install onnxruntime-gpu tensorrt (on a CUDA machine); or use --engine onnxruntime or compile"
            )
        if engine == "onnxruntime" and device_type == "cuda" and "CUDAExecutionProvider" not in providers:
            raise UsageError("--engine onnxruntime on a CUDA device needs onnxruntime-gpu: pip install onnxruntime-gpu; or use --device cpu")
    if device_type not in SUPPORTED[engine]:
        raise UsageError(f"--engine {engine} needs a CUDA device; on {device_type} the pairs that work are: {supported_pairs(device_type)}")
    if precision not in SUPPORTED[engine][device_type]:
        raise UsageError(
            f"--engine {engine} cannot run --precision {precision} on {device_type}; pairs that work: {supported_pairs(device_type)}"
        )


def _require_onnx(engine: str) -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--engine {engine} needs {', '.join(missing)}: pip install 'cnnbench[onnx]' (or .venv/bin/pip install -e '.[onnx]')")


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def installed_providers() -> list[str]:
    """ONNX Runtime's execution providers, none where it is not installed."""
    return _ort_providers() if importlib.util.find_spec("onnxruntime") is not None else []


def optimized_engine(device_type: str, providers: list[str]) -> tuple[str, str]:
    """The device's optimized engine, as the original's --use_trt meant it (nvcnn.py, `infer-all --engines
    optimized`): TensorRT where installed, else the fastest engine available; and why."""
    if "TensorrtExecutionProvider" in providers and device_type == "cuda":
        return "tensorrt", "TensorRT is installed"
    if device_type == "cpu" and "CPUExecutionProvider" in providers:
        return "onnxruntime", "TensorRT is not available on the CPU; ONNX Runtime is the fastest engine there"
    if device_type == "cuda" and "CUDAExecutionProvider" in providers:
        return "onnxruntime", "TensorRT is not installed; ONNX Runtime's CUDA provider is the fastest engine available"
    return "compile", f"TensorRT is not installed; torch.compile is the fastest engine available on {device_type}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    """Built artefacts keyed by everything that changes them; verified by checksum before reuse.

    Without --cache-path the entry lives in a temporary directory and nothing is reused.
    """

    def __init__(self, root: str | None, key: dict):
        self.persistent = root is not None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        base = Path(root) if root else Path(tempfile.mkdtemp(prefix="cnnbench-build-"))
        self.dir = base / f"{key['model']}-{key['engine']}-{key['precision']}-b{key['batch_size']}-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.notes: list[str] = []
        self._manifest_path = self.dir / "manifest.json"

    def _manifest(self) -> dict:
        try:
            return json.loads(self._manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"key": self.key, "files": {}}

    def lookup(self, name: str) -> Path | None:
        """The artefact if present and intact; a corrupt one is deleted, noted, and reported as absent."""
        path = self.dir / name
        expected = self._manifest()["files"].get(name)
        if not self.persistent or expected is None or not path.exists():
            return None
        if sha256_file(path) != expected:
            self.notes.append(f"cache entry {path} is corrupt (checksum mismatch); rebuilding it")
            path.unlink()
            return None
        return path

    def record(self, name: str) -> None:
        manifest = self._manifest()
        manifest["files"][name] = sha256_file(self.dir / name)
        self._write(manifest)

    def record_folder(self, name: str) -> None:
        """Checksum every file under the folder `name`: files a library writes itself (TensorRT's engines)."""
        manifest = self._manifest()
        manifest.setdefault("folders", {})[name] = self._folder_sums(name)
        self._write(manifest)

    def verify_folder(self, name: str) -> bool:
        """True when the folder holds exactly its recorded files, intact. Otherwise (a file changed, missing or
        unrecorded, a folder never recorded) it is deleted and noted, so that its library rebuilds it."""
        folder = self.dir / name
        if not folder.exists():
            return False
        expected = self._manifest().get("folders", {}).get(name)
        if self.persistent and expected is not None and self._folder_sums(name) == expected:
            return True
        why = "is corrupt (checksum mismatch)" if expected is not None else "is not in the cache manifest (a build cut short)"
        self.notes.append(f"cache entry {folder} {why}; rebuilding it")
        shutil.rmtree(folder)
        return False

    def _folder_sums(self, name: str) -> dict[str, str]:
        folder = self.dir / name
        return {path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()}

    def _write(self, manifest: dict) -> None:
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
        os.replace(tmp, self._manifest_path)

    def close(self) -> None:
        if not self.persistent:
            shutil.rmtree(self.dir.parent, ignore_errors=True)


class Engine:
    """Call on a batch of images on the device; returns logits on the device."""

    name = "engine"

    def __init__(self):
        self.info: dict = {"engine_build_seconds": 0.0, "engine_load_seconds": 0.0, "cache_hit": False}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, model: nn.Module, placement: Placement):
        super().__init__()
        self.model, self.placement = model, placement

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.placement.autocast():
            return self.model(images)


class CompiledEngine(EagerEngine):
    """torch.compile. Compilation is lazy (it happens at the first call), so the build makes that first
    call itself, on the example batch and exactly as every later call runs (inference_mode, the
    placement's autocast), and times it to the device's synchronisation: engine_build_seconds is the
    compile cost, and no warm-up or guard step pays it."""

    name = "compile"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, mode: str, cache: ArtifactCache):
        super().__init__(torch.compile(model, mode=mode), placement)
        self.info["compile_mode"] = mode
        saved = cache.lookup("inductor_artifacts.bin") if hasattr(torch.compiler, "load_cache_artifacts") else None
        start = time.perf_counter()
        if saved is not None:
            # Loading only fills inductor's caches; the first call below still traces the model and
            # builds its kernels from them, so a hit's build time is measured the same way as a miss's.
            torch.compiler.load_cache_artifacts(saved.read_bytes())
            self.info["cache_hit"] = True
        self.info["engine_load_seconds"] = time.perf_counter() - start
        self.info["engine_build_seconds"] = self._compile_now(example)
        if saved is None and cache.persistent and hasattr(torch.compiler, "save_cache_artifacts"):
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                (cache.dir / "inductor_artifacts.bin").write_bytes(artifacts[0])
                cache.record("inductor_artifacts.bin")

    def _compile_now(self, example: torch.Tensor) -> float:
        """Seconds of the first call, which compiles; synchronised, so queued device work is included."""
        self.placement.synchronize()
        start = time.perf_counter()
        self(example)
        self.placement.synchronize()
        return time.perf_counter() - start


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a few batches of images."""

    def __init__(self, batches: Iterable[torch.Tensor]):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch.detach().cpu().float().contiguous().numpy()}

    def rewind(self):  # part of the reader interface in newer onnxruntime releases
        pass


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], int8_activations: str = "u8"):
        super().__init__()
        import onnxruntime as ort

        self.placement = placement
        self.int8_activations = int8_activations
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

    def _build(self, model, example, cache: ArtifactCache, calibration) -> Path:
        """Export (and quantise) unless the cache holds the artefacts; returns the ONNX file to run."""
        start, built = time.perf_counter(), False
        onnx_name = "model.fp16.onnx" if self.placement.precision == "fp16" else "model.onnx"
        onnx_path = cache.lookup(onnx_name)
        if onnx_path is None:
            onnx_path = cache.dir / onnx_name
            self.info["exporter"] = export_onnx(model, example, onnx_path, half=self.placement.precision == "fp16")
            cache.record(onnx_name)
            built = True
        if self.placement.precision == "int8":
            # The activation type is in the artefact's name: the cache key (inference.py) does not hold it.
            name = f"model.int8-{self.int8_activations}.onnx"
            quantized = cache.lookup(name)
            if quantized is None:
                quantized = cache.dir / name
                calib = calibration()
                self.info["calibration_batches"] = len(calib)
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
        providers = self._providers(cache)
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:
            if self._built:
                raise
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

    def _providers(self, cache: ArtifactCache) -> list:
        version, index, handle = self.info["onnxruntime"], self._device_index, self._stream_handle
        trt = tensorrt_provider_options(index, self.placement.precision, cache.dir / "trt", handle, version)
        # The CUDA provider after TensorRT takes the nodes TensorRT cannot (ONNX Runtime's partitioning).
        return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda_provider_options(index, handle, version))]


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


def tensorrt_provider_options(device_index: int, precision: str, engine_dir: Path, stream_handle: int, ort_version: str) -> dict:
    return {
        "device_id": device_index,
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",  # the QDQ model carries the scales
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        **stream_option("TensorrtExecutionProvider", stream_handle, ort_version),
    }


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


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, half: bool = False) -> str:
    """Export with a fixed batch (static shapes suit TensorRT and CUDA graphs); returns the exporter used."""
    export_model, example = (model.half(), example.half()) if half else (model.float(), example.float())
    example = example.contiguous()
    kwargs = dict(input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines are not benchmark output
        try:
            # One self-contained file (every model here is far below protobuf's 2 GB limit): the quantiser
            # and the cache's checksum see all the weights.
            torch.onnx.export(export_model, (example,), str(path), dynamo=True, verbose=False, external_data=False, **kwargs)
            exporter = "torch.onnx dynamo"
        except Exception as exc:  # recorded, not silent: the record names the exporter that produced the file
            torch.onnx.export(export_model, (example,), str(path), dynamo=False, **kwargs)
            exporter = f"torch.onnx torchscript (dynamo exporter failed: {type(exc).__name__})"
    if half:
        model.float()
    return exporter


def quantize_int8(fp32_path: Path, out_path: Path, calibration: list[torch.Tensor], *, activations: str = "u8") -> None:
    """Static post-training quantisation: QDQ format, per-channel int8 weights, MinMax-calibrated activations.

    activations "u8": U8S8 (uint8 activations, int8 weights), the form x86's int8 dot-product
    instructions take (VPMADDUBSW, AVX512-VNNI's VPDPBUSD multiply unsigned by signed bytes), hence the
    CPU's default. On AVX2 machines without VNNI, U8S8 can saturate; the fp32 guard would show it.
    activations "s8": S8S8 with symmetric (zero-point 0) activations and weights, the only form
    TensorRT's explicit quantisation takes. Both on ONNX Runtime's CPU provider, side by side with eager
    fp32 (ResNet-50, 224 px, batch 16; output saved as benchmarks/results/engines-<time>.{txt,jsonl}):
        .venv/bin/python benchmarks/engines.py --int8-activations u8,s8
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    _check_int8_activations(activations)
    if activations == "u8":
        types = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options={})
    else:
        types = dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                     extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    prepared = out_path.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out_path), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax, **types)
    prepared.unlink(missing_ok=True)


def build_engine(name: str, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], compile_mode: str, *,
                 int8_activations: str | None = None) -> Engine:
    """int8_activations: u8 | s8 for int8 (quantize_int8); None or "auto": the device's default (u8 on
    the CPU, s8 on CUDA)."""
    if name == "eager":
        return EagerEngine(model, placement)
    if name == "compile":
        return CompiledEngine(model, placement, example, compile_mode, cache)
    if int8_activations in (None, "auto"):
        int8_activations = default_int8_activations(placement.device.type)
    activations = int8_activations
    _check_int8_activations(activations)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(model, placement, example, cache, calibration, activations)
    if placement.precision == "int8" and activations != "s8":
        raise UsageError(f"--engine tensorrt takes int8 with s8 activations only (symmetric int8), not {activations}")
    return TensorRTEngine(model, placement, example, cache, calibration, activations)
