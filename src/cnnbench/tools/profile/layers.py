"""What a model computes, layer by layer: the counting half of `cnnbench profile`.

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

Distribution bins (a bin "a-b" holds a <= value < b):
  kernel_size            categorical, "KhxKw" of convolutions and pools with FLOPs; a linear layer is "1x1"
                         (a 1x1 convolution); "none" for matrix products and other layers
  channel_width          output channels, CHANNEL_EDGES: <16, 16-32, ..., 1024-2048, >=2048
  spatial_size           input height (a linear layer: 1, or its H of an (N, H, W, C) input), SPATIAL_EDGES:
                         <4, 4-8, ..., 128-256, >=256
  arithmetic_intensity   FLOPs per byte, INTENSITY_EDGES: <1, 1-2, 2-4, ..., 512-1024, >=1024
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

OP_TYPES = ("conv", "depthwise_conv", "grouped_conv", "linear", "matmul", "batchnorm", "norm", "activation",
            "maxpool", "avgpool", "global_pool", "add", "mul", "concat", "other")
CONV_TYPES = ("conv", "depthwise_conv", "grouped_conv")
POOL_TYPES = ("maxpool", "avgpool", "global_pool")
BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1}

CHANNEL_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048)
SPATIAL_EDGES = (4, 8, 16, 32, 64, 128, 256)
INTENSITY_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DISTRIBUTIONS = ("kernel_size", "channel_width", "spatial_size", "arithmetic_intensity")

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


def tensors_in(value: object) -> list[torch.Tensor]:
    """The tensors in a call's arguments or result, lists (torch.cat's) and dicts included."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
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
        return kind if len(tensors_in((args, kwargs))) >= 2 else None  # x + 1 is arithmetic, not a merge
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
    first, result = next(iter(tensors_in(args)), None), next(iter(tensors_in(out)), None)
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
        # Dataflow (issue 25, motifs.py): which layer wrote each tensor, by identity. Every tensor seen is kept
        # alive until the forward ends, so that an id is never reused for another tensor; on the meta device
        # that costs no memory.
        self._producer: dict[int, int] = {}
        self._alive: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        flops = self.counter.get_total_flops() - before
        name = getattr(func, "__name__", str(func))
        kind = classify(name, args, kwargs)
        if kind is None and flops:
            kind = "other"
        sources = self._sources((args, kwargs))
        if kind is not None:
            record = self._record(kind, name, args, kwargs, out, flops)
            self.layers.append({**record, "inputs": sources})
            self._mark(out, record["index"])
        elif len(set(sources)) == 1:  # a view, reshape, dropout or copy passes its one input's writer on
            self._mark(out, sources[0])
        return out

    def _sources(self, value: object) -> list[int]:
        """The layers that wrote a call's tensor arguments, in argument order (parameters and the input have none)."""
        return [self._producer[id(t)] for t in tensors_in(value) if id(t) in self._producer]

    def _mark(self, out: object, index: int) -> None:
        for t in tensors_in(out):
            self._producer[id(t)] = index  # an in-place result (out += identity, relu_) is the same tensor: rewritten
            self._alive.append(t)

    def _record(self, kind: str, name: str, args: tuple, kwargs: dict, out: object, flops: int) -> dict:
        operands = tensors_in((args, kwargs))
        fresh = {id(t): t for t in operands if isinstance(t, nn.Parameter) and id(t) not in self._seen_parameters}
        self._seen_parameters.update(fresh)
        read = _elements(operands) * self.bytes_per_element
        written = _elements(tensors_in(out)) * self.bytes_per_element
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
                                "bytes_written": 0, "arithmetic_intensity": 0.0, "inputs": []})
    return recorder.layers, total


# ---------------------------------------------------------------- the summaries


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
