"""`cnnbench synth` (issue 11, part 2): a network generated to match a weighted mix (`synth validate`: test_synth_validation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime
import pytest
import torch
from torch import nn

from cnnbench.tools import synth
from cnnbench.engines import ONNX_OPSET
from cnnbench.models.registry import resolve_entry
from cnnbench.models.synnet import build_from_spec, dump_spec, load_spec

from helpers import REPO

SYNNET = REPO / "src/cnnbench/models/specs/synNet.json"


def _synth(cli, tmp_path, target: str, *extra: str, name: str = "proxy.json") -> tuple[dict, str]:
    out = tmp_path / name
    code, stdout, stderr = cli("synth", "--target", target, "--out", out, *extra)
    assert code == 0, stderr
    return json.loads(out.read_text()), stdout


def _goal_rows(spec_path: Path, target: str, size: int, gflops: float | None = None) -> list[dict]:
    from cnnbench.models.registry import resolve_any
    from cnnbench.tools.profile.profile_file import profile_model

    mix = synth.mix_of(synth.load_targets(target, size, 16, "fp32"), size)
    profile = profile_model(resolve_any(str(spec_path)), size, 16, "fp32")
    return synth.comparison(mix, profile, gflops * 1e9 / mix.flops_per_image if gflops else 1.0)


def _row(rows: list[dict], what: str) -> dict:
    return next(r for r in rows if r["what"].startswith(what))


def test_targets_parse_with_weights_normalised():
    assert synth.parse_targets("resnet50:0.4, densenet121:0.3,googlenet:0.3") == \
        [("resnet50", 0.4), ("densenet121", 0.3), ("googlenet", 0.3)]
    assert synth.parse_targets("resnet50,googlenet") == [("resnet50", 1.0), ("googlenet", 1.0)]
    targets = synth.load_targets("resnet50:3,googlenet:1", 64, 2, "fp32")
    assert [t.weight for t in targets] == [0.75, 0.25]


@pytest.mark.parametrize("target, message", [
    ("resnet50:0", "must be a positive number"),
    ("resnet50:-0.5,googlenet:1", "must be a positive number"),
    ("resnet50:lots", "must be a number"),
    ("resnet50:0.5,googlenet", "give every target a weight, or none"),
    ("resnet5o", "unknown model 'resnet5o'"),
    ("missing.json", "cannot read missing.json"),
    (":0.5", "names no model"),
])
def test_bad_targets_exit_2_with_one_line(cli, tmp_path, target, message):
    code, out, err = cli("synth", "--target", target, "--out", tmp_path / "x.json")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_unreadable_profile_target_exits_2(cli, tmp_path):
    broken = tmp_path / "profile_broken.json"
    broken.write_text(json.dumps({"format": "cnnbench-profile", "version": 1, "totals": "none"}))
    code, _, err = cli("synth", "--target", broken, "--out", tmp_path / "x.json")
    assert code == 2 and str(broken) in err and len(err.strip().splitlines()) == 1


def test_same_seed_same_spec_other_seed_other_layers(cli, tmp_path):
    first, _ = _synth(cli, tmp_path, "resnet50,googlenet", "--image-size", "64", name="a.json")
    again, _ = _synth(cli, tmp_path, "resnet50,googlenet", "--image-size", "64", name="b.json")
    other, _ = _synth(cli, tmp_path, "resnet50,googlenet", "--image-size", "64", "--seed", "1", name="c.json")
    first.pop("name"), again.pop("name"), other.pop("name")
    assert first == again
    assert first["groups"] != other["groups"]


# Each mix stresses one part: the four original models (residual and concatenation blocks), depthwise
# convolutions (MobileNetV3), grouped convolutions (ResNeXt), and a FLOP budget a third of the mix's.
@pytest.mark.parametrize("target, extra", [
    ("resnet50,densenet121,googlenet,resnet152", ()),
    ("mobilenet_v3_large", ()),
    ("resnext50_32x4d:1", ()),
    ("resnet50:0.4,densenet121:0.3,googlenet:0.3", ("--gflops", "0.5")),
])
def test_generated_network_matches_the_mix(cli, tmp_path, target, extra):
    spec, out = _synth(cli, tmp_path, target, "--image-size", "96", *extra)
    rows = _goal_rows(tmp_path / "proxy.json", target, 96, float(extra[1]) if extra else None)
    goals = [r for r in rows if r["met"] is not None]
    assert len(goals) >= 4 and all(r["met"] for r in goals), [(r["what"], r["off"]) for r in goals if not r["met"]]
    assert abs(goals[0]["off"]) <= 5 and abs(goals[1]["off"]) <= 5  # FLOPs, parameters: the rows the table shows
    distance = _row(rows, "intensity distance")
    assert distance["what"].startswith("intensity distance") and 0 < distance["got"] < 0.75
    assert "NO" not in out and "missed" not in out


def test_budget_takes_layers_away_rather_than_thinning_them(cli, tmp_path):
    full, _ = _synth(cli, tmp_path, "resnet50", "--image-size", "64", name="full.json")
    small, _ = _synth(cli, tmp_path, "resnet50", "--image-size", "64", "--gflops", "0.2", name="small.json")
    assert small["synth"]["layers"] < full["synth"]["layers"] / 2
    widths = [layer["filters"] for g in small["groups"] for layer in g["layers"] if layer["type"] == "conv"]
    assert max(widths) >= 256  # resnet50's widths survive at a quarter of its FLOPs


def test_the_original_synnet_as_target_comes_back_as_itself(cli, tmp_path):
    _synth(cli, tmp_path, str(SYNNET), "--image-size", "224")
    rows = _goal_rows(tmp_path / "proxy.json", str(SYNNET), 224)
    assert rows[0]["off"] == pytest.approx(0, abs=0.01) and _row(rows, "intensity distance")["got"] < 1e-3


def test_a_profile_file_stands_for_its_model(cli, tmp_path):
    profile = tmp_path / "profile_resnet18.json"
    assert cli("profile", "resnet18", "--image-size", "64", "--out", profile)[0] == 0
    from_model, _ = _synth(cli, tmp_path, "resnet18", "--image-size", "64", name="m.json")
    from_file, _ = _synth(cli, tmp_path, str(profile), "--image-size", "64", name="f.json")
    for spec in (from_model, from_file):
        spec.pop("name"), spec.pop("about"), spec["synth"].pop("targets")
    assert from_model == from_file


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Constant folding:UserWarning")
def test_generated_spec_builds_trains_infers_and_exports_to_onnx(cli, tmp_path):
    spec, _ = _synth(cli, tmp_path, "densenet121,resnet50", "--image-size", "64", "--gflops", "0.1")
    kinds = {layer["type"] for g in spec["groups"] for layer in g["layers"]}
    assert {"residual", "dense", "conv", "globalpool"} <= kinds
    text = (tmp_path / "proxy.json").read_text()
    assert dump_spec(load_spec(tmp_path / "proxy.json")) == text  # the format round-trips
    torch.manual_seed(0)
    model = build_from_spec(spec)
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    loss = nn.functional.cross_entropy(model.train()(x), labels)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    path = tmp_path / "proxy.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=["images"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert session.run(None, {"images": x.numpy()})[0] == pytest.approx(expected, abs=1e-4)
    assert resolve_entry(str(tmp_path / "proxy.json")).name == "proxy"


def test_wasserstein_on_hand_computed_cases():
    assert synth.wasserstein([(0.0, 1.0)], [(1.0, 1.0)]) == pytest.approx(1.0)
    assert synth.wasserstein([(0.0, 1.0), (2.0, 1.0)], [(0.0, 2.0), (2.0, 2.0)]) == pytest.approx(0.0)
    # half the mass moved by 2: 1; weights are normalised on each side
    assert synth.wasserstein([(0.0, 1.0), (1.0, 1.0)], [(0.0, 5.0), (3.0, 5.0)]) == pytest.approx(1.0)
