import json

import pytest
import torch
from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.models.registry import count_parameters, forward_flops, get_model, model_names, resolve_entry
from cnnbench.models.synnet import build_from_spec

# torchvision's documented parameter counts (googlenet without its auxiliary heads).
PARAMETERS = {
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "googlenet": 6_624_904,
}


@pytest.mark.parametrize("name", model_names())
def test_every_model_gives_1000_logits(name):
    entry = resolve_entry(name)
    model = entry.build(64).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, expected", sorted(PARAMETERS.items()))
def test_parameter_counts(name, expected):
    assert count_parameters(get_model(name)) == expected


def test_names_match_case_insensitively():
    assert resolve_entry("ResNet50").name == "resnet50"
    assert resolve_entry("SYNNET").name == "synNet"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UsageError) as err:
        resolve_entry("alexnett")
    assert "(did you mean alexnet?)" in str(err.value)
    for name in model_names():
        assert name in str(err.value)


def test_synnet_layers_match_the_spec():
    spec = json.loads(resolve_entry("synNet").spec_path.read_text())
    model = get_model("synNet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    spec_convs = [l for g in spec["groups"] for l in g["layers"] if l["type"] == "conv"]
    assert [(c.out_channels, list(c.kernel_size)) for c in convs] == [(l["filters"], l["kernel"]) for l in spec_convs]
    assert all(c.stride == (1, 1) and c.bias is None for c in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) and all(b.eps == 1e-4 and abs(b.momentum - 0.1) < 1e-12 for b in bns)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == len(spec["groups"]) == 6
    fc = model[-1]
    assert isinstance(fc, nn.Linear) and fc.in_features == 3 * 3 * 43 and fc.out_features == 1000


def test_synnet_runs_at_224_and_small():
    model = get_model("synNet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert get_model("synNet", 64).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
def test_same_padding_puts_the_odd_pixel_bottom_right(kernel):
    """TensorFlow 'same' at stride 1: output size = input size, extra padding at bottom/right."""
    spec = {"input": {"height": 6, "width": 6, "channels": 1},
            "groups": [{"layers": [{"type": "conv", "filters": 1, "kernel": [kernel, kernel]}, {"type": "maxpool"}]}],
            "head": {"fully_connected": {"outputs": 1}}}
    model = build_from_spec(spec)
    pad, conv = model[0], model[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
    x = torch.arange(36.0).view(1, 1, 6, 6)
    y = conv(pad(x))
    assert y.shape == x.shape
    top_left = (kernel - 1) // 2  # TF: pad_top = total // 2, the extra pixel goes to the bottom
    expected = torch.nn.functional.pad(x, (top_left, kernel - 1 - top_left, top_left, kernel - 1 - top_left))[..., :6, :6]
    assert torch.equal(y, expected)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["groups"][1]["layers"][3].update(filters=-4), "group_2 layer 4 (conv): 'filters'"),
        (lambda s: s["groups"][0]["layers"][1].update(type="deconv"), "group_1 layer 2: unknown layer type 'deconv'"),
        (lambda s: s["groups"][2]["layers"][0].update(kernel=[3]), "group_3 layer 1 (conv): 'kernel'"),
        (lambda s: s.pop("groups"), "'groups' must be a non-empty list"),
    ],
)
def test_malformed_spec_names_the_offending_layer(tmp_path, mutate, message):
    spec = json.loads(resolve_entry("synNet").spec_path.read_text())
    mutate(spec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(UsageError) as err:
        resolve_entry(str(path))
    assert message in str(err.value)


def test_spec_file_path_and_training_section(tmp_path):
    spec = json.loads(resolve_entry("synNet").spec_path.read_text())
    spec["name"] = "tinyNet"
    spec["groups"] = spec["groups"][:2]
    spec["training"]["learning_rate"] = 0.5
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    entry = resolve_entry(str(path))
    assert entry.name == "tinyNet" and entry.learning_rate(64) == 0.5
    assert entry.min_input_size == 4  # two 2x2 pools
    assert entry.build(32)(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    with pytest.raises(UsageError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        resolve_entry(str(tmp_path / "broken.json"))


def test_learning_rates_follow_the_original():
    assert resolve_entry("googlenet").learning_rate(64) == 0.04
    assert resolve_entry("resnet50").learning_rate(64) == 64 / 1024
    assert resolve_entry("resnet152").learning_rate(32) == 32 / 1024
    assert resolve_entry("densenet121").learning_rate(64) == 0.001
    assert resolve_entry("synNet").learning_rate(16) == 0.001


def test_forward_flops_of_resnet50():
    # ResNet-50 at 224 px: 4.09 G multiply-adds (torchvision's weights table), counted as 2 FLOPs each.
    assert forward_flops(resolve_entry("resnet50")) == pytest.approx(2 * 4.09e9, rel=0.01)


def test_image_too_small_is_a_usage_error():
    with pytest.raises(UsageError, match="at least 64 px"):
        get_model("synNet", 32)
    with pytest.raises(UsageError, match="at least 29 px"):
        get_model("densenet121", 28)


def test_models_command_prints_the_registry(cli):
    code, out, _ = cli("models")
    assert code == 0
    assert "a multiply-add counts as 2 FLOPs" in out
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]] for line in out.splitlines() if line.count("│") >= 5}
    assert rows["resnet50"] == ["25,557,032", "8.18", "224x224"]
    assert rows["googlenet"][0] == "6,624,904" and rows["synNet"][2] == "224x224"
    assert set(rows) == {"densenet121", "googlenet", "resnet152", "resnet50", "synNet"}
