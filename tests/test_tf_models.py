"""Keras builds for `--framework tensorflow` (issue 15, backends/tensorflow/models.py): the registry's networks and spec
files with PyTorch's trainable parameters, shapes and, for spec files, PyTorch's outputs."""

from __future__ import annotations

import json
import math
import re

import torch
import torchvision  # noqa: F401  first: TensorFlow 2.21 loaded before torchvision 0.29 segfaults
import keras
import numpy as np
import pytest
from torch import nn

from cnnbench.tools import synth
from cnnbench.core.errors import UsageError
from cnnbench.models import synnet
from cnnbench.models.registry import count_parameters, resolve_any, resolve_entry
from cnnbench.backends.tensorflow import models
from cnnbench.backends.tensorflow.models import build, trainable_parameters

# Trainable parameters (Keras, PyTorch) at 1000 classes, as the module docstring's table states them; the
# four registered networks' counts do not depend on the image size, synNet's (flatten head) does: 224 px.
PARAMETERS = {
    "resnet50": (25_583_592, 25_557_032),
    "resnet152": (60_268_520, 60_192_808),
    "densenet121": (7_978_856, 7_978_856),
    "googlenet": (6_624_904, 6_624_904),
    "synNet": (21_619_109, 21_619_109),
}

# Every layer type and option of the format, at odd and non-square sizes: an even kernel 'same' at stride 2
# (TF puts the odd pixel at the bottom/right), explicit conv pads, max/avg pools that pad (PyTorch's -inf and
# counted zeros), depthwise (by name, and as groups == channels with 2 filters each), grouped, projection
# and identity residuals with and without a post-activation, a dense block, branches with an empty one,
# standalone batch norm and activation layers, every activation, a head over 2x2 pixels.
EVERY_LAYER = {
    "name": "every_layer", "input": {"height": 27, "width": 27, "channels": 3},
    "conv_defaults": {"batch_norm": {"epsilon": 0.001, "momentum_tf": 0.8}, "activation": "relu6"},
    "groups": [
        {"name": "stem", "layers": [
            {"type": "conv", "filters": 8, "kernel": 4, "stride": 2},
            {"type": "conv", "filters": 8, "kernel": [3, 5], "padding": [0, 2], "bias": True, "activation": "hardswish"},
            {"type": "maxpool", "window": 3, "stride": 2, "padding": 1},
            {"type": "avgpool", "window": 3, "stride": 1, "padding": 1},
        ]},
        {"name": "blocks", "layers": [
            {"type": "residual", "projection": {"bias": True}, "activation": "silu", "body": [
                {"type": "conv", "filters": 16, "kernel": 1},
                {"type": "conv", "filters": 16, "kernel": 3, "stride": 2, "groups": "depthwise"},
                {"type": "conv", "filters": 24, "kernel": 3, "groups": 4, "activation": "none"}]},
            {"type": "residual", "body": [
                {"type": "batch_norm"}, {"type": "activation", "function": "relu"},
                {"type": "conv", "filters": 24, "kernel": 3, "groups": "depthwise", "batch_norm": False, "activation": "none"}]},
            {"type": "dense", "repeat": 2, "growth_rate": 6, "body": [
                {"type": "batch_norm"}, {"type": "activation"},
                {"type": "conv", "filters": 6, "kernel": 3, "batch_norm": False, "activation": "none"}]},
            {"type": "branches", "branches": [
                [],
                [{"type": "conv", "filters": 8, "kernel": 1}, {"type": "conv", "filters": 16, "kernel": 3, "groups": 8}],
                [{"type": "maxpool", "window": 3, "stride": 1, "padding": 1}, {"type": "conv", "filters": 4, "kernel": 1}]]},
            {"type": "maxpool", "window": 2, "stride": 2, "padding": [1, 0]},
        ]},
        {"name": "end", "layers": [{"type": "conv", "filters": 10, "kernel": 1, "padding": "valid"}]},
    ],
    "head": {"fully_connected": {"outputs": 7}},
}
# BatchNorm without scale and offset, conv biases, an even kernel 'same' at stride 1, global max pooling.
NO_AFFINE = {
    "name": "no_affine", "input": {"height": 20, "width": 20, "channels": 3},
    "conv_defaults": {"batch_norm": {"affine": False}, "bias": True, "activation": "silu"},
    "groups": [{"name": "all", "layers": [
        {"type": "conv", "filters": 6, "kernel": 2},
        {"type": "avgpool", "window": 2, "stride": 2, "padding": 1},
        {"type": "conv", "filters": 12, "kernel": 3, "stride": 2, "groups": 3},
        {"type": "globalpool", "pool": "max"},
        {"type": "conv", "filters": 5, "kernel": 1},
    ]}],
    "head": {"fully_connected": {"outputs": 3, "bias": False}},
}
# `cnnbench synth` mixes, one per block kind it generates: depthwise convolutions and residuals
# (MobileNetV3), grouped convolutions (ResNeXt), dense blocks (the original four).
SYNTH_TARGETS = {"synth_depthwise": "mobilenet_v3_large", "synth_grouped": "resnext50_32x4d",
                 "synth_dense": "googlenet,densenet121,resnet50"}


@pytest.fixture(scope="module")
def spec_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("specs")
    files = {"synNet": "synNet"}
    for spec in (EVERY_LAYER, NO_AFFINE):
        (folder / f"{spec['name']}.json").write_text(json.dumps(spec))
        files[spec["name"]] = str(folder / f"{spec['name']}.json")
    for name, target in SYNTH_TARGETS.items():
        mix = synth.mix_of(synth.load_targets(target, 64, 2, "fp32"), 64)
        (folder / f"{name}.json").write_text(synnet.dump_spec(synth.generate(mix, seed=0, layers=None, gflops=0.05, name=name)))
        files[name] = str(folder / f"{name}.json")
    return files


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_the_docstring_table_states_the_tested_counts():
    rows = re.findall(r"^  (\w+) +([\d,]+) +([\d,]+) ", models.__doc__, re.MULTILINE)
    assert rows == [(name, f"{k:,}", f"{t:,}") for name, (k, t) in PARAMETERS.items()]


@pytest.mark.parametrize("name", ["resnet50", "resnet152", "densenet121"])
def test_keras_applications_counts_and_what_makes_them_differ(name):
    entry = resolve_entry(name)
    model = build(entry, 32)  # the counts do not depend on the size: the smallest keras.applications takes
    keras_count, torch_count = PARAMETERS[name]
    assert trainable_parameters(model) == keras_count
    assert count_parameters(entry.build(32)) == torch_count
    conv_biases = sum(math.prod(layer.bias.shape) for layer in model.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    assert keras_count - torch_count == conv_biases  # the whole difference: ResNet's conv biases, none in DenseNet
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all((layer.epsilon, layer.momentum) == (1e-5, 0.9) for layer in norms)
    assert model.output.shape == (None, 1000) and model.output.dtype == "float32"


@pytest.fixture(scope="module")
def googlenet_224():
    return build(resolve_entry("googlenet"), 224)


def test_googlenet_has_torchvision_parameters_and_batch_norm(googlenet_224):
    assert trainable_parameters(googlenet_224) == PARAMETERS["googlenet"][0] == 6_624_904
    assert count_parameters(resolve_entry("googlenet").build(224)) == PARAMETERS["googlenet"][1]
    norms = [layer for layer in googlenet_224.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 57 and all((layer.epsilon, layer.momentum) == (0.001, 0.9) for layer in norms)
    assert googlenet_224.get_layer("dropout").rate == 0.2
    assert googlenet_224.output.shape == (None, 1000)


GOOGLENET_STAGES = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                    "inception5a", "inception5b"]


@pytest.mark.parametrize("size", [224, 99, 15])
def test_googlenet_feature_maps_match_torchvision(size, googlenet_224):
    # 99 px: odd sizes where ceil_mode's rounding differs from TF's 'same' (25 -> 12 here, 'same' gives 13);
    # 15 px: torchvision's minimum, where the last pools pad a 2- and a 1-pixel map.
    model = googlenet_224 if size == 224 else build(resolve_entry("googlenet"), size)
    with torch.device("meta"):
        torch_model = resolve_entry("googlenet").build(size).eval()
        shapes = {}
        for name in GOOGLENET_STAGES:
            getattr(torch_model, name).register_forward_hook(
                lambda module, args, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        torch_model(torch.empty(1, 3, size, size))
    keras_shapes = {name: tuple(model.get_layer(name).output.shape[1:]) for name in GOOGLENET_STAGES}
    assert keras_shapes == {name: (h, w, c) for name, (c, h, w) in shapes.items()}
    if size == 224:
        assert [keras_shapes[name][0] for name in ("conv1", "maxpool1", "maxpool2", "maxpool3", "maxpool4")] == \
            [112, 56, 28, 14, 7]
        assert keras_shapes["inception5b"] == (7, 7, 1024)


def test_googlenet_ceil_mode_max_pool_equals_pytorch():
    x = torch.randn(2, 5, 13, 13)  # negative values: zero padding would show through, -inf does not
    for window, stride, padding in [(3, 2, 0), (2, 2, 0), (3, 1, 1)]:
        expected = nn.MaxPool2d(window, stride, padding, ceil_mode=True)(x)
        inputs = keras.Input((13, 13, 5))
        pooled = keras.Model(inputs, models._ceil_max_pool(inputs, window, stride, padding))(x.permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(np.asarray(pooled), expected.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("name", ["synNet", "every_layer", "no_affine", *SYNTH_TARGETS])
def test_spec_builds_like_pytorch(name, spec_files):
    entry = resolve_entry(spec_files[name])
    size = 224 if name == "synNet" else entry.input_size
    if name == "synNet":  # the documented count; the forward below runs at 64 px
        assert trainable_parameters(build(entry, 224)) == count_parameters(entry.build(224)) == PARAMETERS["synNet"][0]
        size = 64
    torch.manual_seed(0)
    torch_model, model = entry.build(size).eval(), build(entry, size)
    assert trainable_parameters(model) == count_parameters(torch_model)
    _randomise_batch_norms(torch_model)
    _copy_weights(torch_model, model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    got = np.asarray(model(x.permute(0, 2, 3, 1).numpy(), training=False))
    assert got.shape == expected.shape == (2, entry.num_classes) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_spec_layer_settings(spec_files):
    model = build(resolve_entry(spec_files["every_layer"]), 27)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all((n.epsilon, n.momentum, n.center, n.scale) == (0.001, 0.8, True, True) for n in norms)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"DepthwiseConv2D", "Conv2D", "AveragePooling2D", "MaxPooling2D", "Add", "Concatenate"} <= kinds
    assert [layer.groups for layer in model.layers if type(layer) is keras.layers.Conv2D and layer.groups > 1] == [4]
    # PyTorch's Glorot limit for 16 filters on 8 channels, 3x3: sqrt(6 / (9 + 16 * 9)) = 0.198, where Keras'
    # fans for a depthwise kernel would give sqrt(6 / (8 * 9 + 2 * 9)) = 0.258; 144 draws come within 10% of it.
    kernel = next(layer.kernel for layer in model.layers
                  if type(layer) is keras.layers.DepthwiseConv2D and layer.depth_multiplier == 2)
    assert 0.9 * math.sqrt(6 / 153) < np.abs(np.asarray(kernel)).max() <= math.sqrt(6 / 153)
    synnet_norms = [layer for layer in build(resolve_entry("synNet"), 64).layers
                    if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(synnet_norms) == 62 and all((n.epsilon, n.momentum) == (1e-4, 0.9) for n in synnet_norms)


def test_mixed_bfloat16_gives_float32_logits(bfloat16_policy, spec_files):
    for entry, size in [(resolve_entry(spec_files["every_layer"]), 27), (resolve_entry("googlenet"), 32),
                        (resolve_entry("resnet50"), 32)]:
        model = build(entry, size)
        logits = model(np.random.default_rng(0).standard_normal((2, size, size, 3), dtype=np.float32), training=False)
        assert logits.dtype == "float32" and logits.shape == (2, entry.num_classes)
        policies = {layer.dtype_policy.name for layer in model.layers[1:-1]}  # between the input and the logits
        assert policies == {"mixed_bfloat16"}, entry.name
        assert model.layers[-1].dtype_policy.name == "float32"


def test_only_the_four_networks_and_spec_files_have_a_build(spec_files):
    line = ("no TensorFlow build of vit_b_16: --framework tensorflow runs resnet50, resnet152, densenet121, "
            "googlenet, spec files, keras:NAME and the torchvision models with a keras.applications twin")
    for check in (lambda entry: build(entry, 224), models.check_buildable):
        with pytest.raises(UsageError) as raised:
            check(resolve_any("vit_b_16"))
        assert str(raised.value) == line
    for name in ["resnet50", "resnet152", "densenet121", "googlenet", "synNet", spec_files["every_layer"]]:
        models.check_buildable(resolve_entry(name), 32)  # raises nothing


def test_too_small_images_fail_in_one_line(spec_files):
    with pytest.raises(UsageError, match=r"--image-size 30 is too small for densenet121 with --framework tensorflow: "
                                         r"keras.applications builds it from 32 px"):
        build(resolve_entry("densenet121"), 30)  # PyTorch's densenet121 takes 29
    with pytest.raises(UsageError, match=r"--image-size 31 is too small for resnet50 with --framework tensorflow"):
        models.check_buildable(resolve_entry("resnet50"), 31)
    with pytest.raises(UsageError, match=r"--image-size 14 is too small for googlenet: it needs at least 15 px"):
        build(resolve_entry("googlenet"), 14)
    with pytest.raises(UsageError, match=r"--image-size 3 is too small for every_layer"):
        build(resolve_entry(spec_files["every_layer"]), 3)


def _randomise_batch_norms(model: nn.Module) -> None:
    """Statistics and affine parameters away from 0 and 1, so that the transfer and the epsilon show."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def _copy_weights(torch_model: nn.Module, model) -> None:
    """PyTorch's weights into the Keras model. Both builders make their layers in spec order, so the n-th
    PyTorch layer of a kind is the n-th Keras one of that kind made (Keras names them conv2d, conv2d_1, ...)."""
    pairs = {"conv": [], "depthwise": [], "norm": []}
    for module in torch_model.modules():
        if isinstance(module, nn.Conv2d):
            pairs["depthwise" if module.groups == module.in_channels > 1 else "conv"].append(module)
        elif isinstance(module, nn.BatchNorm2d):
            pairs["norm"].append(module)
    kinds = {"conv": keras.layers.Conv2D, "depthwise": keras.layers.DepthwiseConv2D, "norm": keras.layers.BatchNormalization}
    for kind, modules in pairs.items():
        layers = sorted((layer for layer in model.layers if type(layer) is kinds[kind]), key=_creation_order)
        assert len(layers) == len(modules), kind
        for module, layer in zip(modules, layers):
            layer.set_weights(_keras_weights(kind, module))
    linear, fc = torch_model[-1], model.get_layer("fc")
    h, w, c = model.get_layer("flatten").input.shape[1:]  # PyTorch flattens channels first, Keras last
    kernel = linear.weight.detach().reshape(-1, c, h, w).permute(2, 3, 1, 0).reshape(h * w * c, -1)
    fc.set_weights([kernel.numpy()] + ([linear.bias.detach().numpy()] if linear.bias is not None else []))


def _creation_order(layer) -> int:
    suffix = re.fullmatch(r".*?_(\d+)", layer.name)
    return int(suffix.group(1)) if suffix else 0


def _keras_weights(kind: str, module: nn.Module) -> list[np.ndarray]:
    if kind == "norm":
        stats = [module.running_mean.numpy(), module.running_var.numpy()]
        return ([module.weight.detach().numpy(), module.bias.detach().numpy()] if module.affine else []) + stats
    weight = module.weight.detach()
    if kind == "depthwise":  # (channels x multiplier, 1, kh, kw) -> (kh, kw, channels, multiplier)
        kernel = weight.reshape(module.in_channels, -1, *weight.shape[2:]).permute(2, 3, 0, 1)
    else:  # (out, in / groups, kh, kw) -> (kh, kw, in / groups, out)
        kernel = weight.permute(2, 3, 1, 0)
    return [kernel.numpy()] + ([module.bias.detach().numpy()] if module.bias is not None else [])
