"""`cnnbench profile`: per-layer workload profiles (issue 11, part 1), counted on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from cnnbench.tools.profile import layers, profile_file
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import ModelEntry, forward_flops, resolve_any, resolve_entry

# torchvision's published figures at 224 px: "GFLOPS" (multiply-adds, in G) and "Params" (M) of the table of
# classification weights, https://docs.pytorch.org/vision/stable/models.html (the same as each builder's
# weights metadata, torchvision/models/resnet.py etc.; googlenet without its auxiliary heads).
PUBLISHED = {"resnet50": (4.09, 25.56), "densenet121": (2.83, 7.98), "googlenet": (1.50, 6.62),
             "resnet152": (11.51, 60.19)}


def _profile(name: str, size: int = 64, batch: int = 1, precision: str = "fp32") -> dict:
    return profile_file.profile_model(resolve_any(name), size, batch, precision)


def _layers(profile: dict, kind: str) -> list[dict]:
    return [layer for layer in profile["layers"] if layer["type"] == kind]


def _one_conv() -> ModelEntry:
    return ModelEntry("one_conv", lambda size: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False)), 16, 1,
                      "imagenet", lambda batch: 0.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_figures_at_224_px(name):
    gmacs, millions = PUBLISHED[name]
    profile = _profile(name, 224)
    totals = profile["totals"]
    assert totals["macs_per_image"] / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert totals["parameters"] / 1e6 == pytest.approx(millions, rel=0.01)
    # The same counter as `cnnbench models`, so the same total; every parameter belongs to a layer.
    assert totals["flops"] == forward_flops(resolve_entry(name), 224) == sum(l["flops"] for l in profile["layers"])
    assert sum(l["parameters"] for l in profile["layers"]) == totals["parameters"]


def test_resnet50_layers_shares_and_distributions():
    profile = _profile("resnet50", 64, batch=2)
    counts = {kind: figures["layers"] for kind, figures in profile["op_types"].items() if figures["layers"]}
    # 1 stem conv + 16 bottlenecks x 3 + 4 projections; a ReLU after the stem and 3 per bottleneck.
    assert counts == {"conv": 53, "batchnorm": 53, "activation": 49, "add": 16, "maxpool": 1, "global_pool": 1,
                      "linear": 1}
    assert list(profile["op_types"]) == list(layers.OP_TYPES)
    assert sum(f["flop_share"] for f in profile["op_types"].values()) == pytest.approx(1.0, abs=1e-9)
    assert profile["op_types"]["conv"]["flop_share"] > 0.99
    assert profile["totals"]["flops"] == 2 * forward_flops(resolve_entry("resnet50"), 64)
    for name in layers.DISTRIBUTIONS:
        histogram = profile["distributions"][name]
        assert len(histogram["labels"]) == len(histogram["weights"])
        assert sum(histogram["weights"]) == pytest.approx(1.0, abs=1e-9)
    kernels = dict(zip(*profile["distributions"]["kernel_size"].values()))
    assert set(kernels) == {"1x1", "3x3", "7x7"} and kernels["3x3"] > kernels["7x7"]


def test_a_residual_add_is_found():
    adds = _layers(_profile("resnet50", 64), "add")
    first = adds[0]
    assert len(adds) == 16 and first["name"] == "layer1.0" and first["function"] in ("__iadd__", "add_")  # out += identity
    assert first["in_channels"] == first["out_channels"] == 256 and first["input_hw"] == [16, 16]
    assert first["flops"] == 0 and first["bytes_read"] == 2 * first["bytes_written"] == 2 * 4 * 256 * 16 * 16


def test_densenet_concats_are_found():
    concats = _layers(_profile("densenet121", 64), "concat")
    assert len(concats) == 58 + 4  # each dense layer joins its inputs; each block joins its layers' outputs
    by_name = {layer["name"]: layer for layer in concats}
    assert by_name["features.denseblock1.denselayer6"]["out_channels"] == 64 + 5 * 32
    block = by_name["features.denseblock1"]
    assert block["out_channels"] == 64 + 6 * 32 and block["input_hw"] == [16, 16]


def test_depthwise_convolutions_of_mobilenet_v3_small():
    profile = _profile("mobilenet_v3_small", 64)
    assert profile["source"] == "torchvision"
    depthwise = _layers(profile, "depthwise_conv")
    assert depthwise and all(l["groups"] == l["in_channels"] > 1 for l in depthwise)
    first = depthwise[0]
    assert (first["name"], first["in_channels"], first["out_channels"], first["kernel"], first["stride"],
            first["input_hw"], first["output_hw"]) == ("features.1.block.0.0", 16, 16, [3, 3], [2, 2], [32, 32], [16, 16])
    assert first["flops"] == 2 * (16 * 16 * 16) * (1 * 3 * 3)  # one 3x3 filter of one channel per output value
    assert profile["op_types"]["grouped_conv"]["layers"] == 0
    squeeze = {l["type"] for l in profile["layers"] if l["name"].startswith("features.1.block.1")}
    assert {"global_pool", "conv", "activation", "mul"} <= squeeze  # squeeze-excitation: pool, 2 convs, scale * input
    assert profile["totals"]["flops"] == forward_flops(resolve_any("mobilenet_v3_small"), 64)


def test_grouped_convolutions_of_resnext():
    grouped = _layers(_profile("resnext50_32x4d", 64), "grouped_conv")
    assert len(grouped) == 16 and {l["groups"] for l in grouped} == {32}


def test_a_builder_that_cannot_run_on_the_meta_device():
    # RegNet computes its widths with tensor values (.tolist()): built on the CPU, then moved to meta.
    profile = _profile("regnet_y_400mf", 64)
    assert profile["totals"]["parameters"] == 4_344_144  # torchvision's published figure
    assert _layers(profile, "grouped_conv") and _layers(profile, "mul")  # group width 8; squeeze-excitation


def test_one_convolution_counted_by_hand():
    profile = profile_file.profile_model(_one_conv(), 16, 2, "fp32")
    read, written, flops = 4 * (2 * 3 * 16 * 16 + 8 * 3 * 3 * 3), 4 * (2 * 8 * 16 * 16), 2 * (2 * 8 * 16 * 16) * 27
    assert profile["layers"] == [{
        "index": 0, "name": "0", "type": "conv", "function": "conv2d", "in_channels": 3, "out_channels": 8,
        "kernel": [3, 3], "stride": [1, 1], "groups": 1, "input_hw": [16, 16], "output_hw": [16, 16], "flops": flops,
        "parameters": 216, "bytes_read": read, "bytes_written": written, "arithmetic_intensity": flops / (read + written),
        "inputs": []}]  # the first layer reads the input, which no layer wrote
    half = profile_file.profile_model(_one_conv(), 16, 2, "bf16")["totals"]
    assert (half["bytes_read"], half["bytes_written"], half["flops_per_image"]) == (read // 2, written // 2, flops // 2)


def test_the_file_round_trips_through_load_profile(cli, tiny_spec, tmp_path):
    path = tmp_path / "profiles" / "tiny.json"
    code, out, err = cli("profile", tiny_spec, "--image-size", "16", "--batch-size", "2", "--out", path)
    assert code == 0, err
    written = json.loads(path.read_text())
    assert path.read_text().startswith('{\n "format": "cnnbench-profile",\n "version": 1,')
    assert profile_file.load_profile(path) == written
    again = profile_file.profile_model(resolve_any(str(tiny_spec)), 16, 2)
    assert json.loads(json.dumps(again)) == {**written, "created": again["created"]}
    assert written["source"] == "spec" and written["measured"] is None
    code, out, _ = cli("profile", path)  # a profile made elsewhere is shown again, and nothing is written
    assert code == 0 and f"profile read from {path}" in out


def test_several_models_go_to_the_out_folder(cli, tmp_path):
    code, out, err = cli("profile", "resnet18", "googlenet", "--image-size", "32", "--out", tmp_path / "mix")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["profile_googlenet.json", "profile_resnet18.json"]


def _corrupt(text: str, how: str) -> str:
    if how == "truncated":
        return text[: len(text) // 2]
    data = json.loads(text)
    {"newer": lambda: data.update(version=99),
     "no layers": lambda: data.pop("layers"),
     "share": lambda: data["op_types"]["conv"].update(flop_share="most"),
     "unknown type": lambda: data["op_types"].update(deconv=data["op_types"]["conv"]),
     "histogram": lambda: data["distributions"]["kernel_size"].update(weights=[0.5])}[how]()
    return json.dumps(data)


@pytest.mark.parametrize("how, message", [
    ("truncated", "is not valid JSON"),
    ("newer", "its version 99 is newer than this cnnbench reads (1)"),
    ("no layers", "'layers' is missing"),
    ("share", "op_types.conv.flop_share must be a non-negative number"),
    ("unknown type", "unknown operation types deconv"),
    ("histogram", "distributions.kernel_size.weights must be non-negative shares summing to 1"),
])
def test_a_corrupted_profile_is_one_line_and_exit_2(cli, tmp_path, how, message):
    good = tmp_path / "good.json"
    profile_file.write_profile(profile_file.profile_model(_one_conv(), 16, 1), good)
    bad = tmp_path / "bad.json"
    bad.write_text(_corrupt(good.read_text(), how))
    code, out, err = cli("profile", bad)
    assert code == 2 and "Traceback" not in out + err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"cnnbench: error: profile {bad} ")
    assert message in err


def test_an_unreadable_profile_is_one_line():
    with pytest.raises(UsageError, match="cannot read the profile missing.json"):
        profile_file.load_profile("missing.json")


@pytest.mark.parametrize("args, message", [
    (["resnet5"], "unknown model 'resnet5' (did you mean resnet50?); accepted: the registered models (densenet121, "),
    (["resnet50", "--image-size", "0"], "--image-size must be an integer of at least 1, got 0"),
    (["densenet121", "--image-size", "16"], "--image-size 16 is too small for densenet121: it needs at least 29 px"),
    (["resnet50", "--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
    (["resnet50", "--measure", "--precision", "int8"], "--measure runs fp32, tf32, fp16 or bf16"),
    (["resnet50", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["maxvit_t", "--image-size", "256"], "--image-size 256 does not suit maxvit_t (ValueError: Input size (64, 64) of block 0"),
    ([], "the following arguments are required: MODEL"),
])
def test_bad_requests_are_one_line_and_exit_2(cli, args, message):
    code, out, err = cli("profile", *args)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_unknown_names_list_the_torchvision_models_too(cli):
    _, _, err = cli("profile", "alexnett")
    assert "did you mean alexnet?" in err and "any torchvision classification model" in err and "synNet" in err


def test_the_summary_for_resnet50(cli):
    code, out, err = cli("profile", "resnet50", "--image-size", "64", "--batch-size", "1")
    assert code == 0, err
    assert Path("profile_resnet50.json").is_file() and "profile written to profile_resnet50.json" in out
    rows = {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in (line.split("│") for line in out.splitlines())
            if len(cells) > 9}
    assert set(rows) == {"conv", "linear", "batchnorm", "activation", "maxpool", "global_pool", "add", "total"}
    assert rows["add"][0] == "16" and rows["total"][2] == "100.0%"
    assert "kernel size (share of FLOPs): 1x1 " in out


def test_measure_gives_time_shares_forward_and_backward(cli, tmp_path):
    path = tmp_path / "r18.json"
    code, out, err = cli("profile", "resnet18", "--image-size", "32", "--batch-size", "2", "--measure", "--warmup", "1",
                         "--steps", "1", "--device", "cpu", "--out", path)
    assert code == 0, err
    measured = profile_file.load_profile(path)["measured"]
    assert (measured["device"], measured["steps"], measured["warmup_steps"]) == ("cpu", 1, 1)
    for direction in ("forward", "backward"):
        figures = measured[direction]
        assert sum(figures["time_share"].values()) == pytest.approx(1.0, abs=1e-9)
        assert figures["time_share"]["conv"] > 0 and figures["time_share"]["batchnorm"] > 0
        assert figures["time_share"]["add"] > 0 and figures["time_share"]["activation"] > 0
        assert 0 < figures["coverage"] <= 1.01 and figures["seconds_per_step"] > 0
    assert "forward time" in out and "measured backward on cpu" in out
