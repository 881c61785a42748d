"""The original's root scripts, end to end with tiny settings."""

import pytest

from helpers import REPO, read_jsonl, run_process

QUICK = ["--image-size", "32", "--num-batches", "1", "--warmup", "0"]


def test_train_sh_sweeps_16_32_64_for_one_model(tmp_path):
    done = run_process([str(REPO / "train.sh"), "googlenet", *QUICK], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert [(r["model"], r["batch_size"]) for r in records] == [("googlenet", 16), ("googlenet", 32), ("googlenet", 64)]
    assert all((tmp_path / f"log_googlenet_{b}" / "checkpoint.pt").exists() for b in (16, 32, 64))


@pytest.mark.parametrize("script", ["train-all.sh", "run.sh"])
def test_sweep_scripts_build_the_tables(tmp_path, script):
    done = run_process([str(REPO / script), "--models", "googlenet", "--batch-sizes", "2", *QUICK], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "results_train" / "results.csv").read_text()
    assert table.splitlines()[2:4][0] == "model,batch 2" and table.splitlines()[3].startswith("googlenet,")
    if script == "run.sh":  # then inference from the checkpoints training wrote
        records = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
        assert [(r["model"], r["batch_size"], r["weights_source"], r["status"]) for r in records] == [("googlenet", 2, "checkpoint", "ok")]
        assert (tmp_path / "results_infer" / "results.csv").read_text().splitlines()[3].startswith("googlenet,")


@pytest.mark.parametrize("value, message", [
    ("two", "NUM_ACCELERATORS must be a positive integer, got 'two'"),
    ("0", "NUM_ACCELERATORS must be a positive integer, got '0'"),
    ("-1", "NUM_ACCELERATORS must be a positive integer, got '-1'"),
])
def test_num_accelerators_is_checked(tmp_path, value, message):
    done = run_process([str(REPO / "train.sh"), "googlenet", *QUICK], env={"NUM_ACCELERATORS": value}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == message
    assert not (tmp_path / "results_train").exists()


# NUM_ACCELERATORS=2 ./train.sh end to end: tests/test_distributed.py (it launches two gloo processes).
