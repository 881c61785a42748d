"""Device, precision and memory format: each resolved here, from one string, and nowhere else.

Everything downstream receives a `Placement` and never inspects the option strings again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cnnbench.core.config import MEMORY_FORMATS
from cnnbench.core.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
TRAIN_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """fp16 and bf16 are autocast mixed precision: weights stay fp32, eligible ops run reduced."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    @property
    def uses_grad_scaler(self) -> bool:
        # fp16's narrow exponent underflows small gradients; bf16 has fp32's range and needs no scaling.
        return self.precision == "fp16"

    def autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def synchronize(self) -> None:
        """Wait until the device has finished all queued work, so that a clock read after it is honest."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def apply_global_settings(self) -> None:
        """tf32 is a global switch in PyTorch; set it explicitly either way so an earlier run cannot leak into this one."""
        if self.device.type == "cuda":
            allow = self.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow
            # cuDNN picks the fastest convolution algorithm for the fixed shapes of a benchmark, as TF did by default.
            torch.backends.cudnn.benchmark = True

    @staticmethod
    @contextlib.contextmanager
    def true_fp32():
        """TF32 off inside, the previous settings restored after: for the fp32 guard's references.

        `apply_global_settings` switches TF32 on for the whole process in a tf32 run, and TF32 rounds
        matmul and convolution inputs to a 10-bit mantissa (PyTorch, "TensorFloat-32 (TF32) on Ampere
        (and later) devices", CUDA semantics notes); references computed under it compared tf32 with tf32
        (issue 10). The flags are process-wide and ignored off CUDA, so they are switched on any device.
        """
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    @property
    def memory_format_name(self) -> str:
        return "nhwc" if self.channels_last else "nchw"

    def describe(self) -> str:
        return f"{self.device} {self.precision} {self.memory_format_name}"


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """`local_rank`: this process's index among the processes of its node in a distributed job
    (torchrun's LOCAL_RANK). On CUDA each such process takes its own GPU, cuda:LOCAL_RANK of the
    visible ones; on the CPU every process shares the one device."""
    name = name.lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name} was asked for but CUDA is not available on this machine; use --device cpu or --device auto"
            )
        device = torch.device(name)
        if local_rank is not None:
            if device.index is not None:
                raise UsageError(f"--device {name} names one GPU, but each process of a distributed run takes its own "
                                 "(cuda:LOCAL_RANK); use --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
            if local_rank >= torch.cuda.device_count():
                raise UsageError(f"this node runs more processes than its {torch.cuda.device_count()} visible GPU(s) "
                                 f"(local rank {local_rank} has none); start at most {torch.cuda.device_count()} per node "
                                 "or set CUDA_VISIBLE_DEVICES")
            return torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "pick one below that or set CUDA_VISIBLE_DEVICES"
            )
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown --device {name!r}; use one of: {', '.join(DEVICES)} (or cuda:N)")


def resolve_memory_format(name: str, device: torch.device, layout: str = "any") -> bool:
    """True for channels-last (NHWC). `auto` takes it where it is faster:
      - CPUs: oneDNN's convolutions are NHWC-native. ResNet-50 batch 16, eager fp32: 10.9 against 8.4 img/s on
        a 2-core AVX2 CPU, 17.7 against 12.7 on a 2-core AVX-512 EPYC; training 3.6 against 3.4 (issue 8);
      - CUDA GPUs with tensor cores (compute capability 7.0 and up): cuDNN's tensor-core kernels are NHWC, and
        NCHW costs a transpose around every convolution (NVIDIA's "Convolutional Layers User's Guide");
      - an engine whose input layout is fixed (`layout`, its record's in engines/table.py, which the backend
        reads: the core imports no engine) takes that layout: the ONNX engines' exported graph fixes NCHW and
        the runtime picks its own internal layout.
    """
    name = name.lower()
    if name not in MEMORY_FORMATS:
        raise UsageError(f"unknown --memory-format {name!r}; use one of: {', '.join(MEMORY_FORMATS)}")
    if name != "auto":
        return name == "nhwc"
    if layout != "any":
        return layout == "NHWC"
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (7, 0)
    return True


def resolve_placement(
    device: str, precision: str, memory_format: str = "auto", allowed_precisions: tuple[str, ...] = TRAIN_PRECISIONS,
    local_rank: int | None = None, layout: str = "any",
) -> Placement:
    resolved = resolve_device(device, local_rank)
    precision = precision.lower()
    if precision not in allowed_precisions:
        raise UsageError(f"unknown --precision {precision!r}; use one of: {', '.join(allowed_precisions)}")
    if precision == "tf32" and resolved.type != "cuda":
        raise UsageError("--precision tf32 needs a CUDA device (TensorFloat-32 is an NVIDIA tensor-core format); use fp32 on the CPU")
    if precision == "fp16" and resolved.type == "cpu" and not _cpu_supports_fp16_autocast():
        raise UsageError("--precision fp16 is not supported by this PyTorch build on the CPU; use bf16 or fp32")
    return Placement(device=resolved, precision=precision,
                     channels_last=resolve_memory_format(memory_format, resolved, layout))


def _cpu_supports_fp16_autocast() -> bool:
    try:
        with torch.autocast(device_type="cpu", dtype=torch.float16):
            pass
        return True
    except RuntimeError:
        return False
