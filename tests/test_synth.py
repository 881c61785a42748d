"""`cnnbench synth` and `synth validate` (issue 11, parts 2 and 3): a network generated to match a weighted mix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnxruntime
import pytest
import torch
from torch import nn

from cnnbench.tools import synth, synth_validation
from cnnbench.engines import ONNX_OPSET
from cnnbench.models.registry import resolve_entry
from cnnbench.models.synnet import build_from_spec, dump_spec, load_spec

from helpers import REPO, cnnbench_process, read_jsonl

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


def test_spearman_on_hand_computed_cases():
    assert synth_validation.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert synth_validation.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert synth_validation.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert synth_validation.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # ties: mean ranks


def _run(name: str, setting: str, batch: int, ms: float, wall: float) -> synth_validation.Run:
    kind, _, precision = setting.rpartition("-")
    record = {"images_per_sec_from_mean_time": 1000.0 / ms, "wall_seconds": wall}
    s = synth_validation.Setting(setting, "train" if kind == "train" else "infer", None if kind == "train" else kind, precision)
    return synth_validation.Run(name, name, s, batch, None, record)


def test_speedup_errors_and_summary_arithmetic():
    models = [("p.json", "p", 0.0), ("a", "a", 0.75), ("b", "b", 0.25)]
    settings = [synth_validation.Setting("eager-fp32", "infer", "eager", "fp32"),
                synth_validation.Setting("onnxruntime-int8", "infer", "onnxruntime", "int8")]
    times = {("p", "eager-fp32"): 10.0, ("p", "onnxruntime-int8"): 4.0, ("a", "eager-fp32"): 12.0,
             ("a", "onnxruntime-int8"): 6.0, ("b", "eager-fp32"): 4.0, ("b", "onnxruntime-int8"): 1.0}
    runs = [_run(n, s, 8, ms, wall=1.0 if n == "p" else 2.0) for (n, s), ms in times.items()]
    rows = synth_validation.rows_of(runs, models, settings, [8], "eager-fp32")
    base, int8 = rows
    assert base["baseline"] and base["mix_ms_per_image"] == pytest.approx(0.75 * 12 + 0.25 * 4)
    assert int8["mix_ms_per_image"] == pytest.approx(4.75) and int8["mix_speedup"] == pytest.approx(10 / 4.75)
    assert int8["proxy_speedup"] == pytest.approx(2.5)
    assert int8["speedup_error_percent"] == pytest.approx((2.5 / (10 / 4.75) - 1) * 100)
    summary = synth_validation.summary_of(rows, runs, "p")
    assert summary["max_abs_speedup_error_percent"] == pytest.approx(abs(int8["speedup_error_percent"]))
    assert summary["time_ratio"] == pytest.approx(2 / 8) and summary["time_goal_met"]
    assert summary["speedup_goal_met"] is (abs(int8["speedup_error_percent"]) <= 15)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """One real validation: a tiny proxy against a tiny spec target, eager fp32 at batch 2 (two runs)."""
    folder = tmp_path_factory.mktemp("validate")
    target = folder / "target.json"
    target.write_text(json.dumps({"name": "target", "input": {"height": 32, "width": 32, "channels": 3},
                                  "groups": [{"name": "g", "layers": [{"type": "conv", "filters": 16, "kernel": [3, 3]},
                                                                      {"type": "maxpool"},
                                                                      {"type": "conv", "filters": 32, "kernel": [3, 3]},
                                                                      {"type": "globalpool"}]}],
                                  "head": {"fully_connected": {"outputs": 10}}}))
    made = cnnbench_process("synth", "--target", target, "--image-size", "32", "--out", folder / "proxy.json", cwd=folder)
    assert made.returncode == 0, made.stderr
    args = ["synth", "validate", folder / "proxy.json", "--target", target, "--configs", "eager-fp32",
            "--batch-sizes", "2", "--num-batches", "2", "--warmup", "1", "--results-dir", folder / "out"]
    return folder, args, cnnbench_process(*args, cwd=folder)


def test_validate_times_proxy_and_targets_and_records_the_comparison(validated):
    folder, _, done = validated
    assert done.returncode == 0, done.stderr[-2000:]
    runs = read_jsonl(folder / "out/runs/runs.jsonl")
    assert sorted(r["model"] for r in runs) == ["proxy", "target"] and all(r["status"] == "ok" for r in runs)
    records = read_jsonl(folder / "out/validation.jsonl")
    row, summary, synnet = records
    assert row["configuration"] == "eager-fp32" and row["baseline"] and row["proxy_speedup"] == 1.0
    assert row["proxy_ms_per_image"] > 0 and row["mix_ms_per_image"] == pytest.approx(row["targets_ms_per_image"]["target"])
    assert summary["configuration"] == "summary" and summary["proxy_wall_seconds"] > 0 and summary["targets_wall_seconds"] > 0
    assert synnet["configuration"] == "synNet-vs-four-models" and synnet["off_gflops_per_image"] > 0
    assert all(r["env.cpu_isa"] and r["record_version"] == 1 for r in records)
    assert "synNet.json against the equal mix" in done.stdout and "Spearman" in done.stdout
    assert "kind" in (folder / "out/validation.csv").read_text().splitlines()[0].split(",")
    assert not (folder / "out/runs/checkpoints/proxy_2").exists()  # checkpoints nobody reads are removed


def test_validate_reuses_matching_runs(validated):
    folder, args, _ = validated
    again = cnnbench_process(*args, "--reuse", cwd=folder)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reused") == 2 and len(read_jsonl(folder / "out/runs/runs.jsonl")) == 2
    first, second = read_jsonl(folder / "out/validation.jsonl")[0], read_jsonl(folder / "out/validation.jsonl")[3]
    assert second["proxy_ms_per_image"] == first["proxy_ms_per_image"]


@pytest.mark.parametrize("extra, message", [
    (["--configs", "eager-int4"], "is not a configuration that runs on cpu"),
    (["--configs", "onnxruntime-fp32", "--baseline", "eager-fp32"], "--baseline eager-fp32 is not among --configs"),
    (["--target", "PROFILE"], "a profile cannot be timed"),
    (["--batch-sizes", "0"], "--batch-sizes"),
])
def test_validate_bad_input_exits_2_with_one_line(cli, tmp_path, extra, message):
    spec = tmp_path / "proxy.json"
    spec.write_text(SYNNET.read_text())
    (tmp_path / "profile_x.json").write_text(json.dumps({"format": "cnnbench-profile", "version": 1}))
    extra = [str(tmp_path / "profile_x.json") if a == "PROFILE" else a for a in extra]
    target = [] if "--target" in extra else ["--target", "resnet50"]
    code, _, err = cli("synth", "validate", spec, *target, "--results-dir", tmp_path / "out", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_validate_plans_each_model_configuration_and_batch(tmp_path):
    from cnnbench.core.config import SynthValidateConfig

    cfg = SynthValidateConfig(spec=str(SYNNET), target="resnet50", compile_mode="default", num_batches=4, warmup=2)
    settings = synth_validation.parse_settings("train-fp32,compile-fp32,onnxruntime-int8", "cpu")
    models = synth_validation.runnable("resnet50", str(SYNNET))
    runs = synth_validation.plan_runs(cfg, models, settings, [2, 8], 64, tmp_path)
    assert len(runs) == 2 * 3 * 2 and [r.name for r in runs[:6]] == ["synNet"] * 6
    by = {(r.name, r.setting.name, r.batch): r.config for r in runs}
    assert by["resnet50", "compile-fp32", 8].compile_mode == "default"
    assert by["resnet50", "onnxruntime-int8", 2].compile_mode is None and by["resnet50", "onnxruntime-int8", 2].random_weights
    train = by["synNet", "train-fp32", 2]
    assert train.measure.batch_size == 2 and train.measure.num_batches == 4 and train.image_size == 64
    assert Path(train.log_dir).parent == tmp_path / "checkpoints"
