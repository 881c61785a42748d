"""The spec format (issue 11): synNet's, extended with strides, padding, grouped and depthwise convs,
average and global pools, residual, dense and multi-branch blocks. Old specs build as before; each block
trains a step and exports to ONNX; the format round-trips; its JSON Schema matches what the code accepts;
each invalid spec gives one line and exit 2."""

import json
import re
from importlib import resources

import onnxruntime
import pytest
import torch
from torch import nn
from jsonschema import Draft202012Validator

from cnnbench.engines import ONNX_OPSET
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import count_parameters, forward_flops, resolve_entry
from cnnbench.models.synnet import ACTIVATIONS, LAYER_FIELDS, build_from_spec, dump_spec, min_input_size, normalize_spec
from conftest import TINY_SPEC
from helpers import REPO

SYNNET = json.loads((resources.files("cnnbench.models") / "specs" / "synNet.json").read_text())
SCHEMA = json.loads((resources.files("cnnbench.models") / "specs" / "spec.schema.json").read_text())


def conv(filters, kernel=3, **options):
    return {"type": "conv", "filters": filters, "kernel": kernel, **options}


def net(*layers, size=16, classes=10):
    """`layers` in one group, then a global average pool and `classes` logits."""
    return {"name": "blockNet", "input": {"height": size, "width": size, "channels": 3},
            "groups": [{"name": "g1", "layers": list(layers)}, {"name": "top", "layers": [{"type": "globalpool"}]}],
            "head": {"fully_connected": {"outputs": classes}}}


PREACT = [{"type": "batch_norm"}, {"type": "activation", "function": "relu"}]
# name -> (spec, channels reaching the head): every feature of the format at least once, 16 px.
BLOCKS = {
    "convs": (net(conv(8, stride=2), conv(8, [3, 1], padding="valid"), conv(12, [3, 5], padding=[1, 2], groups=4),
                  conv(24, groups="depthwise", activation="relu6"), conv(16, 1, batch_norm=False, bias=True, activation="silu"),
                  conv(16, 2, activation="hardswish"), conv(16, 1, activation="none")), 16),
    "pools": (net(conv(8), {"type": "maxpool", "window": 3, "stride": 2, "padding": 1}, {"type": "avgpool", "window": 2, "stride": 1},
                  {"type": "avgpool", "window": 3, "stride": 1, "padding": [1, 1]}, {"type": "globalpool", "pool": "max"}), 8),
    "residual": (net(conv(8), {"type": "residual", "activation": "relu", "body": [conv(8), conv(8, activation="none")]}), 8),
    "residual_projection": (net(conv(8), {"type": "residual", "activation": "relu", "projection": True,
                                          "body": [conv(16, stride=2), conv(16, activation="none")]}), 16),
    "preactivation_residual": (net(conv(8), {"type": "residual", "projection": {"stride": 1, "batch_norm": False},
                                             "body": [*PREACT, conv(12, batch_norm=False, activation="none")]}), 12),
    "dense": (net(conv(8), {"type": "dense", "repeat": 3, "growth_rate": 4,
                            "body": [*PREACT, conv(16, 1, batch_norm=False, activation="none"), *PREACT,
                                     conv(4, batch_norm=False, activation="none")]},
                  conv(10, 1), {"type": "avgpool"}), 10),
    "dense_default_body": (net(conv(8), {"type": "dense", "repeat": 2, "growth_rate": 6}), 20),
    "branches": (net(conv(8), {"type": "branches", "branches": [
        [conv(4, 1)], [conv(4, 1), conv(6)], [{"type": "maxpool", "window": 3, "stride": 1, "padding": 1}, conv(2, 1)], []]}), 20),
    "nested": (net(conv(8), {"type": "residual", "projection": True, "body": [
        {"type": "branches", "branches": [[conv(4, stride=2)], [{"type": "maxpool"}]]},
        {"type": "dense", "repeat": 2, "growth_rate": 4}]}), 20),
}


def original_builder(spec: dict, size: int) -> nn.Sequential:
    """cnnbench's builder before the format grew (commit 7f0794e), for specs of the original form (conv
    layers and 2x2 stride-2 max-pools): the network the extension must still build, module for module."""
    bn = spec.get("conv_defaults", {}).get("batch_norm", {})
    eps, momentum = float(bn.get("epsilon", 1e-4)), 1.0 - float(bn.get("momentum_tf", 0.9))
    layers, channels = [], spec["input"]["channels"]
    for layer in (layer for group in spec["groups"] for layer in group["layers"]):
        if layer["type"] == "conv":
            (kh, kw), filters = layer["kernel"], layer["filters"]
            top, left = (kh - 1) // 2, (kw - 1) // 2
            layers += [nn.ZeroPad2d((left, kw - 1 - left, top, kh - 1 - top)), nn.Conv2d(channels, filters, (kh, kw), bias=False),
                       nn.BatchNorm2d(filters, eps=eps, momentum=momentum), nn.ReLU(inplace=True)]
            channels = filters
        else:
            layers.append(nn.MaxPool2d((2, 2), (2, 2)))
            size //= 2
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, spec["head"]["fully_connected"]["outputs"]))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def assert_same_network(a: nn.Module, b: nn.Module, x: torch.Tensor):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("spec, size", [(SYNNET, 64), (TINY_SPEC, 16)], ids=["synNet", "TINY_SPEC"])
def test_original_specs_build_exactly_as_before(spec, size):
    old = seeded(lambda: original_builder(spec, size))
    new = seeded(lambda: build_from_spec(spec, size))
    assert_same_network(old, new, torch.randn(1, 3, size, size))  # one image: synNet at 64 px is 3 GFLOPs
    assert [type(m) for m in old] == [type(m) for m in new]


def test_synnet_parameters_and_flops_unchanged():
    entry = resolve_entry("synNet")
    with torch.device("meta"):
        assert count_parameters(entry.build(224)) == 21_619_109
    assert forward_flops(entry) == 38_217_460_228
    assert entry.min_input_size == 64


# The TorchScript exporter (fast: the dynamo one takes seconds a model) warns about itself and its Pad slices.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Constant folding:UserWarning")
@pytest.mark.parametrize("name", BLOCKS)
def test_block_trains_a_step_and_exports_to_onnx(name, tmp_path):
    spec, channels = BLOCKS[name]
    model = seeded(lambda: build_from_spec(spec))
    assert model[-1].in_features == channels
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 7])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model.train()(x), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.dim() > 1)  # every weight learnt
    model.eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=["images"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert session.run(None, {"images": x.numpy()})[0] == pytest.approx(expected, abs=1e-4)


def test_conv_options_reach_the_modules():
    model = build_from_spec(BLOCKS["convs"][0])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.groups, c.bias is not None) for c in convs] == [
        (3, 8, (3, 3), (2, 2), (0, 0), 1, False), (8, 8, (3, 1), (1, 1), (0, 0), 1, False),
        (8, 12, (3, 5), (1, 1), (1, 2), 4, False), (12, 24, (3, 3), (1, 1), (0, 0), 12, False),
        (24, 16, (1, 1), (1, 1), (0, 0), 1, True), (16, 16, (2, 2), (1, 1), (0, 0), 1, False), (16, 16, (1, 1), (1, 1), (0, 0), 1, False)]
    kinds = [type(m).__name__ for m in model if type(m).__name__ in ("ReLU", "ReLU6", "SiLU", "Hardswish", "BatchNorm2d")]
    assert kinds == ["BatchNorm2d", "ReLU", "BatchNorm2d", "ReLU", "BatchNorm2d", "ReLU", "BatchNorm2d", "ReLU6",
                     "SiLU", "BatchNorm2d", "Hardswish", "BatchNorm2d"]


@pytest.mark.parametrize("size, pads", [(8, (0, 1, 0, 1)), (7, (1, 1, 1, 1))])
def test_same_padding_at_stride_2_is_tensorflows(size, pads):
    """TF 'same': output ceil(size / 2); total padding (out-1)*2 + 3 - size, the odd pixel bottom/right."""
    model = build_from_spec(net(conv(1, stride=2), size=size))
    assert model[0].padding == pads
    assert model[:2](torch.randn(1, 3, size, size)).shape[-2:] == (4, 4)


def test_min_input_size_follows_the_layers():
    assert min_input_size(net(conv(4, 5, padding="valid"), {"type": "maxpool"})) == 6
    assert min_input_size(net(conv(4, stride=2), conv(4, stride=2))) == 1  # 'same' never shrinks below 1 px
    with pytest.raises(UsageError, match="--image-size 5 is too small for blockNet: it needs at least 6 px"):
        build_from_spec(net(conv(4, 5, padding="valid"), {"type": "maxpool"}), 5)


def test_normalisation_writes_every_default_out():
    spec = normalize_spec(net(conv(4), {"type": "residual", "projection": True, "body": [conv(8, stride=2)]},
                              {"type": "dense", "repeat": 1, "growth_rate": 2}))
    first, residual, dense = spec["groups"][0]["layers"]
    assert first == {"type": "conv", "filters": 4, "kernel": [3, 3], "stride": [1, 1], "padding": "same", "groups": 1,
                     "batch_norm": True, "activation": "relu", "bias": False}
    assert residual["projection"] == {"stride": [2, 2], "batch_norm": True, "bias": False} and residual["activation"] == "none"
    assert dense["body"] == [{**first, "filters": 2}]
    assert spec["conv_defaults"] == {"stride": [1, 1], "padding": "same", "activation": "relu", "bias": False,
                                     "batch_norm": {"epsilon": 1e-4, "momentum_tf": 0.9, "affine": True}}
    assert spec["head"]["fully_connected"] == {"outputs": 10, "bias": True}


@pytest.mark.parametrize("name", [*BLOCKS, "TINY_SPEC", "synNet"])
def test_load_dump_load_gives_the_same_network(name, tmp_path):
    spec = {"TINY_SPEC": TINY_SPEC, "synNet": SYNNET}.get(name) or BLOCKS[name][0]
    dumped = json.loads(dump_spec(spec))
    assert dumped == normalize_spec(spec) and normalize_spec(dumped) == dumped
    (tmp_path / "spec.json").write_text(dump_spec(spec))
    entry = resolve_entry(str(tmp_path / "spec.json"))
    assert entry.name == spec["name"] and entry.input_size == spec["input"]["height"]
    if name != "synNet":  # synNet's own check above builds it; here its dict round-trips
        size = spec["input"]["height"]
        assert_same_network(seeded(lambda: build_from_spec(spec)), seeded(lambda: entry.build(size)), torch.randn(2, 3, size, size))


def bad(*layers, **top):
    return {**net(*layers), **top}


INVALID = [
    (bad({"type": "residual", "body": [conv(8), {"type": "deconv"}]}),
     "g1 layer 1 (residual) body layer 2: unknown layer type 'deconv'; use one of conv, maxpool, avgpool"),
    (bad(conv(8), {"type": "residual", "body": [conv(16, stride=2)]}),
     "g1 layer 2 (residual): the body turns 8x16x16 into 16x8x8 (channels x height x width) but the shortcut is the identity; "
     'add "projection": true'),
    (bad(conv(8), {"type": "residual", "projection": {"stride": 1}, "body": [conv(16, stride=2)]}),
     "g1 layer 2 (residual): the projection (1x1, stride [1, 1]) gives 16x16x16 but the body gives 16x8x8"),
    (bad(conv(8, stride=0)), "g1 layer 1 (conv): 'stride' must be a positive integer or a list of two, got 0"),
    (bad(conv(8), {"type": "dense", "repeat": 2, "growth_rate": 0}), "g1 layer 2 (dense): 'growth_rate' must be a positive integer, got 0"),
    (bad(conv(8), {"type": "maxpool", "window": [0, 2]}), "g1 layer 2 (maxpool): 'window' must be a positive integer or a list of two, got [0, 2]"),
    (bad(conv(8), {"type": "branches", "branches": [[conv(4)], [conv(4, stride=2)]]}),
     "g1 layer 2 (branches): branch 2 ends at 8x8 pixels but branch 1 at 16x16"),
    (bad(conv("8")), "g1 layer 1 (conv): 'filters' must be a positive integer, got '8'"),
    (bad(conv(8, batch_norm="yes")), "g1 layer 1 (conv): 'batch_norm' must be true or false, got 'yes'"),
    (bad(conv(8, activation="gelu")), "g1 layer 1 (conv): 'activation' must be one of 'relu', 'relu6', 'hardswish', 'silu', 'none', got 'gelu'"),
    (bad(conv(8), conv(6, groups=4)), "g1 layer 2 (conv): 'groups' 4 must divide both its 6 filters and its 8 input channels"),
    (bad(conv(8), conv(12, groups="depthwise")), "g1 layer 2 (conv): a depthwise conv's 'filters' (12) must be a multiple of its 8 input channels"),
    (bad({**conv(8), "stirde": 2}), "g1 layer 1 (conv): unknown key 'stirde'; a conv layer takes filters, kernel, stride, padding"),
    (bad(conv(8), {"type": "residual", "body": conv(8)}), "g1 layer 2 (residual) body must be a non-empty list of layers"),
    (bad(conv(8), {"type": "dense", "repeat": 1, "growth_rate": 4, "body": [conv(4, stride=2)]}),
     "g1 layer 2 (dense): the body turns 8x16x16 into 4x8x8 (channels x height x width); it must keep the height and width"),
    (bad(conv(8), {"type": "branches", "branches": "all"}), "g1 layer 2 (branches): 'branches' must be a non-empty list of branches"),
    (bad(conv(8), {"type": "maxpool", "window": 2, "padding": 2}), "g1 layer 2 (maxpool): 'padding' [2, 2] is more than half the window [2, 2]"),
    (bad(conv(8, 17, padding="valid")), "g1 layer 1 (conv): its window of 17 pixels is larger than the 16 (padding included) that reach it"),
    (bad(conv(8), conv_defaults={"batch_norm": {"momentum": 0.1}}),
     "conv_defaults.batch_norm: unknown key 'momentum'; it takes epsilon, momentum_tf, affine"),
    (bad(conv(8), {"type": "globalpool", "pool": "sum"}), "g1 layer 2 (globalpool): 'pool' must be one of 'avg', 'max', got 'sum'"),
]


@pytest.mark.parametrize("spec, message", INVALID, ids=[message[:60] for _, message in INVALID])
def test_invalid_spec_gives_one_line_and_exit_2(cli, tmp_path, spec, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    code, out, err = cli("train", path)
    assert code == 2
    assert f"{path}: {message}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


# The part of JSON Schema 2020-12 that spec.schema.json uses; schema_errors below implements exactly it.
# jsonschema's own Draft 2020-12 validator (the test extra has it), not a hand-written subset of one.
VALIDATOR = Draft202012Validator(SCHEMA)


def schema_errors(value) -> list[str]:
    """How `value` breaks SCHEMA, one line per error with its JSON path; empty when it conforms."""
    return [f"{error.json_path}: {error.message}" for error in VALIDATOR.iter_errors(value)]


def readme_examples() -> list[dict]:
    """The JSON examples of docs/spec-files.md's "Spec files" section, each a whole spec or one layer."""
    text = (REPO / "docs" / "spec-files.md").read_text()
    section = text.split("\n## Spec files\n", 1)[1].split("\n## ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_schema_is_a_valid_draft_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)  # raises SchemaError, naming the part, when it is not


def test_schema_and_code_agree_on_the_vocabulary():
    layers = [SCHEMA["$defs"][ref["$ref"].split("/")[-1]] for ref in SCHEMA["$defs"]["layer"]["oneOf"]]
    assert {layer["properties"]["type"]["const"]: set(layer["properties"]) - {"type", "name", "note"} for layer in layers} == {
        kind: set(fields) for kind, fields in LAYER_FIELDS.items()}
    assert SCHEMA["$defs"]["activation"]["enum"] == list(ACTIVATIONS)


# Errors only the shape walk finds: a schema sees types and values, not what reaches a layer.
SHAPE_WORDS = ("turns", "gives", "ends at", "divide", "multiple", "half the window", "reach it")


def test_specs_conform_to_the_schema():
    examples = [example if "groups" in example else net(example) for example in readme_examples()]
    specs = [SYNNET, TINY_SPEC, *(spec for spec, _ in BLOCKS.values()), *examples]
    for spec in specs:
        assert schema_errors(spec) == [] and schema_errors(normalize_spec(spec)) == []
    for spec, message in INVALID:
        if not any(word in message for word in SHAPE_WORDS):
            assert schema_errors(spec), message


def test_readme_examples_build_and_cover_every_block():
    examples = readme_examples()
    found = {layer["type"] for e in examples for layer in (e["groups"][0]["layers"] if "groups" in e else [e])}
    assert {"conv", "maxpool", "residual", "dense", "branches"} <= found
    for example in examples:
        spec = example if "groups" in example else net(example, size=32)
        size = spec["input"]["height"]
        assert build_from_spec(spec).eval()(torch.randn(1, 3, size, size)).shape == (1, spec["head"]["fully_connected"]["outputs"])