import contextlib
import csv
import io
import json
import os

import pytest

from cnnbench.core import files, store
from cnnbench.cli import main
from conftest import TINY_SPEC
from helpers import TINY, read_jsonl


def _record(model, batch, system, accel, status="ok", **extra):
    return {"kind": "train", "model": model, "batch_size": batch, "precision": "fp32", "status": status,
            "system_images_per_sec": system, "images_per_sec": accel, "steady_seconds": [0.1, 0.2], **extra}


def test_results_csv_has_the_original_two_tables(tmp_path):
    for rec in [_record("resnet50", 32, 10.0, 20.0), _record("googlenet", 16, 30.0, 60.0),
                _record("resnet50", 16, 5.0, 9.0), _record("synNet", 16, None, None, status="oom")]:
        store.append_record(tmp_path, rec)
    text = (tmp_path / "results.csv").read_text()
    first, second = text.split("\n\n\n\n")
    rows = list(csv.reader(io.StringIO(first)))
    assert rows[0] == ["System performance, unit is images/second"]
    assert rows[2] == ["model", "batch 16", "batch 32"]
    # the original's row order: googlenet, resnet50, resnet152, densenet121, synNet
    assert rows[3:] == [["googlenet", "30.00", ""], ["resnet50", "5.00", "10.00"], ["synNet", "OOM", ""]]
    rows = list(csv.reader(io.StringIO(second)))
    assert rows[0] == ["Approximate accelerator performance, unit is images/second"]
    assert rows[3:] == [["googlenet", "60.00", ""], ["resnet50", "9.00", "20.00"], ["synNet", "OOM", ""]]


def test_runs_csv_is_tidy_with_every_field(tmp_path):
    store.append_record(tmp_path, _record("resnet50", 16, 1.0, 2.0, extra_field="x"))
    store.append_record(tmp_path, _record("googlenet", 16, float("nan"), 3.0))
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert [r["model"] for r in rows] == ["resnet50", "googlenet"]
    assert rows[0]["extra_field"] == "x" and rows[1]["extra_field"] == ""
    assert json.loads(rows[0]["steady_seconds"]) == [0.1, 0.2]
    assert read_jsonl(tmp_path / "runs.jsonl")[1]["system_images_per_sec"] is None  # NaN is stored as null


def test_rotation_moves_old_results_aside(tmp_path):
    old = tmp_path / "results_train"
    old.mkdir()
    (old / "marker").write_text("old")
    moved = store.rotate(old)
    assert not old.exists() and (moved / "marker").read_text() == "old"
    assert moved.name.startswith("results_train_")
    old.mkdir()
    assert store.rotate(old) != moved  # a second rotation in the same second never overwrites


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("previous")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


@pytest.fixture(scope="module")
def train_all(tmp_path_factory, cpu_calibration):
    """One `cnnbench train-all` in this process, shared by the two tests below (each configuration is a child
    process of some seconds): a registered model and a spec file x batch 1 and 2, over a previous results
    folder. resnet50 at 32 px and batch 1 fails inside its child (its last BatchNorm sees one value per
    channel in training), so the same sweep shows a failure recorded and the sweep going on. The sweep's
    calibration is the suite's (conftest.cpu_calibration)."""
    root = tmp_path_factory.mktemp("train_all")
    spec = root / "tiny.json"
    spec.write_text(json.dumps(TINY_SPEC))
    (root / "results_train").mkdir()
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)  # the default log_* and results_* paths land there
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # train-all.sh's command line (--plan auto --num-accelerators 1), options after it as there
            code = main(["train-all", "--plan", "auto", "--num-accelerators", "1", "--models", f"resnet50,{spec}",
                         "--batch-sizes", "1,2", "--image-size", "32", *TINY[4:]])
    finally:
        os.chdir(here)
    return {"root": root, "code": code, "out": out.getvalue(), "err": err.getvalue()}


def test_train_all_sweeps_rotates_and_writes_everything(train_all):
    root, out = train_all["root"], train_all["out"]
    assert train_all["code"] == 0, train_all["err"]
    assert "Plan: cpu+overrides" in out and "estimated" in out and "Sweep finished in" in out
    assert any(p.name.startswith("results_train_") for p in root.iterdir())
    files = {p.name for p in (root / "results_train").iterdir()}
    assert {"results.csv", "runs.csv", "runs.jsonl", "result_resnet50_2.txt", "result_tinyNet_1.txt"} <= files
    assert "Images/sec:" in (root / "results_train" / "result_tinyNet_2.txt").read_text()
    records = read_jsonl(root / "results_train" / "runs.jsonl")
    assert [(r["model"], r["batch_size"], r["status"]) for r in records] == [
        ("resnet50", 1, "failed"), ("resnet50", 2, "ok"), ("tinyNet", 1, "ok"), ("tinyNet", 2, "ok")]
    assert (root / "log_tinyNet_2" / "checkpoint.pt").exists()


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(train_all):
    # resnet50 at batch 1 failed inside its child; the sweep recorded the failure and ran the next configurations.
    root = train_all["root"]
    assert train_all["code"] == 0
    records = read_jsonl(root / "results_train" / "runs.jsonl")
    assert [r["status"] for r in records] == ["failed", "ok", "ok", "ok"]
    assert "exit code" in records[0]["reason"]
    assert "Expected more than 1 value per channel" in records[0]["reason"]  # the child's own error, named
    table = (root / "results_train" / "results.csv").read_text()
    assert "resnet50,failed," in table


def test_tables_are_rebuilt_from_every_json_line(tmp_path):
    # Lines written by another process (or by hand, from a fallback file) join the tables at the next append.
    (tmp_path / "runs.jsonl").write_text(json.dumps(_record("googlenet", 16, 30.0, 60.0)) + "\n")
    store.append_record(tmp_path, _record("resnet50", 32, 10.0, 20.0))
    rows = list(csv.reader(io.StringIO((tmp_path / "results.csv").read_text().split("\n\n\n\n")[0])))
    assert rows[3:] == [["googlenet", "30.00", ""], ["resnet50", "", "10.00"]]
    assert [r["model"] for r in csv.DictReader(open(tmp_path / "runs.csv"))] == ["googlenet", "resnet50"]
