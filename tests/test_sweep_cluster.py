"""Sweeps at scale (issue 24 section 1, issue 23 #6): --dry-run, --resume, --shard K/N, --repeat N, --strict,
duplicates merged, and two sweeps into one folder at once, in real processes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnbench.core import config, errors, store, tables
from cnnbench.tools import compare
from conftest import TINY_SPEC
from helpers import read_jsonl

STEPS = ["--num-batches", "2", "--warmup", "1", "--duration", "0.1", "--min-steady-steps", "1"]


@pytest.fixture
def root(tmp_path, monkeypatch, cpu_calibration):
    """A folder with the tiny spec, the current folder (the default log_* and results_* land there)."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_SPEC))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def _run(cli):
    return lambda root, *argv: cli(*argv)


def test_dry_run_prints_every_command_and_writes_nothing(root, _run):
    (root / "results_train").mkdir()
    before = sorted(p.name for p in root.rglob("*"))
    code, out, err = _run(root, "train-all", "--models", "tiny.json,tiny.json", "--batch-sizes", "2,4,2",
                          "--image-size", "16", *STEPS, "--dry-run")
    assert code == 0, err
    # duplicates merged, each with one warning line
    assert "WARNING: --models: tiny.json given more than once; running each once" in out
    assert "WARNING: --batch-sizes: 2 given more than once; running each once" in out
    commands = [line.strip().removeprefix("$ ") for line in out.splitlines() if line.strip().startswith("$ ")]
    assert len(commands) == 2 and "2 configurations" in out
    assert commands[0].startswith(f"{sys.executable} -m cnnbench train tiny.json --image-size 16 --log-dir log_tinyNet_2")
    assert "--batch-size 4" in commands[1]
    assert sorted(p.name for p in root.rglob("*")) == before  # no folder moved aside, no log, no lock file


def test_a_strict_sweep_exits_4_and_resume_reruns_only_what_did_not_end_ok(root, _run):
    # resnet50 at 32 px and batch 1 fails in its child (one value per channel in its last BatchNorm);
    # the tiny spec at batch 1 ends ok.
    argv = ["train-all", "--models", "tiny.json,resnet50", "--batch-sizes", "1", "--image-size", "32", *STEPS]
    code, out, _ = _run(root, *argv, "--strict")
    assert code == errors.EXIT_RUN_FAILED and "1 of 2 configurations failed: resnet50_1; exit 4 (--strict)" in out
    assert [(r["model"], r["status"]) for r in read_jsonl(root / "results_train" / "runs.jsonl")] == [
        ("tinyNet", "ok"), ("resnet50", "failed")]
    code, out, _ = _run(root, *argv, "--resume")
    assert code == 0  # not strict: a failed configuration is recorded, the sweep's exit is 0 as before
    assert "--resume: 1 of 2 configurations already ended ok in results_train; running the other 1" in out
    records = read_jsonl(root / "results_train" / "runs.jsonl")
    assert [(r["model"], r["status"]) for r in records] == [("tinyNet", "ok"), ("resnet50", "failed"), ("resnet50", "failed")]
    assert not [p for p in root.iterdir() if p.name.startswith("results_train_")]  # nothing moved aside
    logs = sorted(p.name for p in (root / "results_train").glob("result_*"))
    assert logs == ["result_resnet50_1.2.txt", "result_resnet50_1.txt", "result_tinyNet_1.txt"]  # one writer each
    # once everything ended ok there is nothing left to run, and nothing runs
    code, out, _ = _run(root, "train-all", "--models", "tiny.json", "--batch-sizes", "1", "--image-size", "32", *STEPS,
                        "--resume")
    assert code == 0 and "running the other 0" in out and len(read_jsonl(root / "results_train" / "runs.jsonl")) == 3


def test_a_different_configuration_is_not_taken_for_a_done_one(root, _run):
    _run(root, "train-all", "--models", "tiny.json", "--batch-sizes", "1", "--image-size", "16", *STEPS)
    code, out, _ = _run(root, "train-all", "--models", "tiny.json", "--batch-sizes", "1", "--image-size", "24", *STEPS,
                        "--resume", "--dry-run")
    assert code == 0 and "0 of 1 configurations already ended ok" in out


def test_repeats_run_in_separate_processes_and_their_spread_is_tabulated_and_compared(root, _run):
    code, out, err = _run(root, "train-all", "--models", "tiny.json", "--batch-sizes", "2", "--image-size", "16", *STEPS,
                          "--repeat", "3", "--no-checkpoint")
    assert code == 0, err
    records = read_jsonl(root / "results_train" / "runs.jsonl")
    assert [(r["repeat"], r["status"]) for r in records] == [(1, "ok"), (2, "ok"), (3, "ok")]
    logs = sorted(p.name for p in (root / "results_train").glob("result_*"))
    assert logs == [f"result_tinyNet_2_r{k}.txt" for k in (1, 2, 3)]  # a process (and its log) each
    assert not (root / "log_tinyNet_2").exists()  # --no-checkpoint passed through to every child
    text = (root / "results_train" / "results.csv").read_text()
    assert tables.REPEAT_TITLE in text
    row = next(r for r in csv.reader(io.StringIO(text)) if r[:2] == ["tinyNet", "accelerator"])
    mean, sd = tables.spread(records, "images_per_sec")[:2]
    assert row[2] == f"{mean:.2f} ± {sd:.2f} (3)"
    cfg = config.CompareConfig(base=str(root / "results_train"), new=str(root / "results_train"))
    (compared,) = compare.compare(cfg).rows
    assert compared.base["repeats"] == 3 and compared.base["images_per_sec_stderr"] == pytest.approx(sd / 3 ** 0.5)


def _records(figures: list[float], **extra) -> list[dict]:
    return [{"kind": "train", "model": "resnet50", "batch_size": 16, "precision": "fp32", "status": "ok",
             "images_per_sec": f, "images_per_sec_stderr": 0.001, "repeat": k, **extra} for k, f in enumerate(figures, 1)]


@pytest.mark.parametrize("base, new, verdict", [([100.0, 92.0, 108.0], [104.0, 96.0, 108.0], "within noise"),
                                                ([100.0, 100.2, 99.8], [104.0, 104.2, 103.8], "faster")])
def test_compare_judges_noise_from_the_spread_across_processes(tmp_path, base, new, verdict):
    # Within each run the noise is tiny (se 0.001), so each pair's 4% would be a change; the spread across
    # processes shows that with processes 8 apart it is noise, and with processes 0.2 apart it is not.
    for side, figures in (("base", base), ("new", new)):
        for record in _records(figures):
            store.append_record(tmp_path / side, record)
    cfg = config.CompareConfig(base=str(tmp_path / "base"), new=str(tmp_path / "new"), threshold=0.01)
    (row,) = compare.compare(cfg).rows
    assert row.verdict == verdict and row.base["repeats"] == 3
    assert "(3 processes)" in compare.markdown(compare.compare(cfg), cfg)


def test_shards_are_disjoint_and_together_complete():
    settings = [config.TrainSweepConfig(shard=f"{k}/3") for k in (1, 2, 3)]
    items = list(range(10))
    slices = [items[k - 1::n] for k, n in (s.shard_slice() for s in settings)]
    assert sorted(sum(slices, [])) == items
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(errors.UsageError, match="--shard"):
            config.TrainSweepConfig(shard=bad).validate()


# A real process running `cnnbench ARGV` with the suite's calibration handed in (the calibration is a
# ResNet-50 step of tens of seconds on a shared 2-core machine; every configuration still runs in its own child).
DRIVER = """
import json, sys
from cnnbench.recipes import estimate
rates = json.loads(sys.argv[1])
estimate._measured_in_child = lambda device: rates
from cnnbench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _start(root: Path, rates, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(rates), *argv], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _rates(cpu_calibration) -> dict:
    rates = cpu_calibration[0]
    return {"train_gflops": rates.train_gflops, "infer_gflops": rates.infer_gflops}


def test_two_shards_at_once_into_one_folder_run_each_configuration_once(root, cpu_calibration):
    (root / "shared").mkdir()
    (root / "shared" / "results").mkdir()  # an earlier folder: shards never move it aside
    (root / "shared" / "results" / "note.txt").write_text("kept")
    argv = ["train-all", "--models", "tiny.json", "--batch-sizes", "1,2", "--image-size", "16", *STEPS,
            "--results-dir", "shared/results", "--no-checkpoint"]
    shards = [_start(root, _rates(cpu_calibration), *argv, "--shard", f"{k}/2") for k in (2, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    assert "shard 2/2: 1 of 2 configurations" in outputs[0] and "shard 1/2: 1 of 2 configurations" in outputs[1]
    folder = root / "shared" / "results"
    records = read_jsonl(folder / "runs.jsonl")
    assert sorted(r["batch_size"] for r in records) == [1, 2] and {r["status"] for r in records} == {"ok"}
    assert (folder / "note.txt").read_text() == "kept" and sorted(p.name for p in (root / "shared").iterdir()) == [
        ".results.sweep.lock", "results"]
    assert sorted(p.name for p in folder.glob("result_*")) == [f"result_tinyNet_{b}.txt" for b in (1, 2)]
    (folder / "results.csv").unlink()
    done = subprocess.run([sys.executable, "-m", "cnnbench", "results", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO((folder / "results.csv").read_text().split("\n\n\n\n")[1])))
    assert rows[2] == ["model", "batch 1", "batch 2"] and all(rows[3][1:])


def test_two_sweeps_at_once_never_move_each_other_s_folder(root, cpu_calibration):
    """Issue 23 #6: the second sweep found the first's live folder and moved it aside; both wrote one log."""
    (root / "results_train").mkdir()
    (root / "results_train" / "runs.jsonl").write_text("")  # an earlier sweep's folder: moved aside once
    argv = ["train-all", "--models", "tiny.json", "--batch-sizes", "1,2", "--image-size", "16", *STEPS, "--no-checkpoint"]
    sweeps = [_start(root, _rates(cpu_calibration), *argv) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0], outputs
    joined = "\n".join(outputs)
    assert joined.count("Previous results moved to") == 1
    assert joined.count("Another sweep is writing into results_train: adding to it rather than moving it aside") == 1
    assert len([p for p in root.iterdir() if p.name.startswith("results_train_")]) == 1
    records = read_jsonl(root / "results_train" / "runs.jsonl")
    assert sorted(r["batch_size"] for r in records) == [1, 1, 2, 2]
    logs = sorted(p.name for p in (root / "results_train").glob("result_*"))
    assert logs == ["result_tinyNet_1.2.txt", "result_tinyNet_1.txt", "result_tinyNet_2.2.txt", "result_tinyNet_2.txt"]
    for log in logs:  # one process's output each: one command line, one record line
        text = (root / "results_train" / log).read_text()
        assert text.count("$ ") == 1 and text.count("Record: results_train/runs.jsonl") == 1, text


def test_synth_validate_refuses_a_target_named_twice_in_one_line(cli, tiny_spec):
    """Issue 23: --target googlenet:1,googlenet:2 was run twice; validate refuses it before any run."""
    code, out, err = cli("synth", "validate", tiny_spec, "--target", "googlenet:1,googlenet:2")
    assert code == 2 and "--target: a model is named twice (or a proxy is among its targets); name each once" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
