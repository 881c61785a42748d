"""What a model needs in memory at batch 1, and the out-of-memory advice that follows from it: a
smaller batch only helps when batch 1 fits; otherwise the image or the network must shrink.
"""

from __future__ import annotations

import math
import os
from typing import Callable

from cnnbench.core.errors import OutOfMemory

GIB = 1024**3


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


def limit_advice(limit_bytes: float, reached_bytes: float, image_bytes: float | None) -> str:
    """Advice for a batch-1 run killed at a host memory limit (max-batch's guard), agreeing with what the
    probe showed (issue 23): when one image's activations are a small part of what the process reached,
    the limit is below the process itself (the framework, the model), and only raising it helps."""
    reached = f"it reached {reached_bytes / 2**20:,.0f} MiB resident before it was stopped"
    if image_bytes is not None and image_bytes < 0.5 * max(reached_bytes, 1):
        return (f"batch 1 passed the {limit_bytes / GIB:.4g} GiB memory limit ({reached}; one image needs at least "
                f"{image_bytes / 2**20:.3g} MiB of that): the limit is below what the process needs before its batch (the "
                f"framework and the model), so a smaller batch or image cannot help; raise --memory-limit-gib above "
                f"{math.ceil(reached_bytes / GIB * 100) / 100:.2f}")
    return (f"batch 1 passed the {limit_bytes / GIB:.4g} GiB memory limit ({reached}): raise --memory-limit-gib, "
            f"or reduce --image-size or use a smaller model, not the batch size")
