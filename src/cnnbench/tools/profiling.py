"""`cnnbench profile MODEL...`: a model's workload, layer by layer, as a versioned profile file.

The first step of AI Matrix's synthetic-benchmark framework (issue 11): what a network computes (operation
types, convolution geometry, FLOPs, parameters, bytes moved) and how it is distributed, so that a synthetic
network can be made to match a weighted mix of real ones. `load_profile` reads a profile made elsewhere
(of a model that cannot be shared) for the `synth` command.

How layers are found
--------------------
The forward pass runs once on the meta device (shapes only: no memory, no arithmetic) under three observers:
  - a `torch.overrides.TorchFunctionMode` sees every torch function the forward calls at the top level:
    F.conv2d inside Conv2d, F.batch_norm, F.relu, the pools, but also what no module wraps: ResNet's
    `out += identity` (Tensor.__iadd__), DenseNet's `torch.cat(features, 1)`, MobileNetV3's squeeze-excitation
    `scale * input`. Calls made inside such a function (F.batch_norm calling torch.batch_norm) are not seen
    again: the mode is off while its handler runs (PyTorch, "Extending torch Python API", TorchFunctionMode);
  - forward pre/post hooks on every module name the innermost module running (`layer1.0.conv1`; `layer1.0`
    for its residual add);
  - `torch.utils.flop_counter.FlopCounterMode`, the counter `cnnbench models` and registry.forward_flops use,
    read before and after each function: a layer's FLOPs are what that counter counted during its call, so
    the profile's total equals registry.forward_flops x batch by construction.
torch.fx symbolic tracing was the alternative: it needs a traceable forward (no control flow on values, rules
for leaf modules) and sees a graph, not what ran; forward hooks alone miss add and concat, which are no modules.

Operation types (OP_TYPES), from the function called:
  conv, depthwise_conv (groups > 1, one input channel per group: MobileNet's), grouped_conv (other groups > 1:
  ResNeXt's), linear, matmul (matrix products, attention), batchnorm, norm (layer/group/instance norm),
  activation (relu, relu6, hardswish, silu, gelu, sigmoid, ...), maxpool, avgpool, global_pool (adaptive pools
  to 1x1, pools whose window covers the input, a mean over height and width), add and mul (of two tensors; a
  tensor and a number is not a layer), concat, other (padding copies, and any call that did FLOPs the table
  does not know). Views, reshapes and dropout are not layers.

Counting conventions
--------------------
  - flops: multiply-adds x 2 (torch.utils.flop_counter's convention, and `cnnbench models`'): convolutions,
    linear layers and matrix products. Batch norm, activations, pools, add and concat do a few operations per
    value that no published figure counts; their flops are 0 and their cost shows in bytes and in --measure.
  - parameters: of the layer's parameter tensors, each counted at its first use; totals.parameters is the
    model's (count_parameters), the figure torchvision publishes.
  - bytes_read: every floating-point tensor the call takes (inputs, weights, batch norm's running statistics),
    bytes_written: its outputs, each once, at bytes_per_element of --precision (fp32/tf32 4, fp16/bf16 2,
    int8 1): the compulsory traffic of a layer that keeps nothing in cache between layers.
  - arithmetic_intensity: flops / (bytes_read + bytes_written), FLOPs per byte (the roofline model's
    operational intensity, Williams et al. 2009); 0 for layers without multiply-adds.
The model is in eval mode for counting (batch norm's inference form); FLOPs and activation bytes are for the
batch, weights are read once per batch.

The profile file (FORMAT "cnnbench-profile", VERSION 1; JSON, written with "format" first)
------------------------------------------------------------------------------------------
  format, version                "cnnbench-profile", 1; a reader refuses other formats and newer versions
  model, source, spec_file       the model's name; "registered", "torchvision" or "spec"; the spec's path or null
  image_size, batch_size         input height = width, and images per step, the counts are for
  precision, bytes_per_element   the --precision bytes were counted at, and its bytes per value
  created, torch, torchvision, cnnbench   UTC time (ISO 8601) and the versions that made the file
  totals                         flops (the batch), flops_per_image, macs_per_image (flops_per_image / 2),
                                 parameters, bytes_read, bytes_written, arithmetic_intensity, layers (count)
  op_types                       for every type of OP_TYPES: layers, flops, flop_share (of totals.flops; the
                                 shares sum to 1), parameters, bytes_read, bytes_written, arithmetic_intensity
  distributions                  kernel_size, channel_width, spatial_size, arithmetic_intensity: each
                                 {"labels": [...], "weights": [...], "edges": [...] (numeric ones)}, weights the
                                 share of FLOPs in each bin (summing to 1); only layers with FLOPs take part
  layers                         one flat record per layer, in execution order: index, name (module path;
                                 "model" for the root), type, function (the torch function called),
                                 in_channels, out_channels, kernel [h, w], stride [h, w], groups, input_hw
                                 [h, w], output_hw [h, w] (null where a layer has none), flops, parameters,
                                 bytes_read, bytes_written, arithmetic_intensity
  measured                       null, or with --measure: device, precision, memory_format, batch_size,
                                 image_size, warmup_steps, steps, forward and backward (each: seconds_per_step,
                                 labelled_seconds_per_step, coverage = labelled / whole pass, time_share per
                                 op type summing to 1), environment (the env.* fields of a run record)

Distribution bins (a bin "a-b" holds a <= value < b):
  kernel_size            categorical, "KhxKw" of convolutions and pools with FLOPs; a linear layer is "1x1"
                         (a 1x1 convolution); "none" for matrix products and other layers
  channel_width          output channels, CHANNEL_EDGES: <16, 16-32, ..., 1024-2048, >=2048
  spatial_size           input height (a linear layer: 1, or its H of an (N, H, W, C) input), SPATIAL_EDGES:
                         <4, 4-8, ..., 128-256, >=256
  arithmetic_intensity   FLOPs per byte, INTENSITY_EDGES: <1, 1-2, 2-4, ..., 512-1024, >=1024

--measure
---------
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
import datetime as _dt
import gc
import json
import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnbench.core.errors import UsageError, one_line

FORMAT = "cnnbench-profile"
VERSION = 1

OP_TYPES = ("conv", "depthwise_conv", "grouped_conv", "linear", "matmul", "batchnorm", "norm", "activation",
            "maxpool", "avgpool", "global_pool", "add", "mul", "concat", "other")
CONV_TYPES = ("conv", "depthwise_conv", "grouped_conv")
POOL_TYPES = ("maxpool", "avgpool", "global_pool")
BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1}

CHANNEL_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048)
SPATIAL_EDGES = (4, 8, 16, 32, 64, 128, 256)
INTENSITY_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DISTRIBUTIONS = ("kernel_size", "channel_width", "spatial_size", "arithmetic_intensity")

LABEL_PREFIX = "cnnbench/"

_CONVOLUTIONS = {"conv1d", "conv2d", "conv3d"}
_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "silu", "gelu", "sigmoid",
                "sigmoid_", "tanh", "tanh_", "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "prelu", "mish",
                "softplus", "softmax", "log_softmax"}
# torch function name -> operation type; F.max_pool2d's and F.adaptive_max_pool2d's dispatchers carry these names.
_FUNCTION_TYPES = {
    **dict.fromkeys(_ACTIVATIONS, "activation"),
    "linear": "linear",
    **dict.fromkeys(("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "einsum",
                     "scaled_dot_product_attention", "multi_head_attention_forward"), "matmul"),
    "batch_norm": "batchnorm",
    **dict.fromkeys(("layer_norm", "group_norm", "instance_norm", "local_response_norm", "rms_norm"), "norm"),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                     "adaptive_max_pool3d"), "maxpool"),
    **dict.fromkeys(("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                     "adaptive_avg_pool3d"), "avgpool"),
    **dict.fromkeys(("add", "add_", "__add__", "__iadd__", "__radd__"), "add"),
    **dict.fromkeys(("mul", "mul_", "__mul__", "__imul__", "__rmul__"), "mul"),
    **dict.fromkeys(("cat", "concat", "concatenate"), "concat"),
    "pad": "other",
}


# ---------------------------------------------------------------- what a call is


def _tensors(value: object) -> list[torch.Tensor]:
    """The tensors in a call's arguments or result, lists (torch.cat's) and dicts included."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: object = None) -> object:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _ntuple(value: object, n: int) -> list:
    return [value] * n if not isinstance(value, (list, tuple)) else list(value)


def classify(name: str, args: tuple, kwargs: dict) -> str | None:
    """The operation type of a call of torch function `name`, from its arguments alone (the result is not
    needed, so --measure can label the call before it runs); None: not a layer."""
    if name in _CONVOLUTIONS:
        weight, groups = _arg(args, kwargs, 1, "weight"), int(_arg(args, kwargs, 6, "groups", 1) or 1)
        if groups == 1:
            return "conv"
        # Depthwise: each group sees one input channel (MobileNet, Howard et al. 2017); else ResNeXt-style groups.
        return "depthwise_conv" if weight.shape[1] == 1 else "grouped_conv"
    kind = _FUNCTION_TYPES.get(name)
    if kind in ("add", "mul"):
        return kind if len(_tensors((args, kwargs))) >= 2 else None  # x + 1 is arithmetic, not a merge
    if kind in ("maxpool", "avgpool") and _pools_globally(name, args, kwargs):
        return "global_pool"
    if name == "mean" and _means_over_space(args, kwargs):
        return "global_pool"
    return kind


def _pools_globally(name: str, args: tuple, kwargs: dict) -> bool:
    x = _arg(args, kwargs, 0, "input")
    dims = int(name[-2])  # max_pool2d -> 2
    space = list(x.shape[-dims:])
    if name.startswith("adaptive"):
        size = _ntuple(_arg(args, kwargs, 1, "output_size"), dims)
        return all(s == 1 or (s is None and d == 1) for s, d in zip(size, space))
    window = _ntuple(_arg(args, kwargs, 1, "kernel_size"), dims)
    return all(w >= d for w, d in zip(window, space))


def _means_over_space(args: tuple, kwargs: dict) -> bool:
    x, dim = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "dim")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or dim is None:
        return False
    return {d % 4 for d in _ntuple(dim, 1)} == {2, 3}


def _channels(t: torch.Tensor | None) -> int | None:
    return int(t.shape[1]) if t is not None and t.dim() >= 2 else None


def _space(t: torch.Tensor | None) -> list[int] | None:
    return [int(d) for d in t.shape[2:]] if t is not None and t.dim() >= 3 else None


_GEOMETRY_KEYS = ("in_channels", "out_channels", "kernel", "stride", "groups", "input_hw", "output_hw")


def geometry(kind: str, name: str, args: tuple, kwargs: dict, out: object) -> dict:
    """in/out channels, kernel, stride, groups and input/output height x width of one call (None where
    the layer has none), in _GEOMETRY_KEYS' order."""
    first, result = next(iter(_tensors(args)), None), next(iter(_tensors(out)), None)
    shape = {**dict.fromkeys(_GEOMETRY_KEYS), "in_channels": _channels(first), "out_channels": _channels(result),
             "input_hw": _space(first), "output_hw": _space(result)}
    if kind in CONV_TYPES:
        weight = _arg(args, kwargs, 1, "weight")
        dims = weight.dim() - 2
        stride = _ntuple(_arg(args, kwargs, 3, "stride", 1), dims)
        shape.update(kernel=[int(k) for k in weight.shape[2:]], stride=[int(s) for s in stride],
                     groups=int(_arg(args, kwargs, 6, "groups", 1) or 1), out_channels=int(weight.shape[0]))
    elif kind == "linear":
        # weight: (out_features, in_features), whatever the input's rank; a (N, H, W, C) input is a pointwise
        # convolution in channels-last form (ConvNeXt's blocks), so it keeps its height x width.
        weight = _arg(args, kwargs, 1, "weight")
        space = [int(d) for d in first.shape[1:3]] if first is not None and first.dim() == 4 else None
        shape.update(in_channels=int(weight.shape[1]), out_channels=int(weight.shape[0]), input_hw=space, output_hw=space)
    elif kind == "global_pool":
        shape.update(kernel=shape["input_hw"], stride=shape["input_hw"])
    elif kind in POOL_TYPES and not name.startswith("adaptive"):
        dims = int(name[-2])
        window = _ntuple(_arg(args, kwargs, 1, "kernel_size"), dims)
        stride = _arg(args, kwargs, 2, "stride") or window  # None or []: the window (PyTorch's default)
        shape.update(kernel=[int(k) for k in window], stride=[int(s) for s in _ntuple(stride, dims)])
    return shape


# ---------------------------------------------------------------- counting


@contextlib.contextmanager
def _module_names(model: nn.Module):
    """A stack whose top is the name of the innermost module running ("model" outside every submodule)."""
    stack = ["model"]

    def enter(module, inputs, name):
        stack.append(name)

    def leave(module, inputs, output):
        stack.pop()  # returns None: a forward hook that returns a value replaces the module's output

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, i, name=name: enter(m, i, name)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


class _LayerRecorder(TorchFunctionMode):
    """One record per top-level torch function call that is a layer (`classify`), or that did FLOPs."""

    def __init__(self, counter, names: list[str], bytes_per_element: int):
        super().__init__()
        self.counter, self.names, self.bytes_per_element = counter, names, bytes_per_element
        self.layers: list[dict] = []
        self._seen_parameters: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        flops = self.counter.get_total_flops() - before
        name = getattr(func, "__name__", str(func))
        kind = classify(name, args, kwargs)
        if kind is None and flops:
            kind = "other"
        if kind is not None:
            self.layers.append(self._record(kind, name, args, kwargs, out, flops))
        return out

    def _record(self, kind: str, name: str, args: tuple, kwargs: dict, out: object, flops: int) -> dict:
        operands = _tensors((args, kwargs))
        fresh = {id(t): t for t in operands if isinstance(t, nn.Parameter) and id(t) not in self._seen_parameters}
        self._seen_parameters.update(fresh)
        read = _elements(operands) * self.bytes_per_element
        written = _elements(_tensors(out)) * self.bytes_per_element
        return {"index": len(self.layers), "name": self.names[-1], "type": kind, "function": name,
                **geometry(kind, name, args, kwargs, out), "flops": int(flops),
                "parameters": sum(t.numel() for t in fresh.values()), "bytes_read": read, "bytes_written": written,
                "arithmetic_intensity": flops / (read + written) if read + written else 0.0}


def _elements(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors if t.is_floating_point())


def count_layers(model: nn.Module, x: torch.Tensor, bytes_per_element: int) -> tuple[list[dict], int]:
    """(layer records, total FLOPs) of one forward of `model` on `x`, in eval mode without gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.eval()
    with _module_names(model) as names, counter, torch.no_grad():
        recorder = _LayerRecorder(counter, names, bytes_per_element)
        with recorder:
            model(x)
    total = int(counter.get_total_flops())
    missed = total - sum(layer["flops"] for layer in recorder.layers)
    if missed:  # FLOPs outside any call the mode saw (none in torchvision's models); kept so that the totals agree
        recorder.layers.append({"index": len(recorder.layers), "name": "(unattributed)", "type": "other", "function": None,
                                **dict.fromkeys(_GEOMETRY_KEYS), "flops": missed, "parameters": 0, "bytes_read": 0,
                                "bytes_written": 0, "arithmetic_intensity": 0.0})
    return recorder.layers, total


# ---------------------------------------------------------------- the profile


def profile_model(entry, image_size: int, batch_size: int, precision: str = "fp32") -> dict:
    """The profile (format version 1, see the module's docstring) of a registry entry, counted on the meta device."""
    import torchvision

    import cnnbench
    from cnnbench.models.registry import check_image_size, count_parameters

    check_image_size(entry, image_size)
    bytes_per_element = BYTES_PER_ELEMENT[precision]
    try:
        model = _meta_model(entry, image_size)
        # The forward runs inside the meta device's context too, so that a tensor the model makes in its
        # forward lands on the same device as its weights.
        with torch.device("meta"):
            x = torch.empty(batch_size, 3, image_size, image_size)
            layers, total = count_layers(model, x, bytes_per_element)
    except (RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError) as exc:
        raise UsageError(f"{entry.name} cannot be profiled at --image-size {image_size} ({one_line(exc)}); "
                         f"its default is {entry.input_size}") from None
    parameters = count_parameters(model)
    return {
        "format": FORMAT, "version": VERSION, "model": entry.name, "source": _source(entry),
        "spec_file": str(entry.spec_path) if entry.spec_path else None,
        "image_size": image_size, "batch_size": batch_size, "precision": precision,
        "bytes_per_element": bytes_per_element,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cnnbench": cnnbench.__version__,
        "totals": totals(layers, total, parameters, batch_size),
        "op_types": op_types(layers, total),
        "distributions": distributions(layers),
        "layers": layers,
        "measured": None,
    }


def _meta_model(entry, image_size: int) -> nn.Module:
    """The model with its tensors on the meta device. A builder that computes with tensor values (torchvision's
    RegNets round their widths with torch.round(...).tolist()) cannot run there: it builds on the CPU, and its
    tensors then move to meta."""
    try:
        with torch.device("meta"):
            return entry.build(image_size)
    except NotImplementedError:
        return entry.build(image_size).to("meta")


def _source(entry) -> str:
    return entry.notes.get("source") or ("spec" if entry.spec_path else "registered")


def totals(layers: list[dict], flops: int, parameters: int, batch_size: int) -> dict:
    read, written = sum(l["bytes_read"] for l in layers), sum(l["bytes_written"] for l in layers)
    per_image = flops // batch_size  # every FLOP counted scales with the batch
    return {"flops": flops, "flops_per_image": per_image, "macs_per_image": per_image // 2, "parameters": parameters,
            "bytes_read": read, "bytes_written": written,
            "arithmetic_intensity": flops / (read + written) if read + written else 0.0, "layers": len(layers)}


def op_types(layers: list[dict], flops: int) -> dict:
    """Every type of OP_TYPES (zeros where a model has none), so that profiles compare field by field."""
    summary = {}
    for kind in OP_TYPES:
        mine = [l for l in layers if l["type"] == kind]
        kind_flops = sum(l["flops"] for l in mine)
        moved = sum(l["bytes_read"] + l["bytes_written"] for l in mine)
        summary[kind] = {"layers": len(mine), "flops": kind_flops, "flop_share": kind_flops / flops if flops else 0.0,
                         "parameters": sum(l["parameters"] for l in mine),
                         "bytes_read": sum(l["bytes_read"] for l in mine),
                         "bytes_written": sum(l["bytes_written"] for l in mine),
                         "arithmetic_intensity": kind_flops / moved if moved else 0.0}
    return summary


def distributions(layers: list[dict]) -> dict:
    """FLOP-weighted histograms of the layers that do FLOPs (bins in the module's docstring)."""
    weighted = [l for l in layers if l["flops"] > 0]
    return {
        "kernel_size": _categorical(weighted, _kernel_label),
        "channel_width": _binned(weighted, lambda l: l["out_channels"], CHANNEL_EDGES),
        "spatial_size": _binned(weighted, lambda l: (l["input_hw"] or [1 if l["type"] == "linear" else None])[0],
                                SPATIAL_EDGES),
        "arithmetic_intensity": _binned(weighted, lambda l: l["arithmetic_intensity"], INTENSITY_EDGES),
    }


def _kernel_label(layer: dict) -> str:
    if layer["type"] == "linear":
        return "1x1"  # a fully connected layer is a 1x1 convolution
    return "x".join(str(k) for k in layer["kernel"]) if layer["kernel"] else "none"


def _categorical(layers: list[dict], label) -> dict:
    flops = sum(l["flops"] for l in layers)
    weights: dict[str, float] = defaultdict(float)
    for layer in layers:
        weights[label(layer)] += layer["flops"] / flops
    labels = sorted(weights, key=lambda k: (k == "none", math.prod(int(d) for d in k.split("x")) if k != "none" else 0, k))
    return {"labels": labels, "weights": [weights[k] for k in labels]}


def _bin_labels(edges: tuple) -> list[str]:
    return [f"<{edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:])), f">={edges[-1]}"]


def _binned(layers: list[dict], value, edges: tuple) -> dict:
    labels = _bin_labels(edges)
    weights = [0.0] * len(labels)
    unknown = 0.0
    flops = sum(l["flops"] for l in layers)
    for layer in layers:
        v = value(layer)
        if v is None:
            unknown += layer["flops"] / flops
        else:
            weights[sum(v >= edge for edge in edges)] += layer["flops"] / flops
    if unknown:
        labels, weights = [*labels, "none"], [*weights, unknown]
    return {"edges": list(edges), "labels": labels, "weights": weights}


# ---------------------------------------------------------------- --measure


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
        node = next((t.grad_fn for t in _tensors(out) if t.grad_fn is not None), None)
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
        # Kineto (torch.profiler's backend) logs "ERROR: gpuGetDeviceCount failed" on a machine without a GPU;
        # its levels are 0 verbose .. 4 error, 5 USDT (kineto's Logger.h). On CUDA its errors stay visible
        # (CUPTI permissions decide whether kernels are recorded at all).
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
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


# ---------------------------------------------------------------- reading a profile back


def looks_like_profile(path: str | Path) -> bool:
    """Whether a file is meant as a profile (its format tag in the first bytes; profiles are written with
    "format" first), so that a damaged profile is reported as a profile, not as a malformed spec file."""
    try:
        with open(path, "rb") as handle:
            return FORMAT.encode() in handle.read(4096)
    except OSError:
        return False


def load_profile(path: str | Path) -> dict:
    """A profile file, checked against format version 1; anything else is one UsageError line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the profile {path} ({exc.strerror or one_line(exc)})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise UsageError(f"profile {path} is not valid JSON ({one_line(exc)}); write it again with "
                         "`cnnbench profile MODEL --out FILE`") from None
    problem = profile_problem(data)
    if problem:
        raise UsageError(f"profile {path} is not a valid {FORMAT} version {VERSION} file: {problem}")
    return data


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _sums_to_one(values: list) -> bool:
    return abs(sum(values) - 1.0) <= 1e-6


def profile_problem(data: object) -> str | None:
    """What is wrong with a would-be profile, in a few words; None when it is a valid version 1 profile."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    if data.get("format") != FORMAT:
        return f"its format is {data.get('format')!r}, not {FORMAT!r}"
    if not isinstance(data.get("version"), int) or data["version"] < 1:
        return f"its version {data.get('version')!r} is not a positive integer"
    if data["version"] > VERSION:
        return f"its version {data['version']} is newer than this cnnbench reads ({VERSION}); update cnnbench"
    for key, kind in (("model", str), ("precision", str), ("totals", dict), ("op_types", dict),
                      ("distributions", dict), ("layers", list)):
        if not isinstance(data.get(key), kind):
            return f"'{key}' is missing or not a JSON {'string' if kind is str else kind.__name__}"
    for key in ("image_size", "batch_size", "bytes_per_element"):
        if not _number(data.get(key)) or not data[key] >= 1:
            return f"'{key}' must be a number of at least 1, got {data.get(key)!r}"
    return (_totals_problem(data) or _op_types_problem(data) or _layers_problem(data["layers"])
            or _distributions_problem(data["distributions"]) or _measured_problem(data.get("measured")))


def _totals_problem(data: dict) -> str | None:
    for key in ("flops", "parameters", "bytes_read", "bytes_written", "arithmetic_intensity"):
        if not _number(data["totals"].get(key)):
            return f"totals.{key} must be a non-negative number, got {data['totals'].get(key)!r}"
    return None


def _op_types_problem(data: dict) -> str | None:
    unknown = sorted(set(data["op_types"]) - set(OP_TYPES))
    if unknown:
        return f"op_types has unknown operation types {', '.join(unknown)} (known: {', '.join(OP_TYPES)})"
    for kind, figures in data["op_types"].items():
        for key in ("layers", "flops", "flop_share", "parameters", "bytes_read", "bytes_written"):
            if not isinstance(figures, dict) or not _number(figures.get(key)):
                return f"op_types.{kind}.{key} must be a non-negative number"
    shares = [figures["flop_share"] for figures in data["op_types"].values()]
    if data["totals"]["flops"] and not _sums_to_one(shares):
        return f"the op_types' flop_share values sum to {sum(shares):.6g}, not 1"
    return None


def _layers_problem(layers: list) -> str | None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("type") not in OP_TYPES:
            return f"layers[{i}] is not a layer record with a known 'type'"
        for key in ("flops", "parameters", "bytes_read", "bytes_written", "arithmetic_intensity"):
            if not _number(layer.get(key)):
                return f"layers[{i}].{key} must be a non-negative number, got {layer.get(key)!r}"
    return None


def _distributions_problem(found: dict) -> str | None:
    for name in DISTRIBUTIONS:
        histogram = found.get(name)
        if not isinstance(histogram, dict) or not isinstance(histogram.get("labels"), list) \
                or not isinstance(histogram.get("weights"), list) \
                or len(histogram["labels"]) != len(histogram["weights"]):
            return f"distributions.{name} must hold 'labels' and 'weights' lists of one length"
        weights = histogram["weights"]
        if not all(_number(w) for w in weights) or (weights and sum(weights) and not _sums_to_one(weights)):
            return f"distributions.{name}.weights must be non-negative shares summing to 1"
    return None


def _measured_problem(measured: object) -> str | None:
    if measured is None:
        return None
    for direction in ("forward", "backward"):
        part = measured.get(direction) if isinstance(measured, dict) else None
        shares = part.get("time_share") if isinstance(part, dict) else None
        if not isinstance(shares, dict) or not all(_number(v) for v in shares.values()) \
                or (sum(shares.values()) and not _sums_to_one(list(shares.values()))):
            return f"measured.{direction}.time_share must map operation types to shares summing to 1"
    return None


# ---------------------------------------------------------------- the command


def run(cfg) -> int:
    """`cnnbench profile`: every model resolved, every size checked and every saved profile read before any
    work (a mistake in the last argument costs nothing), then each profiled, written and shown."""
    from cnnbench.models.registry import check_image_size, resolve_any
    from cnnbench.core.placement import resolve_placement
    from cnnbench.core.files import ensure_writable

    cfg.validate()
    targets = []  # (argument, registry entry or None, saved profile or None)
    for name in cfg.models:
        if looks_like_profile(name):
            targets.append((name, None, load_profile(name)))
            continue
        entry = resolve_any(name)
        check_image_size(entry, cfg.image_size or entry.input_size)
        ensure_writable(output_path(cfg, entry.name).parent, "--out")
        targets.append((name, entry, None))
    placement = resolve_placement(cfg.device, cfg.precision) if cfg.measure else None
    for name, entry, saved in targets:
        if saved is not None:
            print_summary(saved, name, written=False)
            continue
        path = output_path(cfg, entry.name)
        profile = profile_model(entry, cfg.image_size or entry.input_size, cfg.batch_size, cfg.precision)
        if placement is not None:
            profile["measured"] = measure(entry, profile["image_size"], cfg.batch_size, placement, cfg.warmup, cfg.steps)
        write_profile(profile, path)
        print_summary(profile, path, written=True)
    return 0


def output_path(cfg, model_name: str) -> Path:
    """--out itself for one model; profile_<model>.json in --out when it is a folder or several models are
    profiled; profile_<model>.json here without --out."""
    filename = "profile_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name) + ".json"
    if cfg.out is None:
        return Path(filename)
    out = Path(cfg.out)
    if out.is_dir() or len(cfg.models) > 1:
        return out / filename
    return out


def write_profile(profile: dict, path: Path) -> None:
    from cnnbench.core.files import atomic_write_text

    try:
        atomic_write_text(Path(path), json.dumps(profile, indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write the profile {path} ({exc.strerror or one_line(exc)}); "
                         "give --out a file in a folder you can write to") from None


def print_summary(profile: dict, path: str | Path, written: bool) -> None:
    """The profile in a few lines and one table: per operation type, FLOPs per image and their share,
    parameters, bytes for the batch, arithmetic intensity (and time shares with --measure)."""
    from cnnbench.core.terminal import say, summary_table

    t, batch, size = profile["totals"], profile["batch_size"], profile["image_size"]
    say(f"{profile['model']} ({profile.get('source', '?')}) at {size}x{size}, batch {batch}, {profile['precision']} "
        f"({profile['bytes_per_element']} bytes per value)")
    say(f"  per image: {t['flops'] / batch / 2e9:.2f} GMACs = {t['flops'] / batch / 1e9:.2f} GFLOPs; "
        f"{t['parameters'] / 1e6:.2f} M parameters; {len(profile['layers'])} layers; "
        f"{t['arithmetic_intensity']:.1f} FLOPs/byte at batch {batch}")
    measured = profile.get("measured")
    columns = [("type", "type"), ("layers", "layers"), ("GFLOPs/image", "gflops"), ("FLOP share", "share"),
               ("params M", "params"), ("MB read", "read"), ("MB written", "written"), ("FLOPs/byte", "intensity")]
    if measured:
        columns += [("forward time", "forward"), ("backward time", "backward")]
    rows = [_summary_row(kind, figures, batch, measured) for kind, figures in profile["op_types"].items()
            if figures["layers"] or (measured and _time_shares(measured, kind) != (0, 0))]
    everything = {**t, "layers": len(profile["layers"]), "flop_share": 1.0 if t["flops"] else 0.0}
    rows.append(_summary_row("total", everything, batch, None))
    if measured:
        rows[-1].update(forward="100.0%", backward="100.0%")
    summary_table(f"{profile['model']}: operation types (FLOPs per image; bytes for the batch of {batch})", rows, columns)
    for name in DISTRIBUTIONS:
        histogram = profile["distributions"][name]
        bins = ", ".join(f"{label} {w * 100:.1f}%" for label, w in zip(histogram["labels"], histogram["weights"]) if w)
        say(f"  {name.replace('_', ' ')} (share of FLOPs): {bins or '-'}")
    if measured:
        for direction in ("forward", "backward"):
            figures = measured[direction]
            say(f"  measured {direction} on {measured.get('device', '?')}: {figures.get('seconds_per_step', 0) * 1e3:.1f} ms "
                f"per step, {figures.get('coverage', 0) * 100:.0f}% of it in labelled layers")
    say(f"  profile {'written to' if written else 'read from'} {path}")


def _time_shares(measured: dict, kind: str) -> tuple[float, float]:
    return tuple(measured[d]["time_share"].get(kind, 0) for d in ("forward", "backward"))


def _summary_row(kind: str, figures: dict, batch: int, measured: dict | None) -> dict:
    row = {"type": kind, "layers": str(figures["layers"]), "gflops": f"{figures['flops'] / batch / 1e9:.3f}",
           "share": f"{figures['flop_share'] * 100:.1f}%", "params": f"{figures['parameters'] / 1e6:.2f}",
           "read": f"{figures['bytes_read'] / 1e6:.1f}", "written": f"{figures['bytes_written'] / 1e6:.1f}",
           "intensity": f"{figures.get('arithmetic_intensity', 0.0):.1f}"}
    if measured:
        forward, backward = _time_shares(measured, kind)
        row.update(forward=f"{forward * 100:.1f}%", backward=f"{backward * 100:.1f}%")
    return row
