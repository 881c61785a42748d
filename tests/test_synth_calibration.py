"""`cnnbench synth --calibrate` (issue 25, item 2) and fewer, wider layers under a small budget (item 3)."""

from __future__ import annotations

import json

import pytest
import torch

from cnnbench.models.registry import resolve_any
from cnnbench.tools import synth, synth_calibration
from cnnbench.tools.profile.profile_file import profile_model
from cnnbench.tools.synth import Tuning
from cnnbench.tools.synth_calibration import KINDS, Setting, adjust, calibrate

SIZE = 64  # static figures, counted on the meta device


def _fake(shares: dict[str, float], batch: int = 2, seconds: float = 0.01) -> dict:
    """A measure() result whose labelled time splits by `shares` (kinds of KINDS, each given to its first type)."""
    time_share = {KINDS[k][0]: v for k, v in shares.items()}
    figures = {"labelled_seconds_per_step": seconds, "time_share": time_share}
    return {"batch_size": batch, "forward": figures, "backward": figures}


def _shares(**given) -> dict[str, float]:
    out = dict.fromkeys(KINDS, 0.0)
    out.update(given)
    out["compute"] = 1.0 - sum(v for k, v in out.items() if k != "compute")
    return out


def _convs(spec: dict) -> list[dict]:
    out = []

    def walk(layers):
        for layer in layers:
            if layer["type"] == "conv":
                out.append(layer)
            walk(layer.get("body") or [])
            for branch in layer.get("branches") or []:
                walk(branch)
    for group in spec["groups"]:
        walk(group["layers"])
    return out


@pytest.fixture(scope="module")
def mix18():
    return synth.mix_of(synth.load_targets("resnet18", 32, 2, "fp32"), 32)


def _setting(rounds=4, tolerance=0.05) -> Setting:
    return Setting("cpu", "fp32", 32, 2, 0, 1, rounds, tolerance)


def _make(mix):
    return lambda tuning=Tuning(): synth.generate(mix, seed=0, layers=None, gflops=None, name="p", tuning=tuning)


def _placement():
    from cnnbench.core.placement import resolve_placement

    return resolve_placement("cpu", "fp32")


def test_the_mix_shares_are_the_targets_weighted_by_weight_and_time():
    a, b = _shares(batchnorm=0.2), _shares(batchnorm=0.4)
    mix = synth_calibration.mix_shares([(0.5, a, 1.0), (0.5, b, 3.0)])  # b takes 3x a's time per image
    assert mix["batchnorm"] == pytest.approx((0.2 * 1 + 0.4 * 3) / 4)
    shares, per_image = synth_calibration.shares_of(_fake(_shares(add=0.1), batch=4, seconds=0.02))
    assert shares["add"] == pytest.approx(0.1) and per_image == pytest.approx(0.04 / 4)


def test_adjust_moves_each_multiplier_toward_the_mix():
    target = _shares(batchnorm=0.20, activation=0.05, add=0.06, concat=0.02, gate=0.04)
    proxy = _shares(batchnorm=0.30, activation=0.10, add=0.01, concat=0.02, gate=0.01)
    t = adjust(Tuning(), target, proxy, 0.05)
    assert t.layers < 1  # too much batch norm and activation time: fewer, wider layers
    assert t.layers == pytest.approx(max(0.5, (0.25 / 0.40) ** 2))
    assert t.add == 1.0 and t.gate == 1.0  # off by 5 and 3 pp: within the tolerance, left alone
    t = adjust(Tuning(), target, proxy, 0.02)
    assert t.add == pytest.approx(2.0) and t.gate == pytest.approx(2.0)  # (x6 and x4 capped at STEP_LIMIT)
    assert t.concat == 1.0
    assert adjust(Tuning(), proxy, target, 0.02).layers > 1  # the other way round: more, narrower layers


def test_the_multipliers_change_the_network_and_keep_its_flops(mix18):
    base = synth.generate(mix18, seed=0, layers=None, gflops=None, name="p")
    more = synth.generate(mix18, seed=0, layers=None, gflops=None, name="p", tuning=Tuning(layers=2.0))
    no_add = synth.generate(mix18, seed=0, layers=None, gflops=None, name="p", tuning=Tuning(add=0.0))
    assert len(_convs(more)) > len(_convs(base))
    assert "residual" in json.dumps(base) and '"residual"' not in json.dumps(no_add)
    flops = [_profiled(spec)["totals"]["flops_per_image"] for spec in (base, more)]
    assert flops[1] == pytest.approx(flops[0], rel=0.05)


def test_gates_are_added_and_removed_by_their_multiplier():
    picks = [synth.Proto("conv", (1, 1), 1, 8, 8, 1, 1.0, i / 9, 0.1, 1.0, gate=(4.0, "relu", "sigmoid") if i < 2 else None)
             for i in range(10)]
    assert sum(p.gate is not None for p in synth.regated(picks, 2.0, (4.0, "relu", "sigmoid"))) == 4
    assert sum(p.gate is not None for p in synth.regated(picks, 0.5, None)) == 1
    assert synth.regated(picks, 1.0, None) == picks


def _profiled(spec: dict, tmp=None) -> dict:
    import tempfile
    from pathlib import Path

    from cnnbench.models.synnet import dump_spec

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.json"
        path.write_text(dump_spec(spec))
        return profile_model(resolve_any(str(path)), spec["synth"]["image_size"], 1)


def test_converges_when_the_measurement_says_so(mix18):
    """The fake proxy's batch norm share grows with its conv count (as narrower layers' do); the mix's is lower, so
    the loop takes layers away until it is within the tolerance."""
    base = len(_convs(_make(mix18)()))

    def measure(entry, setting, placement):
        if entry.name == "resnet18":
            return _fake(_shares(batchnorm=0.20))
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in entry.build(32).modules())
        return _fake(_shares(batchnorm=0.30 * (convs / base) ** 0.5))

    spec, record = calibrate(mix18.targets, _make(mix18), Tuning(), _setting(), _placement(), measure)
    assert record["met"] is True and 1 <= record["rounds"] <= 4
    assert record["proxy_shares_before"]["batchnorm"] == pytest.approx(0.30)
    assert abs(record["proxy_shares_after"]["batchnorm"] - 0.20) <= 0.05
    assert record["tuning"]["layers"] < 1 and len(_convs(spec)) < base
    assert spec["calibration"] == record and record["target_shares"]["batchnorm"] == pytest.approx(0.20)


def test_met_false_after_the_rounds_when_it_cannot_get_there(mix18, capsys):
    def measure(entry, setting, placement):  # the proxy's adds take 30% whatever the multiplier does
        return _fake(_shares(add=0.05) if entry.name == "resnet18" else _shares(add=0.30))

    spec, record = calibrate(mix18.targets, _make(mix18), Tuning(), _setting(rounds=3), _placement(), measure)
    assert record["met"] is False and record["rounds"] == 3 and record["max_rounds"] == 3
    # no round did better, so the proxy kept (and recorded) is the first, at the mix's own structure
    assert record["worst_off_after"] == pytest.approx(0.25) and record["tuning"]["add"] == 1.0
    synth_calibration.show(record)
    assert "calibration not met after 3 round(s)" in capsys.readouterr().out


def test_the_cli_records_the_calibration_in_the_spec(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(synth_calibration, "measure_model", lambda entry, setting, placement: _fake(_shares(batchnorm=0.1)))
    out = tmp_path / "cal.json"
    code, stdout, err = cli("synth", "--target", "resnet18", "--image-size", "32", "--batch-size", "2", "--calibrate",
                            "--device", "cpu", "--out", out)
    assert code == 0, err
    record = json.loads(out.read_text())["calibration"]
    assert record["met"] is True and record["rounds"] == 0 and record["tolerance"] == 0.05
    assert {"device", "device_name", "precision", "batch_size", "image_size", "target_shares", "proxy_shares_before",
            "proxy_shares_after", "when"} <= set(record)
    assert record["device"] == "cpu" and record["precision"] == "fp32" and record["image_size"] == 32
    assert "Calibrated in 0 round(s)" in stdout


def test_a_real_calibration_on_the_cpu(cli, tmp_path):
    """End to end with torch.profiler: tiny, one profiled step; whatever it measures, the record is whole."""
    out = tmp_path / "real.json"
    code, stdout, err = cli("synth", "--target", "resnet18", "--image-size", "32", "--batch-size", "2", "--calibrate",
                            "--calibrate-rounds", "1", "--calibrate-steps", "1", "--warmup", "0", "--device", "cpu",
                            "--gflops", "0.02", "--out", out)
    assert code == 0, err
    record = json.loads(out.read_text())["calibration"]
    for key in ("target_shares", "proxy_shares_before", "proxy_shares_after"):
        assert sum(record[key].values()) == pytest.approx(1.0, abs=1e-3) and record[key]["compute"] > 0
    assert record["rounds"] <= 1 and isinstance(record["met"], bool)
    assert record["met"] == (record["worst_off_after"] <= 0.05)
    if not record["met"]:
        assert "calibration not met after" in stdout + err


def test_onnxruntime_s_profile_gives_shares_of_the_measured_runs_only():
    """The warm-up runs' nodes are dropped; a fused conv counts as a conv, an unknown operator as other."""
    from cnnbench.tools.profile.onnxruntime_time import figures

    def node(ts, op, dur):
        return {"cat": "Node", "name": f"{op}_1_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"name": "model_run", "ts": 0, "dur": 100}, node(10, "Conv", 90),            # the warm-up run
              {"name": "model_run", "ts": 200, "dur": 100}, node(210, "FusedConv", 60), node(280, "Concat", 20),
              node(290, "DequantizeLinear", 20)]
    found = figures(events, warmup=1, steps=1, batch_size=2)
    assert found["forward"]["time_share"] == pytest.approx({"conv": 0.6, "concat": 0.2, "other": 0.2})
    assert found["forward"]["labelled_seconds_per_step"] == pytest.approx(100e-6)
    shares, _ = synth_calibration.shares_of(found)
    assert shares["compute"] == pytest.approx(0.6) and shares["concat"] == pytest.approx(0.2)


def test_an_int8_calibration_on_onnxruntime_records_its_engine(cli, tmp_path):
    """End to end on ONNX Runtime's CPU provider at int8: tiny, one profiled run; the record names the engine."""
    out = tmp_path / "ort.json"
    code, stdout, err = cli("synth", "--target", "resnet18", "--image-size", "32", "--batch-size", "2", "--calibrate",
                            "--calibrate-engine", "onnxruntime", "--precision", "int8", "--calibrate-rounds", "1",
                            "--calibrate-steps", "1", "--warmup", "1", "--gflops", "0.02", "--out", out)
    assert code == 0, err
    record = json.loads(out.read_text())["calibration"]
    assert record["engine"].startswith("onnxruntime inference") and record["precision"] == "int8"
    for key in ("target_shares", "proxy_shares_before", "proxy_shares_after"):
        assert sum(record[key].values()) == pytest.approx(1.0, abs=1e-3) and record[key]["compute"] > 0


@pytest.mark.parametrize("args, message", [
    (["--calibrate-rounds", "0"], "--calibrate-rounds must be an integer of at least 1, got 0"),
    (["--calibrate-tolerance", "0"], "--calibrate-tolerance is a share of a step's time between 0 and 1"),
    (["--calibrate-tolerance", "1"], "--calibrate-tolerance is a share of a step's time between 0 and 1"),
    (["--calibrate", "--precision", "int8"], "--calibrate measures training steps in eager PyTorch"),
    (["--calibrate", "--calibrate-engine", "onnxruntime", "--precision", "bf16"],
     "--calibrate-engine onnxruntime measures fp32 or int8 inference, not bf16"),
    (["--calibrate", "--calibrate-engine", "onnxruntime", "--device", "cuda"],
     "--calibrate-engine onnxruntime measures ONNX Runtime's CPU provider; use --device cpu"),
])
def test_bad_calibration_options_are_one_line(cli, tmp_path, args, message):
    code, _, err = cli("synth", "--target", "resnet18", "--out", tmp_path / "p.json", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_profile_file_cannot_be_calibrated_against(cli, tmp_path):
    from cnnbench.tools.profile.profile_file import write_profile

    path = tmp_path / "profile_r.json"
    write_profile(profile_model(resolve_any("resnet18"), 32, 1), path)
    code, _, err = cli("synth", "--target", path, "--calibrate", "--out", tmp_path / "p.json")
    assert code == 2 and "is a profile file" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- fewer, wider layers under a small budget


@pytest.fixture(scope="module")
def mix50():
    return synth.mix_of(synth.load_targets("resnet50", SIZE, 16, "fp32"), SIZE)


def test_a_quarter_flop_proxy_has_fewer_wider_convs_and_meets_the_static_goals(mix50):
    quarter = mix50.flops_per_image / 4 / 1e9
    full = synth.generate(mix50, seed=0, layers=None, gflops=None, name="full")
    wider = synth.generate(mix50, seed=0, layers=None, gflops=quarter, name="wider", small_budget="wider")
    batch = synth.generate(mix50, seed=0, layers=None, gflops=quarter, name="batch")  # the default
    mean_width = lambda spec: sum(c["filters"] for c in _convs(spec)) / len(_convs(spec))  # noqa: E731
    assert len(_convs(wider)) < len(_convs(batch)) < len(_convs(full))
    assert mean_width(wider) > mean_width(full)
    factor = synth.wider_factor(mix50, quarter * 1e9, "wider")
    assert factor == pytest.approx(max(0.5, 1 - 0.75 * synth.STEP_OVERHEAD_LAYERS / (mix50.mean_convs / 4)))
    assert wider["synth"]["batch_scale"] == 1 and batch["synth"]["batch_scale"] == 4
    assert wider["synth"]["small_budget"] == "wider" and wider["synth"]["layer_factor"] == pytest.approx(factor, abs=1e-4)
    rows = synth.comparison(mix50, _profiled(wider), 0.25)
    assert all(r["met"] for r in rows if r["what"] in ("GFLOPs per image", "parameters (M)")), rows
    assert synth.wider_factor(mix50, mix50.flops_per_image, "wider") == 1.0  # no budget below the mix's: no change
