"""benchmarks/gpu_checks.sh, the one script a lent GPU machine runs: on this CPU it must skip every check
and exit 0, and its driver must keep to its time limits whatever a check does."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from helpers import REPO, run_process

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_checks  # noqa: E402  (a script beside record.py, not a package module)


def test_without_cuda_every_check_is_skipped_and_named_and_it_exits_0(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"  # absolute, outside the repository, run from another folder
    done = run_process(["bash", str(REPO / "benchmarks" / "gpu_checks.sh"), str(out)], env={"PYTHON": sys.executable},
                       cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    names = [c.name for c in gpu_checks.checks(out, tmp_path)]
    assert f"no CUDA device here: skipped {len(names)} checks: {', '.join(names)}" in done.stdout
    table = done.stdout.split("\nSummary\n")[1].splitlines()
    assert [line.split()[0] for line in table[:len(names)]] == names
    assert all(line.endswith("skipped: no CUDA device") for line in table[:len(names)])
    saved = sorted(p.suffix for p in out.glob("gpu_checks-*"))
    assert saved == [".jsonl", ".txt"]  # the summary, with its environment (record.py)
    assert "skipped: no CUDA device" in next(out.glob("gpu_checks-*.txt")).read_text()


def _check(name, code, limit=5, summarise=None):
    return gpu_checks.Check(name, limit, [sys.executable, "-c", code], summarise or (lambda out, log: [(name, log.strip())]))


def test_a_check_over_its_limit_is_stopped_with_its_children_and_the_rest_still_run(tmp_path, monkeypatch):
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
            "time.sleep(60)")
    todo = [_check("hangs", hang, limit=2), _check("prints", "print('figure 42')"),
            _check("unreadable", "print('x')", summarise=lambda out, log: [("unreadable", {}["images_per_sec"])])]
    rec = gpu_checks.Recorder("gpu_checks.py", tmp_path)
    start = time.monotonic()
    rows = dict(gpu_checks.run_all(todo, tmp_path, dict(os.environ), rec))
    assert time.monotonic() - start < 20
    assert rows["hangs"].startswith("stopped after 2 s (see hangs.log)")
    assert rows["prints"].startswith("figure 42")
    assert rows["unreadable"].startswith("ok, but no figures read (KeyError")
    with pytest.raises(ProcessLookupError):  # torchrun's workers or compile workers would be left behind otherwise
        for _ in range(50):
            os.kill(int(pid_file.read_text()), 0)
            time.sleep(0.1)


def test_checks_past_the_budget_are_skipped_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_checks, "BUDGET_SECONDS", 16)
    todo = [_check("first", "import time; time.sleep(2); print('done')", limit=10), _check("second", "print('never')")]
    rows = dict(gpu_checks.run_all(todo, tmp_path, dict(os.environ), gpu_checks.Recorder("gpu_checks.py", tmp_path)))
    assert rows["first"].startswith("done")
    assert rows["second"] == "skipped: the 8-minute budget is spent"


def test_the_summary_reads_the_fields_the_checks_write(tmp_path, cli, tiny_spec):
    # Real records and saved rows, made on the CPU, read by the same functions the GPU run uses: a renamed
    # field shows here, not after a lent GPU's minutes are spent.
    tiny = [str(tiny_spec), "--image-size", "16", "--batch-size", "2", "--num-batches", "2", "--warmup", "1"]
    assert cli("train", *tiny, "--precision", "bf16", "--results-dir", tmp_path / "train_bf16_eager")[0] == 0
    assert cli("infer", *tiny, "--random-weights", "--precision", "bf16", "--results-dir", tmp_path / "infer_bf16_eager")[0] == 0
    saved = tmp_path / "benchmark_results"
    saved.mkdir()
    (saved / "input_pipeline-20260101T000000Z.jsonl").write_text(json.dumps(
        {"kind": "summary", "speedup": 2.5, "against": "cpu-decode, 16 workers", "gpu_decoder": "torchvision.io",
         "gpu_images_per_sec": 9000.0, "check_passed": True, "mean_diff_percent_of_range": 0.4}) + "\n")
    (saved / "distributed_scaling-20260101T000000Z.jsonl").write_text(json.dumps(
        {"kind": "summary", "ddp_x1_overhead_percent": 1.25}) + "\n")
    by_name = {c.name: c for c in gpu_checks.checks(tmp_path, tmp_path)}
    rows = {name: value for check in ("train_bf16_eager", "infer_bf16_eager", "jpeg_decode", "nccl_world_1")
            for name, value in by_name[check].summarise(tmp_path, "")}
    hardware = r"MFU [\d.]+% of [\d.]+ \(measured: .+\); energy (rapl|unavailable: .+)"  # the CPU's; NVML's on a GPU
    assert re.fullmatch(rf"[\d,]+ img/s ±\d+, {hardware}; peak \d+ MiB \(allocator\); status ok", rows["train_bf16_eager"])
    assert re.fullmatch(rf"[\d,]+ img/s, p99 [\d.]+ ms, guard ok; {hardware}; peak \d+ MiB \(allocator\)",
                        rows["infer_bf16_eager"])
    assert rows["input_pipeline"] == ("nvJPEG (torchvision.io) 9,000 img/s, 2.50x cpu-decode, 16 workers; "
                                      "same batch: yes (mean diff 0.400% of range)")
    assert rows["distributed_scaling"] == "distributed path x1 costs +1.25% against plain (target < 2%)"
    loadgen = by_name["loadgen_offline_bf16_compile"]
    assert loadgen.summarise(tmp_path, "cnnbench: error: --loadgen needs MLCommons LoadGen\n") == [
        ("loadgen_offline_bf16_compile", "cnnbench: error: --loadgen needs MLCommons LoadGen")]  # no record: the log's line
    assert cli("infer", *tiny, "--random-weights", "--loadgen", "--min-duration", "0.2", "--min-queries", "1",
               "--results-dir", tmp_path / "loadgen_offline_bf16_compile")[0] == 0
    [(_, row)] = loadgen.summarise(tmp_path, "")
    assert re.fullmatch(rf"LoadGen Offline [\d,]+ samples/s \((VALID|INVALID), not MLPerf-compliant: shortened\), \d+% of MLPerf "
                        rf"v5.0's ~95,000 \(H200, TensorRT int8\); {hardware}", row), row
    suite = by_name["gpu_suite"].summarise(tmp_path, "....\n==== 30 passed, 2 skipped in 95.1s ====\n")
    assert suite == [("gpu_suite", "30 passed, 2 skipped in 95.1s")]
