"""`cnnbench profile --measure`: where a training step's time goes, per operation type.

Training steps (forward, cross-entropy loss, backward; no optimizer step) of the model on the device, at
--precision, channels-last where the benchmark would use it. `warmup` steps run first, outside the profiler
(allocator growth, cuDNN autotuning, oneDNN's first-call work); then `steps` steps under torch.profiler, each
synchronised; Python's garbage collector runs before them and is off during them (as timeit does). The
same function-mode observer labels each layer's call with a record_function span "cnnbench/forward/<type>",
and hooks on the autograd node that call produced (torch.autograd.graph.Node's pre-hook and hook) label its
backward "cnnbench/backward/<type>". A type's time is the sum of its spans: CPU time on a CPU, the time of
the kernels launched inside them on CUDA. Shares are of the labelled time; the time outside any label (the
loss, views, gradient accumulation into .grad, Python) is reported as coverage.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnbench.tools.profile.layers import OP_TYPES, classify, tensors_in

LABEL_PREFIX = "cnnbench/"


class _Labeller(TorchFunctionMode):
    """Wraps each layer's call in a record_function span named for its type, and its backward in another."""

    def __init__(self):
        super().__init__()
        self.nodes: list = []  # autograd nodes already labelled: a node's spans must not overlap another's

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = classify(getattr(func, "__name__", ""), args, kwargs)
        if kind is None:
            return func(*args, **kwargs)
        with torch.profiler.record_function(f"{LABEL_PREFIX}forward/{kind}"):
            out = func(*args, **kwargs)
        node = next((t.grad_fn for t in tensors_in(out) if t.grad_fn is not None), None)
        if node is not None and not any(node is seen for seen in self.nodes):
            self.nodes.append(node)
            _label_backward(node, kind)
        return out


def _label_backward(node, kind: str) -> None:
    """Spans around the autograd node that a layer's result came from: opened by the node's pre-hook,
    closed by its hook, both run on the thread that runs the node (torch.autograd.graph.Node)."""
    spans = []

    def before(grad_outputs):
        span = torch.profiler.record_function(f"{LABEL_PREFIX}backward/{kind}")
        span.__enter__()
        spans.append(span)

    def after(grad_inputs, grad_outputs):
        if spans:
            spans.pop().__exit__(None, None, None)

    node.register_prehook(before)
    node.register_hook(after)


def _step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, placement, labelled: bool) -> tuple[float, float]:
    """One training step without the optimizer: (forward seconds, backward seconds), each synchronised."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    placement.synchronize()
    start = time.perf_counter()
    with placement.autocast(), (_Labeller() if labelled else contextlib.nullcontext()):
        out = model(x)
    out = out[0] if isinstance(out, tuple) else out  # inception_v3 trains with (logits, auxiliary logits)
    loss = F.cross_entropy(out.float(), labels)
    placement.synchronize()
    middle = time.perf_counter()
    loss.backward()
    placement.synchronize()
    return middle - start, time.perf_counter() - middle


def measure(entry, image_size: int, batch_size: int, placement, warmup: int, steps: int) -> dict:
    """Time share per operation type of `steps` profiled training steps on the placement's device."""
    from cnnbench.core import environment
    from cnnbench.core.errors import OutOfMemory, is_out_of_memory

    torch.manual_seed(0)
    placement.apply_global_settings()
    try:
        model = entry.build(image_size).to(placement.device, memory_format=placement.memory_format).train()
        x = torch.randn(batch_size, 3, image_size, image_size, device=placement.device)
        x = x.contiguous(memory_format=placement.memory_format)
        labels = torch.randint(0, entry.num_classes, (batch_size,), device=placement.device)
        for _ in range(warmup):
            _step(model, x, labels, placement, labelled=False)
        walls, events = _profiled_steps(model, x, labels, placement, steps)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise OutOfMemory(batch_size, f"{entry.name} at {image_size} px, --measure") from None
        raise
    labelled = labelled_seconds(events, placement.device.type)
    if not sum(labelled["forward"].values()):
        from cnnbench.core.terminal import warn

        warn(f"torch.profiler recorded no time inside the layers on {placement.device} (on CUDA: is CUPTI "
             "allowed to profile? see NVIDIA's ERR_NVGPUCTRPERM); the time shares are empty")
    return {"device": str(placement.device), "precision": placement.precision,
            "memory_format": placement.memory_format_name, "batch_size": batch_size, "image_size": image_size,
            "warmup_steps": warmup, "steps": steps,
            "forward": _pass_figures(labelled["forward"], [w[0] for w in walls]),
            "backward": _pass_figures(labelled["backward"], [w[1] for w in walls]),
            "environment": environment.collect()}


def _profiled_steps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, placement, steps: int):
    """(per-step (forward, backward) seconds, the profiler's events) of `steps` labelled steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if placement.device.type == "cuda" else [])
    if placement.device.type == "cpu":
        # Kineto (torch.profiler's backend) logs "ERROR: gpuGetDeviceCount failed" on a machine without a GPU,
        # and "USDT: ... profiler_start" / "profiler_stop" around every profile (issue 23). Its levels are
        # 0 verbose, 1 info, 2 warning, 3 stage, 4 error, 5 USDT, 6 the count (kineto's Logger.h): 6 prints
        # nothing (tried: 5 still prints the two USDT lines). On CUDA its errors stay visible (CUPTI permissions
        # decide whether kernels are recorded at all).
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    # A garbage collection inside a profiled step is Python's time, not the model's: after the counting pass
    # (hundreds of thousands of objects) a full collection cost 50-60 ms of a 40 ms forward of
    # mobilenet_v3_small here, every step. Collect now and keep the collector off while profiling, as
    # Python's timeit does.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with profile(activities=activities) as prof:
            walls = [_step(model, x, labels, placement, labelled=True) for _ in range(steps)]
    finally:
        if was_enabled:
            gc.enable()
    return walls, prof.events()


def labelled_seconds(events, device_type: str) -> dict[str, dict[str, float]]:
    """{"forward"|"backward": {op type: seconds}} summed over the profiler's cnnbench/ spans. Only the spans'
    CPU-side events count: on CUDA the profiler also records each span on the GPU's timeline under the same name."""
    from torch.autograd import DeviceType

    seconds = {"forward": dict.fromkeys(OP_TYPES, 0.0), "backward": dict.fromkeys(OP_TYPES, 0.0)}
    for event in events:
        if event.device_type != DeviceType.CPU or not event.name.startswith(LABEL_PREFIX):
            continue
        direction, kind = event.name[len(LABEL_PREFIX):].split("/")
        micros = event.device_time_total if device_type == "cuda" else event.cpu_time_total
        seconds[direction][kind] += micros / 1e6
    return seconds


def _pass_figures(seconds: dict[str, float], walls: list[float]) -> dict:
    labelled, wall = sum(seconds.values()), sum(walls)
    return {"seconds_per_step": wall / len(walls), "labelled_seconds_per_step": labelled / len(walls),
            "coverage": labelled / wall if wall else 0.0,
            "time_share": {k: (v / labelled if labelled else 0.0) for k, v in seconds.items()}}
