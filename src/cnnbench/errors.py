"""The errors a user can cause, each with the exit code the command line gives it.

A `UsageError` is a mistake in what was asked (unknown model, impossible option):
the CLI prints its one-line message and exits 2, never with a traceback.
`OutOfMemory` is distinct (exit 3) so that a sweep can record it and go on.
`RecordNotSaved` and `CheckpointNotSaved` are late failures of a run whose figures exist (exit 4):
their one line says where the data went instead, or which option to change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

EXIT_USAGE = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_RUN_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

GIB = 1024**3


class CnnbenchError(Exception):
    exit_code = EXIT_RUN_FAILED


class UsageError(CnnbenchError):
    """What is wrong and what to do, in one line."""

    exit_code = EXIT_USAGE


class RecordNotSaved(CnnbenchError):
    """The run's record could not join the results folder; it went to `fallback` (None: nowhere, the
    record itself is then part of the message, so that it still reaches the terminal)."""

    def __init__(self, records_path: Path, fallback: Path | None, cause: BaseException, record_line: str = ""):
        self.records_path, self.fallback, self.cause = Path(records_path), fallback, cause
        where = (f"saved it to {fallback} instead; once the folder is writable, append it with "
                 f"`cat {fallback} >> {records_path}`" if fallback is not None
                 else f"no fallback file could be written either; the record: {record_line}")
        super().__init__(f"could not add the run's record to {records_path} ({one_line(cause)}); {where}")


class CheckpointNotSaved(CnnbenchError):
    def __init__(self, path: Path, cause: BaseException, option: str = "--log-dir"):
        self.path, self.cause = Path(path), cause
        super().__init__(f"cannot save the checkpoint {path} ({one_line(cause)}); "
                         f"free some space or give {option} a folder you can write to")


class OutOfMemory(CnnbenchError):
    """`hint` replaces the default advice when the caller knows better (see `out_of_memory`)."""

    exit_code = EXIT_OUT_OF_MEMORY

    def __init__(self, batch_size: int, detail: str = "", hint: str | None = None):
        self.batch_size = batch_size
        self.hint = hint or "try a smaller --batch-size"
        message = f"out of memory at batch size {batch_size}"
        if detail:
            message += f" ({detail})"
        super().__init__(f"{message}; {self.hint}")


def one_line(exc: BaseException) -> str:
    """An exception as `Type: first line`, short enough for a one-line message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and for the CPU allocator's failure."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower()
    )


def batch_one_bytes(build: Callable[[], object], image_size: int, *, training: bool, channels: int = 3,
                    bytes_per_value: int = 4) -> int:
    """A lower bound of the memory one image needs: parameters (x3 in training: weights, gradients,
    SGD momentum) plus activations (training keeps every leaf module's output for the backward pass;
    inference holds about two at a time, so twice the largest).

    `build` makes the model; it runs on the meta device, so nothing is allocated and a 100,000 px
    image costs no more than a 64 px one. Outputs of functional ops (residual adds, concatenations)
    are not seen by module hooks: the figure is low, never high, which is what `out_of_memory` needs
    to say with confidence that batch 1 cannot fit.
    """
    import torch

    with torch.device("meta"):
        model = build()
        image = torch.empty(1, channels, image_size, image_size)
    outputs: list[int] = []

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model.train(training)
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    parameters = sum(p.numel() for p in model.parameters()) * 4  # master weights stay fp32 under autocast
    values = image.numel() + (sum(outputs) if training else 2 * max(outputs, default=0))
    return parameters * (3 if training else 1) + values * bytes_per_value


def available_bytes(device) -> int | None:
    """All the memory of the device (not what is free now: the question is whether it could ever fit)."""
    import torch

    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AssertionError):  # no sysconf name, no such GPU
        return None
    return None


def out_of_memory(batch_size: int, *, build: Callable[[], object] | None = None, image_size: int | None = None,
                  device=None, training: bool = True, bytes_per_value: int = 4, detail: str = "") -> OutOfMemory:
    """The OutOfMemory to raise, with advice that can work: a smaller batch only helps when batch 1
    fits; otherwise the image or the network must shrink. Never raises itself (the OOM comes first)."""
    hint = None
    if build is not None and image_size and device is not None:
        try:
            needed = batch_one_bytes(build, image_size, training=training, bytes_per_value=bytes_per_value)
            total = available_bytes(device)
        except Exception:  # an estimate is a courtesy; a model the meta device cannot run gets the plain advice
            needed, total = None, None
        if needed is not None and total is not None and needed > total:
            hint = (f"batch 1 alone needs at least {needed / GIB:.1f} GiB and the {device} has {total / GIB:.1f} GiB "
                    f"in all; reduce --image-size (now {image_size}) or use a smaller model or spec, not the batch size")
    return OutOfMemory(batch_size, detail, hint)
