"""How long a sweep will take, printed before it starts and set against the real time at its end.

A configuration's time is its process start-up, its engine build, its guard and calibration passes,
its warm-up and its steady steps (a window that stops on its standard error: at an assumed step spread).
Step times come from the model's FLOPs and a measured step of ResNet-50 on this very device (training: a
forward and backward; inference: a forward), not from a matmul rate: convolution efficiency differs by CPU
vector unit (AVX2 against AVX-512) by 2x or more, which a matmul calibration missed (issue 8: 2 h 34 min
estimated on a 2-core AVX2 machine).

The step is measured in a child process (`python -m cnnbench.recipes.estimate DEVICE` prints the rates as one
JSON line): the sweep's own process never runs a model, so on a GPU it creates no CUDA context and
keeps no cached memory beside the configurations' processes (issue 10).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from cnnbench.core.config import InferConfig, RunConfig, TrainConfig
from cnnbench.core.errors import CnnbenchError
from cnnbench.core.timing import STDERR_MIN_STEPS
from cnnbench.engines import table
from cnnbench.models.registry import forward_flops, resolve_entry

# Process start-up (interpreter, torch import, model build, environment): measured 4-6 s on this project's
# 2-core CPUs; CUDA adds its context creation.
STARTUP_SECONDS = {"cpu": 6.0, "cuda": 15.0}


@dataclass(frozen=True)
class EngineEstimate:
    """What an engine's record (engines/table.py, its `estimate`) costs a configuration: build seconds, and
    its speed against eager fp32 in the same run by precision (absent: 1.0, or CUDA_REDUCED_SPEEDUP)."""

    build_seconds: float
    speedup: dict[str, float]


# By the kind a record names. Speed-ups: a conservative reading of docs/engines.md's measured table (ResNet-50
# batch 16: onnxruntime fp32 1.5x-1.7x, int8 3.0x on AVX2 and 4.9x on AVX-512 VNNI, compile 1.2x-1.3x).
# Build seconds (export, compile, TensorRT's engine build), measured on the 2-core development CPUs for
# ResNet-50; larger graphs take longer, roughly with their FLOPs, so the figure scales by FLOPs^0.5.
ESTIMATES = {
    "eager": EngineEstimate(0.0, {}),                                          # the module itself, nothing built
    "compile": EngineEstimate(60.0, {"fp32": 1.2}),                            # a compiler (torch.compile, XLA)
    "export": EngineEstimate(15.0, {"fp32": 1.5, "int8": 3.0}),                # exported to a runtime (ONNX Runtime)
    "tensorrt": EngineEstimate(120.0, {"fp32": 1.5, "fp16": 3.0, "int8": 4.0}),  # exported, then TensorRT's build
    "convert": EngineEstimate(0.0, {}),                                        # a converted graph (TensorFlow Lite)
}
# Reduced precision on a GPU's tensor cores against fp32 (conservative: H100-class GPUs reach more).
CUDA_REDUCED_SPEEDUP = 2.0
INT8_QUANTISE_SECONDS = 10.0
REFERENCE_GFLOPS = 8.2  # ResNet-50's forward GFLOPs per image at 224 px (`cnnbench models`), the unit of BUILD_SECONDS' scaling
TRAIN_PASSES = 3.0  # a training step is about 3 forward passes (forward, backward for activations and weights)
# Per-step images/s varied by a median 1.4% in inference and 5.4% in training in ./run.sh on the 2-core development
# CPU (recipes/sweep.py, STOP_AT_STDERR's note): a window with a standard-error stop is estimated at 3%.
STEP_SPREAD = 0.03
# The calibration takes seconds on a CPU (docs/engines.md: a few seconds on a 2-core one); a child still running after
# this long is stuck, and the sweep says so rather than wait for ever.
CALIBRATION_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Rates:
    """Effective GFLOP/s of a training step and an eager forward on this device (ResNet-50, measured)."""

    device_type: str
    train_gflops: float
    infer_gflops: float

    def describe(self) -> str:
        return (f"from FLOPs and a measured ResNet-50 step on this device: {self.train_gflops:.0f} GFLOP/s training, "
                f"{self.infer_gflops:.0f} GFLOP/s inference")


def calibrate(device: torch.device, kind: str) -> Rates:
    """Time a ResNet-50 training step (and an eager forward) on `device`: a few seconds on a CPU.

    Measured in a child process on every device, one path: run in the sweep's process, the model would
    create a CUDA context there and keep the caching allocator's blocks for the whole sweep, while every
    configuration runs in a process of its own (issue 10). Once per device and process: the device's
    rates do not change between two sweeps of one process."""
    rates = _measured_in_child(str(device))
    return Rates(device.type, rates["train_gflops"], rates["infer_gflops"])


@functools.lru_cache(maxsize=None)
def _measured_in_child(device: str) -> dict[str, float]:
    command = [sys.executable, "-m", "cnnbench.recipes.estimate", device]
    what = f"the sweep's calibration (a ResNet-50 step on {device}, `python -m cnnbench.recipes.estimate {device}`)"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CALIBRATION_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise CnnbenchError(f"{what} did not finish in {CALIBRATION_TIMEOUT_SECONDS} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CnnbenchError(f"{what} failed with exit code {done.returncode}: {detail}")
    return json.loads(lines[-1])


def measure(device: torch.device) -> dict[str, float]:
    """GFLOP/s of a ResNet-50 training step and of an eager forward, measured in this process (the child's side of `calibrate`)."""
    entry = resolve_entry("resnet50")
    batch = 2 if device.type == "cpu" else 32
    model = entry.build(224).to(device, memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    flops = forward_flops(entry, 224) * batch
    train = flops * TRAIN_PASSES / _seconds(lambda: model(images).sum().backward(), device) / 1e9
    model.eval()
    with torch.inference_mode():
        infer = flops / _seconds(lambda: model(images), device) / 1e9
    return {"train_gflops": train, "infer_gflops": infer}


def _seconds(step, device: torch.device, repeats: int = 2) -> float:
    step()  # warm-up: allocator growth, cuDNN autotuning
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def _gflops(model: str, image_size: int | None) -> float:
    entry = resolve_entry(model)
    return forward_flops(entry, image_size or entry.input_size) / 1e9


def sweep_seconds(runs: list[RunConfig], kind: str, rates: Rates) -> list[float]:
    """Each configuration's estimate, in the order they run. With a cache path (infer-all always has one), what
    configurations share is paid once (recipes/inference.py): a shared build (engines/table.shares_builds) by the
    first configuration of its model and engine, its int8 calibration by the first int8 one, the guard's eager
    fp32 references by the first checked configuration of a model and batch size."""
    done: set = set()
    return [configuration_seconds(run, kind, rates, done) for run in runs]


def configuration_seconds(run: RunConfig, kind: str, rates: Rates, done: set | None = None) -> float:
    """Start-up + build + guard and calibration + warm-up + steady steps of one configuration. `done`: what the
    configurations before it in the same sweep built and kept (sweep_seconds), updated with this one's."""
    gflops = _gflops(run.model, run.image_size)
    batch = run.measure.batch_size
    if kind in ("train", "soak"):  # a soak is a training run
        step = gflops * TRAIN_PASSES * batch / rates.train_gflops
        extra = ESTIMATES["compile"].build_seconds if isinstance(run, TrainConfig) and run.compile else 0.0
        extra *= (gflops / REFERENCE_GFLOPS) ** 0.5
    else:
        reference_step = gflops * batch / rates.infer_gflops
        step = reference_step / _speedup(run, rates.device_type)
        extra = _inference_extra(run, gflops, reference_step, step, rates.device_type, done if run.cache_path else None)
    m = run.measure
    steady = m.num_batches * step
    if m.duration is not None:
        steady = min(steady, max(_window(m, step), m.min_steady_steps * step))
    return STARTUP_SECONDS[rates.device_type] + extra + m.warmup * step + steady


def _window(m, step: float) -> float:
    """Steady seconds of a time-bounded window: --duration, or with --stop-at-stderr the time the steps take to
    bring the standard error of their mean to the target at STEP_SPREAD (and no fewer than the stop's own least
    steps, timing.STDERR_MIN_STEPS), within [--min-steady-seconds, --duration]."""
    if m.stop_at_stderr is None:
        return m.duration
    steps = max((STEP_SPREAD / (m.stop_at_stderr / 100)) ** 2, STDERR_MIN_STEPS)
    return min(m.duration, max(m.min_steady_seconds, steps * step))


def engine_estimate(run: InferConfig) -> EngineEstimate:
    return ESTIMATES[table.find(run.framework, run.engine).estimate]


def _speedup(run: InferConfig, device_type: str) -> float:
    precision = run.placement.precision
    speedup = engine_estimate(run).speedup
    if precision in speedup:
        return speedup[precision]
    if device_type == "cuda" and precision in ("fp16", "bf16", "tf32"):
        return CUDA_REDUCED_SPEEDUP
    return 1.0


def _inference_extra(run: InferConfig, gflops: float, reference_step: float, step: float, device_type: str,
                     done: set | None) -> float:
    """Engine build, the guard's eager fp32 references and engine passes, int8 calibration; what `done` holds
    (kept by an earlier configuration of the sweep) is not paid again."""
    from cnnbench.recipes.inference import SHARED_CALIBRATION_BATCH

    done = set() if done is None else done  # nothing kept: every configuration pays for all of it
    precision, batch = run.placement.precision, run.measure.batch_size
    checked = (run.engine, precision) != ("eager", "fp32")
    shared = table.shares_builds(run.framework, run.engine, device_type)
    # Weights are part of a build's key: a sweep's checkpoints (one per batch size, in log_<model>_<batch>) are
    # different weights, random, --weights and --pretrained ones the same for every batch size.
    weights = None if run.random_weights or run.weights or run.pretrained else run.log_dir
    scope = (run.framework, run.model, run.image_size, run.engine, weights) + (() if shared else (precision, batch))
    extra = run.guard_batches * step if checked else 0.0
    if checked and _first(done, ("references", run.model, run.image_size, batch)):
        extra += run.guard_batches * reference_step
    build = engine_estimate(run).build_seconds if _first(done, ("build", *scope)) else 0.0
    if precision == "int8" and _first(done, ("int8", *scope)):
        build += INT8_QUANTISE_SECONDS
        calibration_batch = SHARED_CALIBRATION_BATCH if shared else batch
        extra += run.calib_batches * reference_step * calibration_batch / batch
    return extra + build * (gflops / REFERENCE_GFLOPS) ** 0.5


def _first(done: set, what: tuple) -> bool:
    """True the first time `what` is asked of this sweep (it is then paid for), False after."""
    if what in done:
        return False
    done.add(what)
    return True


def main(argv: list[str] | None = None) -> None:
    """`python -m cnnbench.recipes.estimate DEVICE`: `measure` on DEVICE, printed as one JSON line (`calibrate` reads it)."""
    (device,) = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure(torch.device(device))), flush=True)


if __name__ == "__main__":
    main()
