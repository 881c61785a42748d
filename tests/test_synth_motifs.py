"""Issue 25, item 1: the operations around each convolution, in the profile, the spec format and the generator."""

from __future__ import annotations

import json

import pytest
import torch

from cnnbench.core.errors import UsageError
from cnnbench.models.registry import resolve_any
from cnnbench.models.synnet import Gate, SpecError, build_from_spec, normalize_spec
from cnnbench.tools import synth
from cnnbench.tools.profile.motifs import conv_motifs
from cnnbench.tools.profile.profile_file import load_profile, profile_model, write_profile

SIZE = 64  # counted on the meta device: the motifs do not depend on the size


@pytest.fixture(scope="module")
def profiles() -> dict[str, dict]:
    return {name: profile_model(resolve_any(name), SIZE, 1) for name in
            ("resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0")}


def test_resnet50_is_post_activation_with_add_merges(profiles):
    m = profiles["resnet50"]["motifs"]
    assert m["convs"] == 53 and m["order"] == {"pre": 0, "post": 53, "none": 0}
    assert m["merges"]["add"] == {"count": 16, "fan_in": {"2": 16}} and m["merges"]["concat"]["count"] == 0
    assert m["merge"]["add"] == 16 + 4  # each bottleneck's last conv, and the four projections
    assert m["gated"] == 0 and m["pool_before"]["maxpool"] == 2  # the stem's pool feeds layer1.0's conv1 and projection


def test_densenet121_is_pre_activation_with_wide_concatenations(profiles):
    m = profiles["densenet121"]["motifs"]
    # 58 dense layers (6 + 12 + 24 + 16): BN-ReLU-conv1x1 (pre) and conv3x3 (none after it); 3 transitions (pre)
    assert m["order"] == {"pre": 58 + 3, "post": 1, "none": 58}
    assert m["merge"]["concat"] == 58 and m["merge"]["add"] == 0
    assert max(int(k) for k in m["merges"]["concat"]["fan_in"]) > 2  # torch.cat of every earlier feature map
    assert m["pool_after"]["avgpool"] == 3  # the transitions' average pools
    assert set(m["levels"]) == {"1", "2", "3", "4", "5"}


def test_mobilenet_and_efficientnet_have_gates_and_separable_pairs(profiles):
    mobile, efficient = profiles["mobilenet_v3_large"]["motifs"], profiles["efficientnet_b0"]["motifs"]
    assert mobile["gates"]["count"] == mobile["gated"] == 8 and mobile["gates"]["function"] == {"hardsigmoid": 8}
    assert efficient["gates"]["count"] == efficient["gated"] == 16 and efficient["gates"]["function"] == {"sigmoid": 16}
    assert mobile["depthwise_pointwise"] == 15 and efficient["depthwise_pointwise"] == 16
    # the gates' own convs are not counted as the network's convs: 46 of mobilenet_v3_large's 62
    assert mobile["convs"] == 62 - 2 * 8
    motifs = conv_motifs(profiles["mobilenet_v3_large"]["layers"])
    gated = [m for m in motifs.values() if m["gate"]]
    assert all(m["pair"] == "depthwise" for m in gated)  # MobileNetV3 gates the depthwise conv's output
    assert {m["gate"]["activation"] for m in gated} == {"relu"} and all(m["gate"]["reduction"] >= 3 for m in gated)


def test_a_profile_without_motifs_still_loads_and_serves_as_a_target(cli, tmp_path, profiles):
    old = json.loads(json.dumps(profiles["resnet50"]))
    del old["motifs"]
    for layer in old["layers"]:
        del layer["inputs"]  # a profile made before issue 25
    path = tmp_path / "profile_old.json"
    write_profile(old, path)
    assert load_profile(path)["layers"][0]["type"] == "conv"
    code, out, err = cli("synth", "--target", path, "--image-size", str(SIZE), "--gflops", "0.2", "--out", tmp_path / "p.json")
    assert code == 0, err
    assert "conv share" not in out  # no motifs to compare against


def test_an_inconsistent_motifs_section_is_one_line(cli, tmp_path, profiles):
    bad = json.loads(json.dumps(profiles["resnet50"]))
    bad["motifs"]["order"]["pre"] = 5  # 58 counted for 53 convs
    path = tmp_path / "profile_bad.json"
    write_profile(bad, path)
    with pytest.raises(UsageError, match="motifs.order counts 58 convolutions, not motifs.convs"):
        load_profile(path)
    code, _, err = cli("synth", "--target", path, "--out", tmp_path / "p.json")
    assert code == 2 and len(err.strip().splitlines()) == 1


def _layers(spec: dict) -> list[dict]:
    """Every layer of a spec, blocks opened."""
    out = []
    for layer in (layer for group in spec["groups"] for layer in group["layers"]):
        out.append(layer)
        for body in [layer.get("body") or [], *(layer.get("branches") or [])]:
            out += _layers({"groups": [{"layers": body}]}) if body else []
    return out


def test_a_densenet_proxy_has_pre_activation_and_concatenations(cli, tmp_path):
    out = tmp_path / "dense.json"
    code, stdout, err = cli("synth", "--target", "densenet121", "--image-size", str(SIZE), "--gflops", "0.1", "--out", out)
    assert code == 0, err
    spec = json.loads(out.read_text())
    dense = [layer for layer in _layers(spec) if layer["type"] == "dense"]
    opened = [d for d in dense if d["body"][0]["type"] == "batch_norm" and d["body"][1]["type"] == "activation"]
    assert dense and len(opened) >= len(dense) / 2  # as DenseNet's layers, most open with BN-ReLU
    motifs = profile_model(resolve_any(str(out)), SIZE, 1)["motifs"]
    assert motifs["order"]["pre"] >= 0.35 * motifs["convs"] and motifs["merge"]["concat"] >= 0.35 * motifs["convs"]
    assert "conv share: pre-activation" in stdout and "missed" not in stdout


def test_a_mobilenet_proxy_has_gates_that_build_and_train(cli, tmp_path):
    out = tmp_path / "mobile.json"
    # 128 px: at 64 its classifier's two linear layers (12% of the FLOPs there) are more than a spec can hold
    code, stdout, err = cli("synth", "--target", "mobilenet_v3_large", "--image-size", "128", "--out", out)
    assert code == 0, err
    spec = json.loads(out.read_text())
    gates = [layer for layer in _layers(spec) if layer["type"] == "gate"]
    assert gates and {g["function"] for g in gates} == {"hardsigmoid"}
    model = build_from_spec(spec, SIZE)
    assert sum(isinstance(m, Gate) for m in model.modules()) == len(gates)
    loss = model.train()(torch.randn(2, 3, SIZE, SIZE)).logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert "conv share: gated" in stdout and "missed" not in stdout


def test_a_gate_scales_each_channel_by_its_squeeze_excitation():
    spec = {"name": "g", "input": {"height": 8, "width": 8, "channels": 3}, "groups": [{"name": "a", "layers": [
        {"type": "conv", "filters": 16, "kernel": 3, "batch_norm": False, "activation": "none"},
        {"type": "gate", "reduction": 4, "function": "sigmoid", "activation": "silu"}]}],
        "head": {"fully_connected": {"outputs": 2}}}
    model = build_from_spec(spec).eval()
    gate = next(m for m in model.modules() if isinstance(m, Gate))
    assert (gate.reduce.in_channels, gate.reduce.out_channels, gate.expand.out_channels) == (16, 4, 16)
    x = torch.randn(2, 16, 8, 8)
    scale = torch.sigmoid(gate.expand(torch.nn.functional.silu(gate.reduce(x.mean((2, 3), keepdim=True)))))
    assert torch.allclose(gate(x), x * scale)
    assert normalize_spec(spec)["groups"][0]["layers"][1] == {"type": "gate", "reduction": 4, "activation": "silu",
                                                             "function": "sigmoid"}


@pytest.mark.parametrize("gate, message", [
    ({"reduction": 0.5}, "'reduction' (channels / squeezed channels) must be a number of at least 1"),
    ({"function": "tanh"}, "'function' must be one of 'sigmoid', 'hardsigmoid'"),
    ({"squeeze": 4}, "unknown key 'squeeze'"),
])
def test_bad_gates_are_one_line(gate, message):
    spec = {"input": {"height": 8, "width": 8, "channels": 3},
            "groups": [{"name": "a", "layers": [{"type": "conv", "filters": 8, "kernel": 3}, {"type": "gate", **gate}]}]}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalize_spec(spec)


def test_old_profiles_make_the_same_kind_of_network_as_before(profiles):
    """Without dataflow the generator falls back to the mix's conv-BN-activation and makes no gates."""
    old = json.loads(json.dumps(profiles["mobilenet_v3_large"]))
    for layer in old["layers"]:
        del layer["inputs"]
    old["motifs"] = None
    mix = synth.mix_of([synth.Target("old", 1.0, old)], SIZE)
    spec = synth.generate(mix, seed=0, layers=None, gflops=None, name="old")
    assert mix.motif_shares is None and not [l for l in _layers(spec) if l["type"] in ("gate", "batch_norm")]


def test_a_small_budget_records_and_prints_the_batch_size_that_keeps_the_overhead_share(cli, tmp_path):
    out = tmp_path / "small.json"
    code, stdout, err = cli("synth", "--target", "resnet50", "--image-size", str(SIZE), "--gflops", "0.17", "--out", out)
    assert code == 0, err
    mix_flops = synth.mix_of(synth.load_targets("resnet50", SIZE, 16, "fp32"), SIZE).flops_per_image
    assert json.loads(out.read_text())["synth"]["batch_scale"] == round(mix_flops / 0.17e9) == 4
    assert "Run it at 4x the targets' batch size (targets at 16, this proxy at 64)" in stdout
    assert synth.batch_scale(mix_flops, mix_flops) == synth.batch_scale(mix_flops, 2 * mix_flops) == 1
