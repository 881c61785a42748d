"""ONNX export and int8 quantisation, shared by the engines that run an ONNX graph (onnxruntime, tensorrt).

int8 is static post-training quantisation in ONNX's QDQ form (per-channel weights; uint8 activations on the
CPU, symmetric int8 for TensorRT: quantize_int8), calibrated on real or synthetic batches; the TensorRT
provider reads the same QDQ model (explicit quantisation).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from cnnbench.core.errors import UsageError, one_line

ONNX_OPSET = 18

# int8 activation types of the static quantisation: u8 (uint8, asymmetric) or s8 (int8, symmetric,
# zero-point 0: the only form TensorRT's explicit quantisation takes). See quantize_int8.
INT8_ACTIVATIONS = ("u8", "s8")


def default_int8_activations(device_type: str) -> str:
    """u8 on the CPU, where x86's int8 instructions want unsigned activations; s8 elsewhere (TensorRT)."""
    return "u8" if device_type == "cpu" else "s8"


def check_int8_activations(kind: str) -> None:
    if kind not in INT8_ACTIVATIONS:
        raise UsageError(f"unknown int8 activation type {kind!r}; use one of: {', '.join(INT8_ACTIVATIONS)}")


def resolve_int8_activations(kind: str | None, device_type: str) -> str:
    """None or "auto": the device's default; otherwise the kind asked for, checked."""
    kind = default_int8_activations(device_type) if kind in (None, "auto") else kind
    check_int8_activations(kind)
    return kind


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over a few batches of images."""

    def __init__(self, batches: Iterable[torch.Tensor]):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch.detach().cpu().float().contiguous().numpy()}

    def rewind(self):  # part of the reader interface in newer onnxruntime releases
        pass


class ExportFailed(RuntimeError):
    """Both of torch.onnx's exporters refused the model; `reason` is the TorchScript exporter's complaint (it
    names the operator) and the dynamo exporter's error type."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# The name of the batch dimension of a dynamic-batch export; ONNX Runtime fixes it when it loads the file
# (SessionOptions.add_free_dimension_override_by_name), so the session still plans for static shapes.
BATCH_DIM = "batch"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, half: bool = False,
                dynamic_batch: bool = False) -> str:
    """Export with the example's fixed batch (static shapes suit TensorRT and CUDA graphs), or with a dynamic
    batch dimension named BATCH_DIM (one export for every batch size); returns the exporter used."""
    export_model, example = (model.half(), example.half()) if half else (model.float(), example.float())
    example = example.contiguous()
    kwargs = dict(input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET)
    # Each exporter's own form of the batch dimension (the dynamo exporter names the ONNX dimension after the Dim).
    dynamo_shapes = ({0: torch.export.Dim(BATCH_DIM)},) if dynamic_batch else None
    legacy_axes = {"images": {0: BATCH_DIM}, "logits": {0: BATCH_DIM}} if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines are not benchmark output
        try:
            # One self-contained file (every model here is far below protobuf's 2 GB limit): the quantiser
            # and the cache's checksum see all the weights.
            torch.onnx.export(export_model, (example,), str(path), dynamo=True, verbose=False, external_data=False,
                              dynamic_shapes=dynamo_shapes, **kwargs)
            exporter = "torch.onnx dynamo"
        except Exception as exc:  # recorded, not silent: the record names the exporter that produced the file
            try:
                torch.onnx.export(export_model, (example,), str(path), dynamo=False, dynamic_axes=legacy_axes, **kwargs)
            except Exception as legacy:  # neither exporter takes the model: the engine's refusal (base.refusal)
                raise ExportFailed(f"{one_line(legacy)}; the dynamo exporter failed first: {type(exc).__name__}") from legacy
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

    check_int8_activations(activations)
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
