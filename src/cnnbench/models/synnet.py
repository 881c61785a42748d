"""Networks described by a JSON spec file: AI Matrix's synNet and any network of the same form.

The format (docs/spec-files.md "Spec files"; JSON Schema in specs/spec.schema.json): `input`, `conv_defaults`,
`groups` of `layers`, `head`. A layer is a conv, a max/avg/global pool, a batch norm or an activation (on their
own before a conv: pre-activation), a gate (squeeze-excitation: the input scaled per channel), or a block: residual (body + identity or projection shortcut, added), dense (DenseNet: each repetition's
output concatenated to its input) or branches (Inception: the branches' outputs concatenated). Blocks
nest. A spec of the original format (conv and maxpool layers only) builds exactly the network it built
before the extension: same modules in the same order, so the same weights for the same seed.

Conventions (TensorFlow's, since the original was TF 1.10, and stated in synNet.json itself):
- 'same' padding is TensorFlow's: output ceil(size / stride), total padding max((out-1)*stride + k - size, 0)
  per axis, the odd pixel at the bottom/right (an explicit ZeroPad2d, so even kernels need no hidden
  padded copy). At stride 1 that is k-1 whatever the size; at larger strides it depends on the size, so
  it is computed for the size the network is built for;
- no conv bias unless asked; BatchNorm with TF's epsilon and decay (TF decay 0.9 is PyTorch momentum 0.1); ReLU;
- pools are 2x2 stride 2 'valid' unless the layer says otherwise; the head flattens and applies one linear layer;
- Glorot-uniform (Xavier-uniform) initialisation, TF's default for conv and dense kernels.

Checking, all before anything is built: `normalize_spec` checks types and values and writes every
default out (its result is the parsed form; `dump_spec` writes it back as JSON, which loads and builds
the same network); `validate_spec` then follows the shapes through the network at the input size
(residual shapes, branch sizes, channels that groups divide). Each failure is one line naming the
group and layer (inside blocks, the body or branch and its layer) and what to fix.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.core.terminal import warn

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "none": None}
# What each layer type takes besides "type"; "name" and "note" are allowed everywhere and only document.
LAYER_FIELDS = {
    "conv": ("filters", "kernel", "stride", "padding", "groups", "batch_norm", "activation", "bias"),
    "maxpool": ("window", "stride", "padding"),
    "avgpool": ("window", "stride", "padding"),
    "globalpool": ("pool",),
    "batch_norm": (),
    "activation": ("function",),
    "residual": ("body", "projection", "activation"),
    "dense": ("repeat", "growth_rate", "body"),
    "branches": ("branches",),
    "gate": ("reduction", "activation", "function"),
}
# A gate's sigmoid: the logistic function (Hu et al. 2018's squeeze-excitation, EfficientNet) or its piecewise-linear
# form relu6(x + 3) / 6 (MobileNetV3, Howard et al. 2019).
GATE_FUNCTIONS = {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid}
NOTE_KEYS = ("name", "note")
PROJECTION_FIELDS = ("stride", "batch_norm", "bias")
BATCH_NORM_FIELDS = ("epsilon", "momentum_tf", "affine")
# The original's settings, used when a spec gives none (TF decay 0.9; epsilon as synNet.json states it).
DEFAULT_BATCH_NORM = {"epsilon": 1e-4, "momentum_tf": 0.9, "affine": True}

Shape = tuple[int, int, int]  # channels, height, width


_WARNED: set[str] = set()  # oversized-kernel lines already shown by this process (a spec is validated more than once)


class SpecError(UsageError):
    pass


class _TooSmall(SpecError):
    """A window larger than the pixels that reach it: the input is too small for the network."""


def load_spec(path: Path) -> dict:
    """The spec file, checked and normalised (every default written out)."""
    try:
        spec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix the file") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    return validate_spec(spec, str(path))


def validate_spec(spec: object, source: str = "spec") -> dict:
    """Check the whole spec before anything is built (types, then shapes at its input size); returns its
    normalised form. The message names the offending group and layer."""
    spec = normalize_spec(spec, source)
    builder = _Builder(spec, make=False)
    builder.network(spec["input"]["height"], spec["input"]["width"], source)
    builder.warn_oversized()
    return spec


def dump_spec(spec: dict) -> str:
    """The spec as JSON with every default written out; loading it builds the same network."""
    return json.dumps(validate_spec(spec), indent=1) + "\n"


def normalize_spec(spec: object, source: str = "spec") -> dict:
    """The parsed form of a spec: types and values checked, every default filled in, keys that only
    document (about, notes, training) kept as they are. Normalising twice changes nothing."""
    if not isinstance(spec, dict):
        raise SpecError(f"{source}: the top level must be a JSON object with 'input', 'groups' and 'head'")
    inp = spec.get("input")
    if not isinstance(inp, dict) or not all(_is_int(inp.get(k)) and inp[k] > 0 for k in ("height", "width", "channels")):
        raise SpecError(f"{source}: 'input' needs positive integers 'height', 'width' and 'channels'")
    if "name" in spec:
        _check_name(spec["name"], source)
    defaults = _conv_defaults(spec.get("conv_defaults", {}), source)
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        raise SpecError(f"{source}: 'groups' must be a non-empty list of groups")
    out = {**spec, "conv_defaults": defaults,
           "groups": [_group(g, group, defaults, source) for g, group in enumerate(groups)],
           "head": _head(spec.get("head", {}), source)}
    return copy.deepcopy(out)


# A spec's name becomes part of file and folder names (the default log folder log_<name>, the checkpoint, tables),
# so it is checked as a file name: a name such as "../../x" or "a/b" wrote outside the working folder or nested
# folders (issue 23). Letters, digits, '.', '_', '-'; no leading dot (a hidden file) and no '..'. The schema's
# pattern (specs/spec.schema.json) says the same.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _check_name(name: object, source: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise SpecError(f"{source}: 'name' {name!r} is not a file name; use letters, digits, '.', '_' and '-' "
                        "(no '/', no '..', no leading '.'): it names the run's folders and files")


def _conv_defaults(value: object, source: str) -> dict:
    """What a conv layer gets for the keys it leaves out; synNet.json states the original's."""
    where = f"{source}: conv_defaults"
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be an object, got {_got(value)}")
    bn = value.get("batch_norm", True)
    if isinstance(bn, dict):
        unknown = sorted(set(bn) - set(BATCH_NORM_FIELDS))
        if unknown:  # "momentum" would be PyTorch's, the opposite of TF's decay: refuse rather than guess
            raise SpecError(f"{where}.batch_norm: unknown key {unknown[0]!r}; it takes {', '.join(BATCH_NORM_FIELDS)}")
        bn = {**DEFAULT_BATCH_NORM, **bn}
        if not (_is_number(bn["epsilon"]) and bn["epsilon"] > 0):
            raise SpecError(f"{where}.batch_norm: 'epsilon' must be a positive number, got {_got(bn['epsilon'])}")
        if not (_is_number(bn["momentum_tf"]) and 0 <= bn["momentum_tf"] <= 1):
            raise SpecError(f"{where}.batch_norm: 'momentum_tf' (TF's decay) must be a number from 0 to 1, got {_got(bn['momentum_tf'])}")
        bn = {"epsilon": float(bn["epsilon"]), "momentum_tf": float(bn["momentum_tf"]),
              "affine": _bool(bn["affine"], f"{where}.batch_norm: 'affine'")}
    elif bn is True:
        bn = dict(DEFAULT_BATCH_NORM)
    elif bn is not False:
        raise SpecError(f"{where}: 'batch_norm' must be an object of settings, true or false, got {_got(bn)}")
    return {**value, "batch_norm": bn,
            "stride": _pair(value.get("stride", [1, 1]), f"{where}: 'stride'"),
            "padding": _padding(value.get("padding", "same"), f"{where}: 'padding'", ("same", "valid")),
            "activation": _choice(value.get("activation", "relu"), ACTIVATIONS, f"{where}: 'activation'"),
            "bias": _bool(value.get("bias", False), f"{where}: 'bias'")}


def _group(g: int, group: object, defaults: dict, source: str) -> dict:
    if not isinstance(group, dict):
        raise SpecError(f"{source}: group {g + 1} must be an object with 'name' and 'layers'")
    name = group.get("name", f"group {g + 1}")
    if not isinstance(name, str):
        raise SpecError(f"{source}: group {g + 1}: 'name' must be a string, got {_got(name)}")
    layers = group.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{source}: {name} needs a non-empty 'layers' list")
    return {**group, "name": name, "layers": _layer_list(layers, defaults, f"{source}: {name}")}


def _head(head: object, source: str) -> dict:
    fc = head.get("fully_connected", {}) if isinstance(head, dict) else None
    if not isinstance(fc, dict) or not (_is_int(fc.get("outputs", 1000)) and fc.get("outputs", 1000) > 0):
        raise SpecError(f"{source}: head.fully_connected.outputs must be a positive integer")
    bias = _bool(fc.get("bias", True), f"{source}: head.fully_connected.bias")
    return {**head, "fully_connected": {**fc, "outputs": fc.get("outputs", 1000), "bias": bias}}


def _layer_list(value: object, defaults: dict, prefix: str, allow_empty: bool = False) -> list[dict]:
    """The layers of a group, body or branch; `prefix` names it, its layers are '<prefix> layer N'."""
    if not isinstance(value, list) or not (value or allow_empty):
        raise SpecError(f"{prefix} must be a {'' if allow_empty else 'non-empty '}list of layers, got {_got(value)}")
    return [_layer(layer, defaults, f"{prefix} layer {i + 1}") for i, layer in enumerate(value)]


def _layer(layer: object, defaults: dict, where: str) -> dict:
    if not isinstance(layer, dict):
        raise SpecError(f"{where} must be an object with a 'type'")
    kind = layer.get("type")
    if not isinstance(kind, str) or kind not in LAYER_FIELDS:
        raise SpecError(f"{where}: unknown layer type {kind!r}; use one of {', '.join(LAYER_FIELDS)}")
    where = f"{where} ({kind})"
    # Unknown keys are refused: a misspelt "stirde" would otherwise build a different network silently.
    unknown = sorted(set(layer) - {"type", *LAYER_FIELDS[kind], *NOTE_KEYS})
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; a {kind} layer takes {', '.join(LAYER_FIELDS[kind]) or 'only type'}")
    notes = {key: layer[key] for key in NOTE_KEYS if key in layer}
    return {"type": kind, **_NORMALIZERS[kind](layer, defaults, where), **notes}


def _conv(layer: dict, d: dict, where: str) -> dict:
    groups = layer.get("groups", 1)
    if groups != "depthwise" and not (_is_int(groups) and groups > 0):
        raise SpecError(f"{where}: 'groups' must be a positive integer or \"depthwise\", got {_got(groups)}")
    return {
        "filters": _int(layer.get("filters"), f"{where}: 'filters'"),
        "kernel": _pair(layer.get("kernel"), f"{where}: 'kernel'"),
        "stride": _pair(layer.get("stride", d["stride"]), f"{where}: 'stride'"),
        "padding": _padding(layer.get("padding", d["padding"]), f"{where}: 'padding'", ("same", "valid")),
        "groups": groups,
        "batch_norm": _bool(layer.get("batch_norm", d["batch_norm"] is not False), f"{where}: 'batch_norm'"),
        "activation": _choice(layer.get("activation", d["activation"]), ACTIVATIONS, f"{where}: 'activation'"),
        "bias": _bool(layer.get("bias", d["bias"]), f"{where}: 'bias'"),
    }


def _pool(layer: dict, d: dict, where: str) -> dict:
    window = _pair(layer.get("window", [2, 2]), f"{where}: 'window'")
    padding = _padding(layer.get("padding", "valid"), f"{where}: 'padding'", ("valid",))
    if padding != "valid" and (padding[0] > window[0] // 2 or padding[1] > window[1] // 2):
        raise SpecError(f"{where}: 'padding' {padding} is more than half the window {window}; PyTorch pads a pool by at most half its window")
    return {"window": window, "stride": _pair(layer.get("stride", [2, 2]), f"{where}: 'stride'"), "padding": padding}


def _residual(layer: dict, d: dict, where: str) -> dict:
    body = _layer_list(layer.get("body"), d, f"{where} body")
    projection = layer.get("projection", False)
    if projection is True:
        projection = {}
    if isinstance(projection, dict):
        unknown = sorted(set(projection) - set(PROJECTION_FIELDS))
        if unknown:
            raise SpecError(f"{where}: unknown projection key {unknown[0]!r}; it takes {', '.join(PROJECTION_FIELDS)}")
        projection = {
            "stride": _pair(projection.get("stride", _stride_product(body)), f"{where}: projection 'stride'"),
            "batch_norm": _bool(projection.get("batch_norm", d["batch_norm"] is not False), f"{where}: projection 'batch_norm'"),
            "bias": _bool(projection.get("bias", d["bias"]), f"{where}: projection 'bias'"),
        }
    elif projection is not False:
        raise SpecError(f"{where}: 'projection' must be true, false or an object with {', '.join(PROJECTION_FIELDS)}, got {_got(projection)}")
    return {"body": body, "projection": projection,
            "activation": _choice(layer.get("activation", "none"), ACTIVATIONS, f"{where}: 'activation'")}


def _gate(layer: dict, d: dict, where: str) -> dict:
    reduction = layer.get("reduction", 4)
    if not (_is_number(reduction) and 1 <= reduction < float("inf")):
        raise SpecError(f"{where}: 'reduction' (channels / squeezed channels) must be a number of at least 1, got {_got(reduction)}")
    return {"reduction": reduction,
            "activation": _choice(layer.get("activation", "relu"), ACTIVATIONS, f"{where}: 'activation'"),
            "function": _choice(layer.get("function", "sigmoid"), GATE_FUNCTIONS, f"{where}: 'function'")}


def squeezed(channels: int, reduction: float) -> int:
    """A gate's squeezed channels: channels / reduction, rounded, at least 1."""
    return max(1, round(channels / reduction))


def _stride_product(layers: list[dict]) -> list[int]:
    """A body's total stride per axis: the projection's default, exact when the body pads 'same'."""
    total = [1, 1]
    for layer in layers:
        if layer["type"] in ("conv", "maxpool", "avgpool"):
            stride = layer["stride"]
        elif layer["type"] == "residual":
            stride = _stride_product(layer["body"])
        elif layer["type"] == "branches":  # every branch ends at the same size; the first one says which
            stride = _stride_product(layer["branches"][0])
        else:
            stride = [1, 1]
        total = [total[0] * stride[0], total[1] * stride[1]]
    return total


def _dense(layer: dict, d: dict, where: str) -> dict:
    growth = _int(layer.get("growth_rate"), f"{where}: 'growth_rate'")
    body = layer.get("body", [{"type": "conv", "filters": growth, "kernel": [3, 3]}])
    return {"repeat": _int(layer.get("repeat"), f"{where}: 'repeat'"), "growth_rate": growth,
            "body": _layer_list(body, d, f"{where} body")}


def _branches(layer: dict, d: dict, where: str) -> dict:
    branches = layer.get("branches")
    if not isinstance(branches, list) or not branches:
        raise SpecError(f"{where}: 'branches' must be a non-empty list of branches, each a list of layers ([] passes the input through)")
    return {"branches": [_layer_list(b, d, f"{where} branch {i + 1}", allow_empty=True) for i, b in enumerate(branches)]}


_NORMALIZERS = {
    "conv": _conv,
    "maxpool": _pool,
    "avgpool": _pool,
    "globalpool": lambda layer, d, where: {"pool": _choice(layer.get("pool", "avg"), ("avg", "max"), f"{where}: 'pool'")},
    "batch_norm": lambda layer, d, where: {},
    "activation": lambda layer, d, where: {"function": _choice(layer.get("function", "relu"), ACTIVATIONS, f"{where}: 'function'")},
    "residual": _residual,
    "dense": _dense,
    "branches": _branches,
    "gate": _gate,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is not 1 here


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _got(value: object) -> str:
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: object, what: str) -> int:
    if not (_is_int(value) and value > 0):
        raise SpecError(f"{what} must be a positive integer, got {_got(value)}")
    return value


def _pair(value: object, what: str, minimum: int = 1) -> list[int]:
    pair = [value, value] if _is_int(value) else value
    if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(v) and v >= minimum for v in pair)):
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise SpecError(f"{what} must be {kind} or a list of two, got {_got(value)}")
    return list(pair)


def _padding(value: object, what: str, words: tuple[str, ...]) -> str | list[int]:
    if isinstance(value, str) and value in words:
        return value
    try:
        return _pair(value, what, minimum=0)
    except SpecError:
        raise SpecError(f"{what} must be {' or '.join(map(repr, words))}, or the pixels added on each side "
                        f"(an integer or [rows, columns]), got {_got(value)}") from None


def _choice(value: object, choices, what: str) -> str:
    if not (isinstance(value, str) and value in choices):
        raise SpecError(f"{what} must be one of {', '.join(map(repr, choices))}, got {_got(value)}")
    return value


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, got {_got(value)}")
    return value


class Residual(nn.Module):
    """body(x) + shortcut(x) (an empty shortcut is the identity), then the block's activation."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, activation: nn.Module):
        super().__init__()
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class Dense(nn.Module):
    """DenseNet's block: each body sees everything before it and its output joins it along channels."""

    def __init__(self, bodies: list[nn.Sequential]):
        super().__init__()
        self.bodies = nn.ModuleList(bodies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for body in self.bodies:
            x = torch.cat([x, body(x)], dim=1)
        return x


class Branches(nn.Module):
    """Inception's block: every branch sees the input; their outputs are concatenated along channels."""

    def __init__(self, branches: list[nn.Sequential]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Gate(nn.Module):
    """A multiplicative gate (squeeze-excitation, Hu et al. 2018; torchvision's SqueezeExcitation): x times
    function(expand(activation(reduce(global average pool(x))))), reduce and expand 1x1 convs with bias."""

    def __init__(self, channels: int, squeeze: int, activation: str, function: str):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.activation = ACTIVATIONS[activation]() if activation != "none" else nn.Identity()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.function = GATE_FUNCTIONS[function]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(self.expand(self.activation(self.reduce(self.pool(x))))) * x


class _Builder:
    """Follows the shapes through a normalised spec, checking that every layer fits what reaches it;
    with `make`, also builds the modules (in spec order, so a seed gives the same weights)."""

    def __init__(self, spec: dict, make: bool):
        self.spec, self.make = spec, make
        self.oversized: list[str] = []  # conv layers whose 'same' kernel is larger than their input
        bn = spec["conv_defaults"]["batch_norm"]
        self.bn = bn if isinstance(bn, dict) else DEFAULT_BATCH_NORM
        self.steps = {"conv": self.conv, "maxpool": self.pool, "avgpool": self.pool, "globalpool": self.globalpool,
                      "batch_norm": self.batch_norm, "activation": self.activation, "residual": self.residual,
                      "dense": self.dense, "branches": self.branches, "gate": self.gate}

    def network(self, height: int, width: int, source: str) -> tuple[list[nn.Module], Shape]:
        shape, modules = (self.spec["input"]["channels"], height, width), []
        for group in self.spec["groups"]:
            made, shape = self.sequence(group["layers"], shape, f"{source}: {group['name']}")
            modules += made
        return modules, shape

    def warn_oversized(self) -> None:
        """One line for the 'same' kernels far larger than their input (issue 23: a 101-pixel kernel on a 32-pixel
        input trained silently): more than twice the input plus one along an axis, so that the taps beyond the
        input's size on either side of the centre never meet a pixel at any output position. The bound leaves out
        the ordinary small-input cases (a 3x3 kernel on a 1x1 or 2x2 map, which ResNet-like specs meet at 32-64 px).
        A warning, not a refusal: the network is still well defined, only wasteful."""
        if not self.oversized:
            return
        more = f" (and {len(self.oversized) - 1} more such layers)" if len(self.oversized) > 1 else ""
        line = (f"{self.oversized[0]}{more} is more than twice the size of its input with 'same' padding, so most "
                "of each window is zero padding; use a smaller kernel or a larger input")
        key = line.split(": ", 1)[-1]  # the same layer named from another source ("spec", the file's path)
        if key not in _WARNED:
            _WARNED.add(key)
            warn(line)

    def sequence(self, layers: list[dict], shape: Shape, prefix: str) -> tuple[list[nn.Module], Shape]:
        modules = []
        for i, layer in enumerate(layers):
            made, shape = self.steps[layer["type"]](layer, shape, f"{prefix} layer {i + 1} ({layer['type']})")
            modules += made
        return modules, shape

    def conv(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        c, h, w = shape
        filters, (kh, kw), (sh, sw), padding = layer["filters"], layer["kernel"], layer["stride"], layer["padding"]
        groups = c if layer["groups"] == "depthwise" else layer["groups"]
        if layer["groups"] == "depthwise" and filters % c:
            raise SpecError(f"{where}: a depthwise conv's 'filters' ({filters}) must be a multiple of its {c} input channels")
        if c % groups or filters % groups:
            raise SpecError(f"{where}: 'groups' {groups} must divide both its {filters} filters and its {c} input channels")
        pads, explicit = [0, 0, 0, 0], (0, 0)  # ZeroPad2d's (left, right, top, bottom); Conv2d's own (rows, columns)
        if padding == "same":
            pads = [*_same_pads(w, kw, sw), *_same_pads(h, kh, sh)]
            if kh > 2 * h + 1 or kw > 2 * w + 1:  # see warn_oversized
                self.oversized.append(f"{where}: a {kh}x{kw} kernel on a {h}x{w} input")
        elif padding != "valid":
            explicit = tuple(padding)
        out = (filters, _out(h + pads[2] + pads[3] + 2 * explicit[0], kh, sh, where),
               _out(w + pads[0] + pads[1] + 2 * explicit[1], kw, sw, where))
        if not self.make:
            return [], out
        modules = [nn.ZeroPad2d(tuple(pads))] if padding == "same" else []
        modules.append(nn.Conv2d(c, filters, (kh, kw), stride=(sh, sw), padding=explicit, groups=groups, bias=layer["bias"]))
        if layer["batch_norm"]:
            modules.append(self._batch_norm(filters))
        if layer["activation"] != "none":
            modules.append(ACTIVATIONS[layer["activation"]](inplace=True))  # acts on the conv's own output
        return modules, out

    def pool(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        c, h, w = shape
        (kh, kw), (sh, sw) = layer["window"], layer["stride"]
        ph, pw = (0, 0) if layer["padding"] == "valid" else layer["padding"]
        out = (c, _out(h + 2 * ph, kh, sh, where), _out(w + 2 * pw, kw, sw, where))
        cls = nn.MaxPool2d if layer["type"] == "maxpool" else nn.AvgPool2d  # AvgPool2d counts padded zeros
        return ([cls((kh, kw), (sh, sw), (ph, pw))] if self.make else []), out

    def globalpool(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        cls = nn.AdaptiveAvgPool2d if layer["pool"] == "avg" else nn.AdaptiveMaxPool2d
        return ([cls(1)] if self.make else []), (shape[0], 1, 1)

    def batch_norm(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        return ([self._batch_norm(shape[0])] if self.make else []), shape

    def activation(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        # Not in place: first in a block, it would overwrite the input the shortcut or the concatenation still needs.
        made = self.make and layer["function"] != "none"
        return ([ACTIVATIONS[layer["function"]]()] if made else []), shape

    def gate(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        squeeze = squeezed(shape[0], layer["reduction"])
        return ([Gate(shape[0], squeeze, layer["activation"], layer["function"])] if self.make else []), shape

    def _batch_norm(self, channels: int) -> nn.BatchNorm2d:
        # TF: moving = decay * moving + (1 - decay) * batch; PyTorch: moving = (1 - m) * moving + m * batch.
        return nn.BatchNorm2d(channels, eps=self.bn["epsilon"], momentum=1.0 - self.bn["momentum_tf"], affine=self.bn["affine"])

    def residual(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        body, out = self.sequence(layer["body"], shape, f"{where} body")
        projection, shortcut = layer["projection"], []
        if projection is False and out != shape:
            raise SpecError(f"{where}: the body turns {_show(shape)} into {_show(out)} (channels x height x width) but the "
                            'shortcut is the identity; add "projection": true (a 1x1 conv with the body\'s stride) or keep the shape')
        if projection is not False:
            shortcut, short = self.conv(projection_conv(projection, out[0]), shape, f"{where} projection")
            if short != out:
                raise SpecError(f"{where}: the projection (1x1, stride {projection['stride']}) gives {_show(short)} but the body "
                                f"gives {_show(out)} (channels x height x width); set the projection's 'stride'")
        if not self.make:
            return [], out
        post = ACTIVATIONS[layer["activation"]](inplace=True) if layer["activation"] != "none" else nn.Identity()
        return [Residual(nn.Sequential(*body), nn.Sequential(*shortcut), post)], out

    def dense(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        bodies, growth = [], layer["growth_rate"]
        for _ in range(layer["repeat"]):
            body, out = self.sequence(layer["body"], shape, f"{where} body")
            if out != (growth, shape[1], shape[2]):
                raise SpecError(f"{where}: the body turns {_show(shape)} into {_show(out)} (channels x height x width); "
                                f"it must keep the height and width and give growth_rate ({growth}) channels")
            bodies.append(nn.Sequential(*body))
            shape = (shape[0] + growth, shape[1], shape[2])
        return ([Dense(bodies)] if self.make else []), shape

    def branches(self, layer: dict, shape: Shape, where: str) -> tuple[list[nn.Module], Shape]:
        made, outs = [], []
        for b, branch in enumerate(layer["branches"]):
            modules, out = self.sequence(branch, shape, f"{where} branch {b + 1}")
            if outs and out[1:] != outs[0][1:]:
                raise SpecError(f"{where}: branch {b + 1} ends at {out[1]}x{out[2]} pixels but branch 1 at {outs[0][1]}x{outs[0][2]}; "
                                "every branch must end at the same height and width (check their strides and padding)")
            made.append(nn.Sequential(*modules))
            outs.append(out)
        shape = (sum(out[0] for out in outs), outs[0][1], outs[0][2])
        return ([Branches(made)] if self.make else []), shape


def projection_conv(projection: dict, filters: int) -> dict:
    """A residual block's projection shortcut as the conv layer it is (1x1, the projection's stride, no padding or
    activation); the Keras builder (tfbackend/models.py) makes it from this too, so both build the same shortcut."""
    return {"filters": filters, "kernel": [1, 1], "stride": projection["stride"], "padding": "valid", "groups": 1,
            "batch_norm": projection["batch_norm"], "activation": "none", "bias": projection["bias"]}


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same': output ceil(size / stride); of the total padding the odd pixel goes to the bottom/right."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _out(padded: int, kernel: int, stride: int, where: str) -> int:
    if padded < kernel:
        raise _TooSmall(f"{where}: its window of {kernel} pixels is larger than the {padded} (padding included) that "
                        "reach it; give the network a larger input or fewer reductions before this layer")
    return (padded - kernel) // stride + 1


def _show(shape: Shape) -> str:
    return "x".join(map(str, shape))


def min_input_size(spec: dict) -> int:
    """The smallest square input every layer fits (the spec's own size always does: validate_spec checks it)."""
    spec = normalize_spec(spec)
    largest = max(spec["input"]["height"], spec["input"]["width"])
    for size in range(1, largest):
        try:
            _Builder(spec, make=False).network(size, size, "spec")
            return size
        except SpecError:  # too small, or branches that end at different sizes at this size
            continue
    return largest


def build_from_spec(spec: dict, image_size: int | None = None) -> nn.Sequential:
    spec = validate_spec(spec)
    size = image_size or spec["input"]["height"]
    name = spec.get("name", "this network")
    try:
        builder = _Builder(spec, make=True)
        layers, (channels, h, w) = builder.network(size, size, f"{name} at {size}x{size} px")
    except _TooSmall:
        raise UsageError(f"--image-size {size} is too small for {name}: it needs at least {min_input_size(spec)} px") from None
    if size != spec["input"]["height"]:  # at the spec's own size validate_spec has said it
        builder.warn_oversized()
    fc = spec["head"]["fully_connected"]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * h * w, fc["outputs"], bias=fc["bias"]))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)  # Glorot & Bengio 2010, TF's glorot_uniform
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def num_classes(spec: dict) -> int:
    """Logits of the head (head.fully_connected.outputs; ImageNet's 1000 when the spec says nothing)."""
    return int(spec.get("head", {}).get("fully_connected", {}).get("outputs", 1000))
