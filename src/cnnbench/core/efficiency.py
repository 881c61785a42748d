"""How far a run is from the hardware's peak: achieved TFLOP/s and MFU (model FLOPs utilisation).

achieved TFLOP/s = forward FLOPs per image (registry.forward_flops, a multiply-add = 2 FLOPs) x PASSES
(3 for a training step: the forward, and a backward that computes gradients of both activations and
weights, each about a forward's cost; 1 for inference) x images/s (steady images over steady time),
and MFU = achieved / (peak x devices). For int8 the units are tera-operations per second. MFU is also the
run's share of the roof at its precision (docs/roofline.md): the report draws each precision's peak as a
line over the throughput chart.

The peak at the run's precision comes from, in this order:
1. DATASHEET_PEAKS, NVIDIA's published dense (no sparsity) figures for common GPUs, matched by name;
2. a measured peak (`measure_peak`): the best of several probes at that precision on the device (all cores
   on a CPU), each the best of REPEATS: square matrix products of several sides and, on a CPU, the 3x3
   convolutions of ResNet-50's stages, since oneDNN's convolutions beat its 2048-wide matrix product (issue
   24: 212 GFLOP/s from ONNX Runtime's ResNet-50 against a 174 GFLOP/s product). A CPU's peak is always
   measured: no table can know its cores, clocks and vector units. It is cached per machine (cache_path(),
   keyed by device model, ISA, threads and torch version) with when it was measured and the load average
   then, only when the machine was quiet (`machine_load`): a probe taken while other work ran is used for
   this run only, and says so. A cached peak older than MAX_AGE_S is measured again; `--remeasure-peaks`
   (`cnnbench models`) measures it now.
A peak that can be neither is None, with `peak_source` saying why. An MFU above 100% is not a fact but a
peak measured too low: the record says `peak_underestimated` and leaves `mfu` empty (`describe` says how to
remeasure).
"""

from __future__ import annotations

import dataclasses
import json
import math
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
# The probes' sizes: square matrix products of these sides (a CPU's cache-resident 512 to a 2048 that streams
# from memory; a GPU's need 4096 and more to fill its SMs), each the best of REPEATS after a warm-up. A CPU
# emulating a precision (fp16 without AVX512-FP16 or AMX runs ~100x slower) stops growing the side once one
# product takes SLOW_PRODUCT_SECONDS.
CPU_SIDES, GPU_SIDES, REPEATS, SLOW_PRODUCT_SECONDS = (512, 1024, 2048), (4096, 8192), 5, 1.0
# CPU convolution probes, (channels in = out, height = width): the 3x3 convolutions of ResNet-50's stages 1
# and 3 at batch CONV_BATCH, channels-last (oneDNN's blocked layouts' fast path); about 3.7 GFLOPs each.
CONV_SHAPES, CONV_BATCH = ((64, 56), (256, 14)), 16
CONV_PRECISIONS = ("fp32", "bf16")  # where the CPU's convolutions run natively (fp16 is emulated, int8 is ONNX's)
# The machine is busy when the load average that is not this process's (machine_load) is above this share of
# the usable cores: a probe then measures what the other work left, and is not cached.
BUSY_SHARE = 0.25
MAX_AGE_S = 7 * 86400  # a cached peak older than a week is measured again (a new BIOS, governor or kernel)
REMEASURE_HINT = "on an idle machine run `cnnbench models --remeasure-peaks`"


@dataclasses.dataclass(frozen=True)
class Peak:
    tflops: float | None
    source: str  # "datasheet: NVIDIA H100 SXM", "measured: ...", or "unavailable: why"
    measured_at: float | None = None    # time.time() of the measurement (None: a datasheet's or unavailable)
    load_average: float | None = None   # the 1-minute load average when it was measured
    cached: bool = False                # read from, or written to, the cache (False: this run only)


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
    """Achieved over the peak of every device that took part (a fraction; above 1 the peak is too low)."""
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


def machine_load() -> tuple[float, float, int]:
    """(1-minute load average, the part of it that is other processes', usable cores). The load average is
    an exponentially damped one-minute mean of runnable threads (proc(5), /proc/loadavg), this process's
    included: a run that measures its peak after its steps has kept every core busy itself. Its own share is
    estimated from its CPU time: r cores used over `age` seconds add about r x (1 - e^(-age/60))."""
    load, cores = os.getloadavg()[0], environment.usable_cores()
    age = max(time.time() - environment.process_start_time(), 1e-3)
    used = os.times()
    own = min(cores, (used.user + used.system) / age) * (1 - math.exp(-age / 60))
    return load, max(0.0, load - own), cores


def busy(others: float, cores: int) -> bool:
    return others > BUSY_SHARE * cores


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember(device: torch.device, precision: str, tflops: float, method: str, load_average: float | None = None,
             measured_at: float | None = None) -> None:
    """Add a measured peak to the cache (cache_path()), beside what other processes may have added since."""
    from cnnbench.core.files import atomic_write_text

    path, when = cache_path(), time.time() if measured_at is None else measured_at
    entry = {"tflops": tflops, "method": method, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when)),
             "measured_at_unix": when, "load_average": load_average}
    try:
        data = _read_cache(path)
        data[machine_key(device, precision)] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing more


# Peaks measured in this process while the machine was busy (not cached): measured once per process.
_THIS_PROCESS: dict[str, Peak] = {}
# A sweep gives its configurations' processes a file of their own (recipes/sweep.py), where a peak measured while
# the machine was busy is kept for the sweep's later configurations: the load average a configuration sees is
# mostly its finished siblings', so each measuring again would cost seconds and be no better. Never the cache.
SWEEP_PEAKS_VARIABLE = "CNNBENCH_SWEEP_PEAKS"


def peak(device: torch.device, precision: str, *, measure: bool = True, remeasure: bool = False) -> Peak:
    """The device's peak at `precision`: datasheet, else a cached measurement younger than MAX_AGE_S, else
    measured now (when `measure`; `remeasure`: whatever the cache holds), else unavailable."""
    if device.type == "cuda":
        found = datasheet_peak(torch.cuda.get_device_name(device), precision)
        if found is not None:
            return found
    key, path = machine_key(device, precision), cache_path()
    cached = _read_cache(path).get(key)
    if cached and not remeasure:
        when = cached.get("measured_at_unix")
        # An entry of an older cnnbench carries no time nor load: it may have been measured under load, so it is
        # measured again (issue 24: a peak measured once, busy, and kept for ever).
        if when is not None and time.time() - when < MAX_AGE_S:
            load = cached.get("load_average")
            return Peak(cached["tflops"], f"measured: {cached['method']} (cached {cached['measured_at']}"
                        + (f", load average {load:.2f}" if load is not None else "") + f", {path})",
                        when, load, True)
    if key in _THIS_PROCESS and not remeasure:
        return _THIS_PROCESS[key]
    shared = None if remeasure else _sweep_peaks().get(key)
    if shared is not None:
        return Peak(shared["tflops"], shared["source"] + " (measured by an earlier configuration of this sweep)",
                    shared["measured_at_unix"], shared["load_average"], False)
    if not measure:
        return Peak(None, "unavailable: not measured yet (`cnnbench models` measures it)")
    return _measure_now(device, precision, key)


def _measure_now(device: torch.device, precision: str, key: str) -> Peak:
    """Measure; cache the figure only when the machine was quiet before and after the probes."""
    before, others_before, cores = machine_load()
    tflops, method = measure_peak(device, precision)
    if tflops is None:
        return Peak(None, f"unavailable: {method}")
    after, others_after, _ = machine_load()
    load, others = max(before, after), max(others_before, others_after)
    now = time.time()
    if device.type == "cpu" and busy(others, cores):
        found = Peak(tflops, f"measured: {method}; NOT cached: measured while the machine was busy (load average "
                             f"{load:.2f}, about {others:.2f} of it other processes', on {cores} cores), so likely "
                             f"low; {REMEASURE_HINT}", now, load, False)
        from cnnbench.core.terminal import say

        say(f"Peak {precision}: measured while the machine was busy (load average {load:.2f} on {cores} cores); "
            f"{tflops:.3g} used for this run only, not cached")
        _THIS_PROCESS[key] = found
        _share_with_sweep(key, found)
        return found
    remember(device, precision, tflops, method, load, now)
    return Peak(tflops, f"measured: {method} (load average {load:.2f})", now, load, True)


def _sweep_peaks() -> dict:
    path = os.environ.get(SWEEP_PEAKS_VARIABLE)
    return _read_cache(Path(path)) if path else {}


def _share_with_sweep(key: str, found: Peak) -> None:
    from cnnbench.core.files import atomic_write_text

    path = os.environ.get(SWEEP_PEAKS_VARIABLE)
    if not path:
        return
    data = _read_cache(Path(path))
    data[key] = {"tflops": found.tflops, "source": found.source, "measured_at_unix": found.measured_at,
                 "load_average": found.load_average}
    try:
        atomic_write_text(Path(path), json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # the next configuration measures again, nothing more


def measure_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(TFLOP/s, how it was measured) at `precision` on `device`: the best of the probes (matrix products of
    CPU_SIDES or GPU_SIDES, and on a CPU the CONV_SHAPES convolutions), each the best of REPEATS, on all the
    threads torch uses; or (None, why not)."""
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
        probes = _product_probes(dtype, device)
        if device.type == "cpu" and precision in CONV_PRECISIONS:
            probes += _conv_probes(dtype, device)
    except RuntimeError as exc:  # a dtype this build cannot multiply, or no memory for the matrices
        return None, f"a {precision} probe failed on {device} ({str(exc).splitlines()[0][:120]})"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    name, best = max(probes, key=lambda probe: probe[1])
    others = ", ".join(f"{n} {t:.3g}" for n, t in probes if n != name)
    return best, (f"{name} at {precision} on {where}, the best of {len(probes)} probes (each the best of {REPEATS}"
                  + (f"; others: {others}" if others else "") + ")")


def _product_probes(dtype: torch.dtype, device: torch.device) -> list[tuple[str, float]]:
    """(name, TFLOP/s) of each square matrix product; a CPU stops growing the side once a product is slow."""
    probes = []
    for side in (GPU_SIDES if device.type == "cuda" else CPU_SIDES):
        seconds = _product_seconds(side, dtype, device, REPEATS)
        probes.append((f"{side}x{side} matrix product", 2 * side**3 / seconds / 1e12))
        if device.type == "cpu" and seconds > SLOW_PRODUCT_SECONDS:
            break
    return probes


def _conv_probes(dtype: torch.dtype, device: torch.device) -> list[tuple[str, float]]:
    """(name, TFLOP/s) of each CONV_SHAPES 3x3 convolution, stride 1, padding 1, channels-last."""
    probes = []
    with torch.no_grad():
        for channels, side in CONV_SHAPES:
            x = torch.randn(CONV_BATCH, channels, side, side, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(channels, channels, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
            seconds = _best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, REPEATS)
            flops = 2 * CONV_BATCH * channels * channels * 9 * side * side
            probes.append((f"3x3 convolution {channels} ch {side}x{side} batch {CONV_BATCH}", flops / seconds / 1e12))
    return probes


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
    probes = []
    with warnings.catch_warnings():  # the deprecation warning of quantized tensors (torch 2.14), once per call
        warnings.simplefilter("ignore", UserWarning)
        for side in CPU_SIDES:
            try:
                layer = Linear(side, side)
                x = torch.quantize_per_tensor(torch.randn(side, side), 0.05, 128, torch.quint8)
                seconds = _best_seconds(lambda: layer(x), device, REPEATS)
            except (RuntimeError, AttributeError) as exc:
                return None, f"torch.ao's quantized Linear failed ({str(exc).splitlines()[0][:120]})"
            probes.append((side, 2 * side**3 / seconds / 1e12))
    side, best = max(probes, key=lambda probe: probe[1])
    engine = torch.backends.quantized.engine
    return best, (f"{side}x{side} int8 product (torch.ao quantized Linear, {engine} engine) on "
                  f"{torch.get_num_threads()} CPU threads, the best of {len(probes)} sides (each the best of {REPEATS})")


def fields(forward_flops_per_image: float, kind: str, precision: str, device: torch.device, images_per_sec: float | None,
           devices: int = 1, *, remeasure: bool = False) -> dict:
    """The record's efficiency fields. `images_per_sec`: steady images over steady time, every device's."""
    achieved = (achieved_tflops(forward_flops_per_image, kind, images_per_sec)
                if images_per_sec is not None and math.isfinite(images_per_sec) else None)
    found = peak(device, precision, remeasure=remeasure)
    share = mfu(achieved, found.tflops, devices)
    above = share is not None and share > 1
    return {"forward_gflops_per_image": forward_flops_per_image / 1e9, "flop_passes": PASSES[kind],
            "achieved_tflops": achieved, "peak_tflops": found.tflops, "peak_precision": precision,
            "peak_source": found.source, "mfu": None if above else share, "peak_underestimated": above,
            "peak_age_s": None if found.measured_at is None else max(0.0, time.time() - found.measured_at),
            "peak_load_average": found.load_average, "peak_cached": found.cached if found.measured_at else None}


def describe(record: dict) -> str:
    """One line for a run's final lines. An MFU above 100% is not printed: the peak is too low."""
    achieved = record.get("achieved_tflops")
    if achieved is None:
        return "Efficiency: no steady steps to measure"
    unit = "TOPS" if record["peak_precision"] == "int8" else "TFLOP/s"
    line = (f"Efficiency: {achieved:.3f} {unit} achieved ({record['flop_passes']} x {record['forward_gflops_per_image']:.2f} "
            f"GFLOPs per image)")
    if record.get("peak_underestimated"):
        return (f"{line}; MFU not given: that is above the {record['peak_tflops']:.3g} {unit} {record['peak_precision']} "
                f"peak ({record['peak_source']}), so the peak is underestimated (measured under load, or by probes "
                f"slower than this model's kernels); {REMEASURE_HINT}")
    if record.get("mfu") is None:
        return f"{line}; MFU unknown: peak {record['peak_source']}"
    return (f"{line}; MFU {100 * record['mfu']:.1f}% of {record['peak_tflops']:.3g} {unit} {record['peak_precision']} "
            f"peak ({record['peak_source']}{_age(record.get('peak_age_s'))})")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f", {seconds / 86400:.1f} days old" if seconds >= 86400 else f", {seconds / 3600:.1f} h old"
