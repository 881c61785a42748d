"""OpenVINO: Intel's inference runtime, the engine CPU users pick (Intel's MLPerf Inference CPU submissions run it).

Built once from the eval-mode PyTorch model, like the ONNX Runtime engine: torch.export's graph converted by
openvino.convert_model into OpenVINO's IR (an .xml graph and a .bin of weights) at the batch's fixed shape,
saved in the artefact cache and checksummed, then compiled for the CPU plugin. Conversion (and int8's
quantisation) is build time; compilation is load time; neither is in the steady-state figures.

Precisions, all on the CPU:
- fp32: INFERENCE_PRECISION_HINT f32, set explicitly: on CPUs with native bf16 the CPU plugin's default is
  bf16 (OpenVINO's "Precision Control" guide; this AVX512-BF16 EPYC reports bf16), which would run an "fp32"
  row at bf16.
- int8: NNCF's post-training quantisation (nncf.quantize with its defaults: quantize_int8) of the fp32 IR,
  calibrated on the same batches as ONNX Runtime's int8 (the recipe's calibration batches, with its warning
  when they are synthetic); the layers NNCF leaves in float run at f32.
- bf16: INFERENCE_PRECISION_HINT bf16, only where the CPU runs bf16 natively (AVX512-BF16 or AMX: the plugin's
  BF16 optimisation capability). Elsewhere the plugin would fall back to f32 silently, so it is refused.
After compiling, the precision the plugin reports is checked against the one asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.core.placement import Placement
from cnnbench.engines import table
from cnnbench.engines.artifacts import ArtifactCache
from cnnbench.engines.base import BuildInputs, Engine, refusal

# The CPU plugin's names for the precisions it runs at (ov::hint::inference_precision).
INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def require(module: str):
    """Import `module` (openvino or nncf), or stop with the line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--engine openvino needs {module}: {table.find('pytorch', 'openvino').install}") from None


def native_bf16(core) -> bool:
    """Whether the CPU plugin runs bf16 in hardware: it lists BF16 among its optimisation capabilities only on
    AVX512-BF16 or AMX CPUs (ov::device::capabilities)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, cache: ArtifactCache,
                 calibration: Callable[[], list[torch.Tensor]], shared: bool = False, calibration_tag: str = ""):
        super().__init__()
        ov = require("openvino")
        self.placement = placement
        # A shared cache entry (BuildInputs.shared) holds a dynamic-batch IR, reshaped to this batch when compiled.
        self.shared, self.calibration_tag = shared, f".cal{calibration_tag}" if calibration_tag else ""
        core = ov.Core()
        if placement.precision == "bf16" and not native_bf16(core):
            raise UsageError("--engine openvino --precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX), which "
                             "this one lacks: OpenVINO would run f32 instead; use --precision fp32 or int8")
        self.info.update(openvino=importlib.metadata.version("openvino"))
        ir = self._build(ov, core, model, example, cache, calibration)
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[placement.precision],
                  # One synchronous request at a time, as the measured loop issues them: one stream on all cores.
                  "PERFORMANCE_HINT": "LATENCY"}
        start = time.perf_counter()
        with refusal(self.name, "compiling the IR for OpenVINO's CPU plugin"):
            ov_model = core.read_model(str(ir))
            ov_model.reshape(list(example.shape))  # static shapes, as the ONNX export's: the plugin plans for them
            self.compiled = core.compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.info["engine_load_seconds"] = time.perf_counter() - start
        self.info["openvino_inference_precision"] = self._check_precision(config["INFERENCE_PRECISION_HINT"])

    @classmethod
    def build(cls, inputs: BuildInputs) -> "OpenVINOEngine":
        return cls(inputs.model, inputs.placement, inputs.example, inputs.cache, inputs.calibration, inputs.shared,
                   inputs.calibration_tag)

    def _build(self, ov, core, model: nn.Module, example: torch.Tensor, cache: ArtifactCache, calibration) -> Path:
        """Convert (and quantise) unless the cache holds the IR; returns the .xml to compile. The versions are in
        the artefacts' names: the cache key (recipes/inference.py) holds ONNX Runtime's, not OpenVINO's or NNCF's."""
        start, built = time.perf_counter(), False
        fp32 = f"model.openvino-{self.info['openvino']}"
        xml = _lookup_ir(cache, fp32)
        if xml is None:
            with refusal(self.name, "the OpenVINO conversion"):
                ov_model, self.info["exporter"] = convert(ov, model, example, self.shared)
            xml = _save_ir(ov, cache, ov_model, fp32)
            built = True
        if self.placement.precision == "int8":
            require("nncf")
            nncf_version = importlib.metadata.version("nncf")
            int8 = f"{fp32}.nncf-{nncf_version}.int8{self.calibration_tag}"
            quantized = _lookup_ir(cache, int8)
            if quantized is None:
                batches = calibration()
                self.info.update(calibration_batches=len(batches), calibration_images=sum(b.shape[0] for b in batches))
                with refusal(self.name, "NNCF's int8 quantisation"):
                    quantized = _save_ir(ov, cache, quantize_int8(core.read_model(str(xml)), batches), int8)
                built = True
            self.info["nncf"] = nncf_version
            xml = quantized
        self.info["engine_build_seconds"] = time.perf_counter() - start if built else 0.0
        self.info["cache_hit"] = cache.persistent and not built
        return xml

    def _check_precision(self, asked: str) -> str:
        """The precision the compiled model runs at, which must be the one asked for: a row must never say fp32
        for a run at bf16 (or the reverse)."""
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if ran != asked:
            raise UsageError(f"--engine openvino: the CPU plugin would run at {ran}, not {asked}; nothing was measured")
        return ran

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The IR takes NCHW float32 (the exported graph's layout); share_inputs: no copy into OpenVINO's tensor.
        images = images.float().contiguous()
        outputs = self.request.infer({0: images.numpy()}, share_inputs=True)
        return torch.from_numpy(outputs[0])  # a copy (share_outputs is off): the request's buffer is reused


class ConversionFailed(RuntimeError):
    """Neither torch.export nor the TorchScript trace took the model into OpenVINO; `reason` says both."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def convert(ov, model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False):
    """The OpenVINO model at the example batch's fixed shape (or with a dynamic batch: one IR for every batch
    size, reshaped when compiled), and how it was converted. torch.export first (the path PyTorch maintains);
    the TorchScript trace convert_model takes a module through, where export fails."""
    example = example.float().contiguous()
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation, on the fallback path
        try:
            ov_model = ov.convert_model(torch.export.export(model, (example,), dynamic_shapes=dynamic))
            how = "torch.export + openvino.convert_model"
        except Exception as exc:  # recorded, not silent: the record names the path that produced the IR
            try:
                ov_model = ov.convert_model(model, example_input=example)
            except Exception as traced:  # neither path takes the model: the engine's refusal (base.refusal)
                raise ConversionFailed(f"{_conversion_reason(traced)}; torch.export failed first: {type(exc).__name__}") from traced
            how = f"openvino.convert_model TorchScript trace (torch.export failed: {type(exc).__name__})"
    shape = list(example.shape)
    ov_model.reshape([-1, *shape[1:]] if dynamic_batch else shape)
    return ov_model, how


def _conversion_reason(exc: BaseException) -> str:
    """OpenVINO's conversion error in one line: its summary of the operators it has no rule for (the first line
    of the message is only the C++ check that failed), else the error's first line."""
    lines = [line.strip(" -") for line in str(exc).splitlines()]
    summary = [line for line in lines if line.startswith(("No conversion rule found", "Conversion is failed"))]
    return f"{type(exc).__name__}: {'; '.join(summary)[:300]}" if summary else one_line(exc)


def quantize_int8(ov_model, batches: list[torch.Tensor]):
    """NNCF post-training quantisation of an OpenVINO model on `batches` (each one sample of the static-batch
    model: subset_size counts them). NNCF's defaults for OpenVINO: symmetric int8 weights per channel and
    activations per tensor (QuantizationPreset.PERFORMANCE); weights' ranges their min and max, activations'
    the min and max of each batch averaged over the batches (MinMaxQuantization's MEAN_MINMAX); fast bias
    correction (https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/basic-quantization-flow.html)."""
    nncf = require("nncf")
    nncf.set_log_level(logging.ERROR)  # its per-layer notes and progress bars are not benchmark output
    dataset = nncf.Dataset(batches, lambda batch: batch.detach().cpu().float().contiguous().numpy())
    with contextlib.redirect_stdout(io.StringIO()), _quiet("torch.utils.cpp_extension"):
        return nncf.quantize(ov_model, dataset, subset_size=len(batches))


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Errors only from one logger: NNCF loads torch.utils.cpp_extension, which warns that no CUDA runtime is
    found; true on a CPU machine and no concern of a CPU engine's run."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _lookup_ir(cache: ArtifactCache, stem: str) -> Path | None:
    """The IR's .xml if both its files are in the cache, intact (a corrupt one is deleted and noted)."""
    xml, weights = cache.lookup(f"{stem}.xml"), cache.lookup(f"{stem}.bin")
    return xml if xml is not None and weights is not None else None


def _save_ir(ov, cache: ArtifactCache, ov_model, stem: str) -> Path:
    xml = cache.dir / f"{stem}.xml"
    # compress_to_fp16=False: save_model's default stores the weights as fp16, which would make an fp32 run not fp32.
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    cache.record(f"{stem}.xml")
    cache.record(f"{stem}.bin")
    return xml
