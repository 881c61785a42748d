"""The Python API (issue 22): cnnbench.train / cnnbench.infer return the run's record for a name or an nn.Module,
validate as the CLI does with its messages, raise cnnbench.CnnbenchError, and write neither a checkpoint nor a
results folder unless asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnbench
from cnnbench.models import registry

SMALL = dict(batch_size=2, image_size=32, num_batches=2, warmup=1, device="cpu", no_telemetry=True)


def tiny(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


def files_here() -> list[str]:
    return sorted(str(p) for p in Path(".").rglob("*"))


def test_train_a_module_instance_returns_its_record_and_writes_nothing(tmp_path):
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    record = cnnbench.train(net, **SMALL)
    assert (record["kind"], record["model"], record["model_source"], record["status"]) == ("train", "Sequential", "python", "ok")
    assert record["images_per_sec"] > 0 and record["steady_steps"] == 2 and record["batch_size"] == 2
    assert record["config.no_checkpoint"] is True and record["config.results_dir"] is None
    assert files_here() == []  # no log_Sequential_2/ checkpoint, no results_train/
    # The run trained a copy: the caller's module is as it was, and no instance stays registered.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(name.startswith(registry.INSTANCE_PREFIX) for name in registry._INSTANCES)


def test_infer_a_module_instance_runs_its_own_weights_through_an_engine(tmp_path):
    net = tiny(classes=7)
    record = cnnbench.infer(net, engine="onnxruntime", **SMALL)
    assert (record["kind"], record["model_source"], record["engine"], record["status"]) == ("infer", "python", "onnxruntime", "ok")
    assert record["guard_ok"] is True and record["images_per_sec"] > 0
    assert record["weights"] == "the module's own weights (Sequential instance)"
    assert files_here() == []


def test_infer_a_name_and_write_the_record_when_asked(tmp_path):
    record = cnnbench.infer("resnet18", random_weights=True, results_dir="out", **SMALL)
    assert (record["model"], record["model_source"], record["status"]) == ("resnet18", "torchvision", "ok")
    saved = [json.loads(line) for line in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    assert saved[-1]["images_per_sec"] == record["images_per_sec"] and record["config.results_dir"] == "out"


def test_train_writes_a_checkpoint_only_when_asked(tmp_path):
    cnnbench.train(tiny(), no_checkpoint=False, log_dir="ckpt", **SMALL)
    assert any((tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("options, argv", [
    (dict(batch_size="x"), ["--batch-size", "x"]),             # argparse's type check
    (dict(batch_size=0), ["--batch-size", "0"]),               # the tree's validation
    (dict(memory_format="nhcw"), ["--memory-format", "nhcw"]),  # argparse's choices
    (dict(precision="fp8"), ["--precision", "fp8"]),           # the run's own validation
])
def test_a_bad_option_raises_the_documented_error_with_the_clis_message(cli, options, argv):
    with pytest.raises(cnnbench.UsageError) as raised:
        cnnbench.infer("resnet18", random_weights=True, **{**SMALL, **options})
    assert isinstance(raised.value, cnnbench.CnnbenchError)
    code, out, err = cli("infer", "resnet18", "--random-weights", "--device", "cpu", *argv)
    assert code == 2 and str(raised.value) in err and len(err.strip().splitlines()) == 1


def test_unknown_options_and_models_are_one_line():
    with pytest.raises(cnnbench.UsageError, match=r"cnnbench.train: unknown option batchsize=8 \(did you mean batch_size"):
        cnnbench.train("resnet18", batchsize=8)
    with pytest.raises(cnnbench.UsageError, match=r"an on/off option; give compile=True or compile=False"):
        cnnbench.train("resnet18", compile="yes")
    with pytest.raises(cnnbench.UsageError, match=r"unknown model 'resnt18' \(did you mean resnet18\?\)"):
        cnnbench.train("resnt18", **SMALL)
    with pytest.raises(cnnbench.UsageError, match="not list"):
        cnnbench.train([nn.Linear(2, 2)], **SMALL)
    with pytest.raises(cnnbench.UsageError, match="num_accelerators > 1 launches"):
        cnnbench.train(tiny(), num_accelerators=2, **SMALL)


def test_a_registered_instance_does_not_cross_processes():
    reference = registry.register_instance(tiny())
    try:
        assert registry.resolve_entry(reference).source == "python"
        assert registry.register_instance(tiny()) == reference + "-2"
    finally:
        registry.unregister_instance(reference)
        registry.unregister_instance(reference + "-2")
    with pytest.raises(cnnbench.UsageError, match="exists only in the process that was given it"):
        registry.resolve_entry(reference)


def test_import_cnnbench_stays_light():
    code = ("import sys, cnnbench; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert issubclass(cnnbench.EngineRefused, cnnbench.UsageError); print(cnnbench.__version__)")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
