"""Networks described by a JSON spec file: AI Matrix's synNet and any network of the same form.

Conventions (stated in the spec file itself, and TensorFlow's, since the original was TF 1.10):
- every conv is stride 1 with 'same' padding: total padding k-1 per axis, the odd pixel at the
  bottom/right (an explicit ZeroPad2d, so even kernels need no hidden padded copy);
- no conv bias; BatchNorm with TF's epsilon and decay (TF decay 0.9 is PyTorch momentum 0.1); ReLU;
- a 2x2 stride-2 'valid' max-pool closes each group; then flatten and one linear layer;
- Glorot-uniform (Xavier-uniform) initialisation, TF's default for conv and dense kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from cnnbench.errors import UsageError


class SpecError(UsageError):
    pass


def load_spec(path: Path) -> dict:
    try:
        spec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"spec file {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix the file") from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    validate_spec(spec, str(path))
    return spec


def validate_spec(spec: object, source: str = "spec") -> None:
    """Check the whole spec before anything is built; the message names the offending layer."""
    if not isinstance(spec, dict):
        raise SpecError(f"{source}: the top level must be a JSON object with 'input', 'groups' and 'head'")
    inp = spec.get("input")
    if not isinstance(inp, dict) or not all(isinstance(inp.get(k), int) and inp[k] > 0 for k in ("height", "width", "channels")):
        raise SpecError(f"{source}: 'input' needs positive integers 'height', 'width' and 'channels'")
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        raise SpecError(f"{source}: 'groups' must be a non-empty list of groups")
    for g, group in enumerate(groups):
        gname = group.get("name", f"group {g + 1}") if isinstance(group, dict) else f"group {g + 1}"
        layers = group.get("layers") if isinstance(group, dict) else None
        if not isinstance(layers, list) or not layers:
            raise SpecError(f"{source}: {gname} needs a non-empty 'layers' list")
        for i, layer in enumerate(layers):
            where = f"{source}: {gname} layer {i + 1}"
            if not isinstance(layer, dict):
                raise SpecError(f"{where} must be an object with a 'type'")
            kind = layer.get("type")
            if kind == "conv":
                if not (isinstance(layer.get("filters"), int) and layer["filters"] > 0):
                    raise SpecError(f"{where} (conv): 'filters' must be a positive integer, got {layer.get('filters')!r}")
                _pair(layer.get("kernel"), f"{where} (conv): 'kernel'")
                if "stride" in layer and list(_pair(layer["stride"], f"{where} (conv): 'stride'")) != [1, 1]:
                    raise SpecError(f"{where} (conv): only stride [1, 1] is supported, got {layer['stride']!r}")
            elif kind == "maxpool":
                _pair(layer.get("window", [2, 2]), f"{where} (maxpool): 'window'")
                _pair(layer.get("stride", [2, 2]), f"{where} (maxpool): 'stride'")
                if layer.get("padding", "valid") != "valid":
                    raise SpecError(f"{where} (maxpool): only 'valid' padding is supported")
            else:
                raise SpecError(f"{where}: unknown layer type {kind!r}; use 'conv' or 'maxpool'")
    head = spec.get("head", {})
    fc = head.get("fully_connected", {}) if isinstance(head, dict) else None
    if not isinstance(fc, dict) or not (isinstance(fc.get("outputs", 1000), int) and fc.get("outputs", 1000) > 0):
        raise SpecError(f"{source}: head.fully_connected.outputs must be a positive integer")


def _pair(value: object, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise SpecError(f"{what} must be a positive integer or a list of two, got {value!r}")
    return value[0], value[1]


def _bn_settings(spec: dict) -> tuple[float, float]:
    bn = spec.get("conv_defaults", {}).get("batch_norm", {})
    eps = float(bn.get("epsilon", 1e-4))
    momentum_tf = float(bn.get("momentum_tf", 0.9))
    # TF: moving = decay * moving + (1 - decay) * batch; PyTorch: moving = (1 - m) * moving + m * batch.
    return eps, 1.0 - momentum_tf


def _output_size(spec: dict, image_size: int) -> tuple[int, int, int]:
    h = w = image_size
    channels = spec["input"]["channels"]
    for group in spec["groups"]:
        for layer in group["layers"]:
            if layer["type"] == "conv":
                channels = layer["filters"]
            else:
                kh, kw = _pair(layer.get("window", [2, 2]), "window")
                sh, sw = _pair(layer.get("stride", [2, 2]), "stride")
                h, w = (h - kh) // sh + 1, (w - kw) // sw + 1
    return channels, h, w


def min_input_size(spec: dict) -> int:
    size = 1
    while _output_size(spec, size)[1] < 1:
        size += 1
    return size


def _same_padding(kernel: tuple[int, int]) -> nn.ZeroPad2d:
    """TF 'same' for stride 1: k-1 pixels per axis, the odd one at the bottom/right."""
    (kh, kw) = kernel
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return nn.ZeroPad2d((left, kw - 1 - left, top, kh - 1 - top))


def build_from_spec(spec: dict, image_size: int | None = None) -> nn.Sequential:
    validate_spec(spec)
    size = image_size or spec["input"]["height"]
    channels_out, h, w = _output_size(spec, size)
    if h < 1 or w < 1:
        raise UsageError(f"--image-size {size} is too small for {spec.get('name', 'this network')}: it needs at least {min_input_size(spec)} px")
    eps, momentum = _bn_settings(spec)
    layers: list[nn.Module] = []
    channels = spec["input"]["channels"]
    for group in spec["groups"]:
        for layer in group["layers"]:
            if layer["type"] == "conv":
                kernel = _pair(layer["kernel"], "kernel")
                layers.append(_same_padding(kernel))
                layers += [nn.Conv2d(channels, layer["filters"], kernel, bias=False), nn.BatchNorm2d(layer["filters"], eps=eps, momentum=momentum), nn.ReLU(inplace=True)]
                channels = layer["filters"]
            else:
                layers.append(nn.MaxPool2d(_pair(layer.get("window", [2, 2]), "window"), _pair(layer.get("stride", [2, 2]), "stride")))
    layers += [nn.Flatten(), nn.Linear(channels_out * h * w, num_classes(spec))]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)  # Glorot & Bengio 2010, TF's glorot_uniform
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def num_classes(spec: dict) -> int:
    """Logits of the head (head.fully_connected.outputs; ImageNet's 1000 when the spec says nothing)."""
    return int(spec.get("head", {}).get("fully_connected", {}).get("outputs", 1000))
