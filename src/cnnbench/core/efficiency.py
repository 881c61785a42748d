"""How far a run is from the hardware's peak: achieved TFLOP/s and MFU (model FLOPs utilisation).

achieved TFLOP/s = forward FLOPs per image (registry.forward_flops, a multiply-add = 2 FLOPs) x PASSES
(3 for a training step: the forward, and a backward that computes gradients of both activations and
weights, each about a forward's cost; 1 for inference) x images/s (steady images over steady time),
and MFU = achieved / (peak x devices). For int8 the units are tera-operations per second.

The peak at the run's precision comes from, in this order:
1. DATASHEET_PEAKS, NVIDIA's published dense (no sparsity) figures for common GPUs, matched by name;
2. a measured peak: a large matrix product at that precision on the device (all cores on a CPU),
   measured once and cached per machine (cache_path(), keyed by device model, ISA, threads and torch
   version), and named `measured` in the record. A CPU's peak is always measured: no table can know
   its cores, clocks and vector units.
A peak that can be neither is None, with `peak_source` saying why.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings
from pathlib import Path

import torch

from cnnbench.core import environment

PASSES = {"train": 3, "infer": 1}

# Dense peak TFLOP/s (TOPS for int8) per precision: fp32 on the CUDA cores (cnnbench's fp32 turns TF32
# off), tf32 / fp16 / bf16 / int8 on the tensor cores. Datasheets print tensor figures "with sparsity";
# the dense figure is half of it, as their footnotes say. Patterns are tried in order, first match wins
# (so "H100 NVL" before "H100", "L40S" before "L4"), against torch.cuda.get_device_name().
DATASHEET_PEAKS: list[tuple[str, str, dict[str, float]]] = [
    # NVIDIA H200 Tensor Core GPU datasheet (H200 NVL column): FP32 60, TF32 835*, BF16/FP16 1671*, INT8 3341*.
    (r"H200 NVL", "NVIDIA H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "int8": 1670.5}),
    # NVIDIA H200 datasheet (H200 SXM column): FP32 67, TF32 989*, BF16/FP16 1979*, INT8 3958*.
    (r"H200", "NVIDIA H200 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "int8": 1979.0}),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column): FP32 60, TF32 835*, BF16/FP16 1671*, INT8 3341*.
    (r"H100 NVL", "NVIDIA H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "int8": 1670.5}),
    # NVIDIA H100 datasheet (H100 PCIe column): FP32 51, TF32 756*, BF16/FP16 1513*, INT8 3026*.
    (r"H100 PCIe", "NVIDIA H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5, "int8": 1513.0}),
    # NVIDIA H100 datasheet (H100 SXM column; torch names it "NVIDIA H100 80GB HBM3"): FP32 67, TF32 989*,
    # BF16/FP16 1979*, INT8 3958*.
    (r"H100", "NVIDIA H100 SXM", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "int8": 1979.0}),
    # NVIDIA HGX B200 datasheet, 8 GPUs: FP32 600, TF32 18 P*, FP16/BF16 36 P*, INT8 72 P* -> per GPU, dense.
    (r"B200", "NVIDIA B200 (HGX)", {"fp32": 75.0, "tf32": 1125.0, "bf16": 2250.0, "fp16": 2250.0, "int8": 4500.0}),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe print the same): FP32 19.5, TF32 156, BF16/FP16 312,
    # INT8 624 (dense; the sparse figures are double).
    (r"A100", "NVIDIA A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0, "int8": 624.0}),
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 | 366*, BF16/FP16 362.05 | 733*, INT8 733 | 1,466*.
    (r"L40S", "NVIDIA L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "int8": 733.0}),
    # NVIDIA L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*, INT8 485*.
    (r"\bL4\b", "NVIDIA L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "int8": 242.5}),
    # NVIDIA A10 datasheet: FP32 31.2, TF32 62.5 | 125*, BF16/FP16 125 | 250*, INT8 250 | 500*.
    (r"\bA10\b", "NVIDIA A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0, "int8": 250.0}),
    # NVIDIA V100 datasheet (SXM2 column): FP32 15.7, tensor (FP16) 125; no TF32, BF16 or INT8 tensor cores.
    (r"V100", "NVIDIA V100 SXM2", {"fp32": 15.7, "fp16": 125.0}),
    # NVIDIA T4 datasheet: FP32 8.1, mixed FP16/FP32 65, INT8 130.
    (r"\bT4\b", "NVIDIA T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
]

MEASURED_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest matrix side measured, and how long one product should take at least for a steady figure: a CPU
# emulating a precision (fp16 without AVX512-FP16 or AMX runs ~100x slower) gets a smaller matrix.
CPU_MAX_SIDE, GPU_SIDE, MIN_PRODUCT_SECONDS, REPEATS = 2048, 8192, 0.2, 5


@dataclasses.dataclass(frozen=True)
class Peak:
    tflops: float | None
    source: str  # "datasheet: NVIDIA H100 SXM", "measured: ...", or "unavailable: why"


def datasheet_peak(gpu_name: str, precision: str) -> Peak | None:
    """The table's peak for this GPU and precision; None when the GPU is not in the table."""
    for pattern, label, peaks in DATASHEET_PEAKS:
        if re.search(pattern, gpu_name):
            if precision in peaks:
                return Peak(peaks[precision], f"datasheet: {label} dense {precision}")
            return Peak(None, f"unavailable: the {label} datasheet gives no {precision} figure")
    return None


def achieved_tflops(forward_flops_per_image: float, kind: str, images_per_sec: float) -> float:
    return forward_flops_per_image * PASSES[kind] * images_per_sec / 1e12


def mfu(achieved: float | None, peak: float | None, devices: int = 1) -> float | None:
    """Achieved over the peak of every device that took part (a fraction, 0..1)."""
    if achieved is None or not peak or devices < 1:
        return None
    return achieved / (peak * devices)


def cache_path() -> Path:
    """CNNBENCH_CACHE_DIR, else $XDG_CACHE_HOME/cnnbench, else ~/.cache/cnnbench; peaks.json inside."""
    root = os.environ.get("CNNBENCH_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnbench"
    return Path(root) / "peaks.json"


def machine_key(device: torch.device, precision: str) -> str:
    """What a measured peak depends on: the device's model, its ISA (a CPU's), the threads, the torch build."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        env = environment.collect()
        what = f"{env['env.cpu_model']} | {env['env.cpu_isa']} | {torch.get_num_threads()} threads"
    return f"{device.type}: {what} | torch {torch.__version__} | {precision}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember(device: torch.device, precision: str, tflops: float, method: str) -> None:
    """Add a measured peak to the cache (cache_path()), beside what other processes may have added since."""
    from cnnbench.core.files import atomic_write_text

    path = cache_path()
    entry = {"tflops": tflops, "method": method, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        data = _read_cache(path)
        data[machine_key(device, precision)] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing more


def peak(device: torch.device, precision: str, *, measure: bool = True) -> Peak:
    """The device's peak at `precision`: datasheet, else cached measurement, else measured now (when
    `measure`), else unavailable."""
    if device.type == "cuda":
        found = datasheet_peak(torch.cuda.get_device_name(device), precision)
        if found is not None:
            return found
    key, path = machine_key(device, precision), cache_path()
    cached = _read_cache(path).get(key)
    if cached:
        return Peak(cached["tflops"], f"measured: {cached['method']} (cached {cached['measured_at']}, {path})")
    if not measure:
        return Peak(None, "unavailable: not measured yet (`cnnbench models --peak` measures it)")
    tflops, method = measure_peak(device, precision)
    if tflops is None:
        return Peak(None, f"unavailable: {method}")
    remember(device, precision, tflops, method)
    return Peak(tflops, f"measured: {method}")


def measure_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(TFLOP/s, how it was measured) of a square matrix product at `precision` on `device`, or (None, why
    not). On a CPU the matrix grows from 256 until one product takes MIN_PRODUCT_SECONDS (up to
    CPU_MAX_SIDE), on all the threads torch uses; the best of REPEATS products counts."""
    if precision == "int8":
        return _int8_peak(device)
    if precision == "tf32" and device.type != "cuda":
        return None, "tf32 exists on CUDA tensor cores only"
    dtype = MEASURED_DTYPES[precision]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} CPU threads")
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"  # fp32 is true fp32, as in the runs
    try:
        side = GPU_SIDE if device.type == "cuda" else _cpu_side(lambda n: _product_seconds(n, dtype, device, 1))
        seconds = _product_seconds(side, dtype, device, REPEATS)
    except RuntimeError as exc:  # a dtype this build cannot multiply, or no memory for the matrices
        return None, f"a {precision} matrix product failed on {device} ({str(exc).splitlines()[0][:120]})"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    return 2 * side**3 / seconds / 1e12, f"{side}x{side} {precision} matrix product on {where}, best of {REPEATS}"


def _cpu_side(time_one) -> int:
    side = 256
    while side < CPU_MAX_SIDE and time_one(side) < MIN_PRODUCT_SECONDS:
        side *= 2
    return side


def _product_seconds(side: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    return _best_seconds(lambda: torch.mm(a, b), device, repeats)


def _best_seconds(step, device: torch.device, repeats: int) -> float:
    step()  # warm-up: the library's kernel selection and first-touch allocation
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _int8_peak(device: torch.device) -> tuple[float | None, str]:
    """int8 on a CPU through torch.ao's quantized Linear (FBGEMM / oneDNN u8s8 GEMM with int32 accumulation):
    a public module, deprecated in torch 2.14 (pytorch/pytorch#184982) but present in 2.11 and 2.14. PyTorch
    has no public int8 matrix product on CUDA (torch._int_mm is private), so a GPU outside the table has none."""
    if device.type == "cuda":
        return None, "PyTorch has no public int8 matrix product on CUDA to measure (torch._int_mm is private)"
    try:
        from torch.ao.nn.quantized import Linear
    except ImportError as exc:
        return None, f"torch.ao's quantized Linear is not in this torch ({exc})"
    side = CPU_MAX_SIDE
    with warnings.catch_warnings():  # the deprecation warning of quantized tensors (torch 2.14), once per call
        warnings.simplefilter("ignore", UserWarning)
        try:
            layer = Linear(side, side)
            x = torch.quantize_per_tensor(torch.randn(side, side), 0.05, 128, torch.quint8)
            seconds = _best_seconds(lambda: layer(x), device, REPEATS)
        except (RuntimeError, AttributeError) as exc:
            return None, f"torch.ao's quantized Linear failed ({str(exc).splitlines()[0][:120]})"
    engine = torch.backends.quantized.engine
    return 2 * side**3 / seconds / 1e12, (f"{side}x{side} int8 product (torch.ao quantized Linear, {engine} engine) "
                                          f"on {torch.get_num_threads()} CPU threads, best of {REPEATS}")


def fields(forward_flops_per_image: float, kind: str, precision: str, device: torch.device, images_per_sec: float | None,
           devices: int = 1) -> dict:
    """The record's efficiency fields. `images_per_sec`: steady images over steady time, every device's."""
    import math

    achieved = (achieved_tflops(forward_flops_per_image, kind, images_per_sec)
                if images_per_sec is not None and math.isfinite(images_per_sec) else None)
    found = peak(device, precision)
    return {"forward_gflops_per_image": forward_flops_per_image / 1e9, "flop_passes": PASSES[kind],
            "achieved_tflops": achieved, "peak_tflops": found.tflops, "peak_precision": precision,
            "peak_source": found.source, "mfu": mfu(achieved, found.tflops, devices)}


def describe(record: dict) -> str:
    """One line for a run's final lines."""
    achieved = record.get("achieved_tflops")
    if achieved is None:
        return "Efficiency: no steady steps to measure"
    unit = "TOPS" if record["peak_precision"] == "int8" else "TFLOP/s"
    line = (f"Efficiency: {achieved:.3f} {unit} achieved ({record['flop_passes']} x {record['forward_gflops_per_image']:.2f} "
            f"GFLOPs per image)")
    if record.get("mfu") is None:
        return f"{line}; MFU unknown: peak {record['peak_source']}"
    return (f"{line}; MFU {100 * record['mfu']:.1f}% of {record['peak_tflops']:.3g} {unit} {record['peak_precision']} "
            f"peak ({record['peak_source']})")
