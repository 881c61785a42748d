"""Sweeps: children's command lines from their configs, plans, the time budget, defaults, SIGTERM."""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from cnnbench import cli

from cnnbench.core import config, errors

from cnnbench.recipes import estimate, sweep
from cnnbench.engines import table
from helpers import REPO, read_jsonl

QUICK = ["--image-size", "16", "--display-every", "1"]


def parse(*argv: str):
    args = cli.build_parser().parse_args([str(a) for a in argv])
    return cli.given_options(args), cli.given_options(args, "sweep.")


def test_a_child_command_line_rebuilds_the_same_config():
    given, _ = parse("train", "resnet50", "--batch-size", "8", "--channels-last", "--compile", "--flip", "0",
                     "--duration", "2.5", "--data-dir", "d", "--learning-rate", "0.01")
    cfg = config.build(config.TrainConfig, given)
    argv = ["train", *config.to_argv(cfg)]
    assert argv[:2] == ["train", "resnet50"]
    again = config.build(config.TrainConfig, parse(*argv)[0])
    assert again == cfg and again.placement.memory_format == "nhwc" and again.data.flip == 0.0


def test_defaults_live_in_the_config_tree_alone():
    # An option the user did not give is absent from the parse: the tree's default applies.
    given, settings = parse("infer-all", "--batch-sizes", "4")
    assert given == {} and settings == {"batch_sizes": "4"}
    assert config.build(config.InferConfig, given).results_dir == "results_infer"
    assert config.build(config.InferSweepConfig, settings).engines is None


def test_no_module_imports_the_cli_but_main():
    importers = []
    for path in (REPO / "src" / "cnnbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            if module == "cnnbench.cli" or (module == "cnnbench" and "cli" in names) or "cnnbench.cli" in names:
                importers.append(path.name)
    assert importers == ["__main__.py"]


def test_no_private_argparse_access_in_the_package():
    for path in (REPO / "src" / "cnnbench").rglob("*.py"):
        text = path.read_text()
        assert "._subparsers" not in text and "argparse._" not in text and "._actions" not in text, path


RATES = estimate.Rates("cpu", train_gflops=50.0, infer_gflops=50.0)


def _configurations(kind: str, *argv: str):
    """The planned configurations of `cnnbench KIND-all --models resnet50,googlenet ARGV` on a CPU, as the sweep plans them."""
    extra = ["--random-weights"] if kind == "infer" else []
    args = cli.build_parser().parse_args([f"{kind}-all", "--models", "resnet50,googlenet", *extra, *argv])
    given, swept = cli.given_options(args), cli.given_options(args, "sweep.")
    explicit = set(given) | {f"sweep.{k}" for k in swept}
    base = config.build(config.InferConfig if kind == "infer" else config.TrainConfig, given)
    settings = config.build(config.InferSweepConfig if kind == "infer" else config.TrainSweepConfig, swept)
    plan = sweep.choose_plan(kind, settings, explicit, torch.device("cpu"))
    runs = sweep.plan_configurations(kind, settings, base, explicit, plan, ["resnet50", "googlenet"],
                                     sweep.batch_sizes(plan, settings, explicit), torch.device("cpu"))
    for c in runs:
        c.estimated_seconds = estimate.configuration_seconds(c.run, kind, RATES)
    return plan, runs



def test_calibration_runs_the_model_in_a_child_process_only(cpu_calibration, monkeypatch):
    """The sweep's own process must not run a model: on a GPU that made a CUDA context and kept cached
    memory there for the whole sweep (issue 10). The suite's calibration (conftest.cpu_calibration, shared
    with the in-process sweeps) ran with a ResNet forward in this process failing it."""
    rates, commands = cpu_calibration
    assert commands == [[sys.executable, "-m", "cnnbench.recipes.estimate", "cpu"]]
    assert rates.device_type == "cpu" and rates.train_gflops > 0 and rates.infer_gflops > 0
    started = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: started.append(command))
    assert estimate.calibrate(torch.device("cpu"), "infer").infer_gflops == rates.infer_gflops  # once per process
    assert started == []
    assert not torch.cuda.is_initialized()


def test_a_calibration_that_fails_is_one_line_with_the_child_s_error():
    # conftest hides every GPU, so the child cannot run on cuda; this process never tries.
    with pytest.raises(errors.CnnbenchError) as failed:
        estimate.calibrate(torch.device("cuda"), "infer")
    message = str(failed.value)
    assert message.startswith("the sweep's calibration (a ResNet-50 step on cuda, `python -m cnnbench.recipes.estimate cuda`) "
                              "failed with exit code 1: ")
    assert "\n" not in message and "Traceback" not in message
    assert not torch.cuda.is_initialized()

def test_the_time_budget_is_spread_over_the_configurations():
    _, runs = _configurations("train", "--batch-sizes", "2,4")
    fitted = sweep.fit_budget(runs, 600.0, "train", RATES)
    assert sum(c.estimated_seconds for c in fitted) == pytest.approx(600.0, rel=0.01)
    durations = {c.run.measure.duration for c in fitted}
    assert len(durations) == 1 and durations.pop() > 0
    assert all(c.run.measure.warmup == 1 and c.run.measure.min_steady_steps == 2 for c in fitted)
    assert all("--duration" in c.argv and "--min-steady-steps" in c.argv for c in fitted)


def test_a_budget_too_small_runs_the_minimum_and_says_so(capsys):
    _, runs = _configurations("train", "--batch-sizes", "2,4")
    fitted = sweep.fit_budget(runs, 1.0, "train", RATES)
    assert "--time-budget 1 s cannot be kept" in capsys.readouterr().out
    assert all(c.run.measure.min_steady_steps == 2 and c.run.measure.warmup == 1 for c in fitted)


def test_quick_plan_runs_batch_16_with_a_short_guard_and_calibration():
    plan, runs = _configurations("infer", "--quick")
    assert plan.name == "quick"
    assert {c.run.measure.batch_size for c in runs} == {16}
    assert all(c.run.guard_batches == 1 and c.run.calib_batches == 2 and c.run.measure.duration == 2.0 for c in runs)


def test_explicit_batch_sizes_win_over_the_quick_plan():
    _, runs = _configurations("train", "--quick")
    assert {c.run.measure.batch_size for c in runs} == {16}
    _, runs = _configurations("train", "--quick", "--batch-sizes", "32")
    assert {c.run.measure.batch_size for c in runs} == {32}


def test_explicit_options_win_over_the_plan():
    plan, runs = _configurations("train", "--quick", "--warmup", "3")
    assert plan.name == "quick+overrides"
    assert all(c.run.measure.warmup == 3 and c.run.measure.duration == 3.0 for c in runs)


def test_the_cpu_plan_s_windows_stop_on_their_standard_error_unless_the_user_sets_one():
    plan, runs = _configurations("infer")
    assert plan.name == "cpu" and "0.5%" in plan.reason
    assert all(c.run.measure.stop_at_stderr == 0.5 and c.run.measure.min_steady_seconds == 3.0 for c in runs)
    assert all("--stop-at-stderr 0.5" in " ".join(c.argv) for c in runs)
    _, runs = _configurations("train")
    assert all(c.run.measure.stop_at_stderr == 0.5 and c.run.measure.min_steady_seconds == 6.0 for c in runs)
    for own in (["--duration", "30"], ["--num-batches", "50"]):  # the user's own window runs whole
        _, runs = _configurations("train", *own)
        assert all(c.run.measure.stop_at_stderr is None and "--stop-at-stderr" not in c.argv for c in runs)
    _, runs = _configurations("train", "--duration", "30", "--stop-at-stderr", "2")
    assert {c.run.measure.stop_at_stderr for c in runs} == {2.0}
    # the estimate ends a window of fast steps at its floor, of 0.2 s steps when 36 steps bring a 3% spread to
    # 0.5%, of slow steps at its duration
    m = _configurations("infer")[1][-1].run.measure
    assert [estimate._window(m, step) for step in (0.01, 0.2, 0.5)] == [3.0, pytest.approx(7.2), 10.0]
    loose = dataclasses.replace(m, stop_at_stderr=2.0)  # 3% spread to 2%: 2.25 steps, but the stop takes 10 at least
    assert estimate._window(loose, 0.5) == pytest.approx(5.0)
    with pytest.raises(errors.UsageError, match="--stop-at-stderr must be a percentage between 0 and 100"):
        config.MeasureConfig(stop_at_stderr=0).validate()


def test_a_checked_engine_s_guard_batch_is_its_first_warm_up_batch():
    _, runs = _configurations("infer")
    warmups = {(c.run.engine, c.run.placement.precision): c.run.measure.warmup for c in runs}
    assert warmups[("eager", "fp32")] == 2  # no guard: both warm-up batches are steps
    assert all(w == 1 for pair, w in warmups.items() if pair != ("eager", "fp32"))
    _, runs = _configurations("infer", "--warmup", "2")  # the user's warm-up is theirs
    assert {c.run.measure.warmup for c in runs} == {2}
    _, runs = _configurations("infer", "--guard-batches", "0")
    assert {c.run.measure.warmup for c in runs} == {2}


def test_inference_reads_one_checkpoint_per_model_for_every_batch_size(tmp_path, monkeypatch):
    from cnnbench.backends.pytorch import checkpoints

    monkeypatch.chdir(tmp_path)
    for folder in ("log_resnet50_32", "log_resnet50_64", "log_googlenet_16"):
        checkpoints.checkpoint_path(tmp_path / folder).parent.mkdir()
        checkpoints.checkpoint_path(tmp_path / folder).write_bytes(b"")  # preflight only asks that it exists

    def dirs(*argv):
        args = cli.build_parser().parse_args(["infer-all", "--models", "resnet50,googlenet", "--batch-sizes", "16,32,64", *argv])
        given, swept = cli.given_options(args), cli.given_options(args, "sweep.")
        base, settings = config.build(config.InferConfig, given), config.build(config.InferSweepConfig, swept)
        settings.validate()
        entries = {m: sweep.resolve_entry(m) for m in ("resnet50", "googlenet")}
        return {(m, b): sweep.checkpoint_dir("infer", settings, base, entries[m], b, [16, 32, 64])
                for m in entries for b in (16, 32, 64)}

    auto = dirs()
    assert {auto["resnet50", b] for b in (16, 32, 64)} == {"log_resnet50_32"}  # the first batch size that holds one
    assert {auto["googlenet", b] for b in (16, 32, 64)} == {"log_googlenet_16"}
    assert dirs("--weights-batch", "each")["resnet50", 64] == "log_resnet50_64"
    assert dirs("--weights-batch", "64")["googlenet", 16] == "log_googlenet_64"
    assert dirs("--log-dir", "mine")["resnet50", 16] == "mine"
    with pytest.raises(errors.UsageError, match="--weights-batch 'some': give auto, each or a batch size"):
        dirs("--weights-batch", "some")
    shutil.rmtree(tmp_path / "log_resnet50_32")
    shutil.rmtree(tmp_path / "log_resnet50_64")
    assert dirs()["resnet50", 64] == "log_resnet50_64"  # none: its own folder, which preflight then names


def test_infer_all_by_default_runs_eager_and_the_cpu_s_fastest_engines(capsys, monkeypatch):
    monkeypatch.setattr(sweep.environment, "cpu_flags", lambda: frozenset({"avx2"}))  # an AVX2 CPU: tests/test_bf16_default.py
    # End to end (records, logs, tables) in tests/test_inference.py::test_infer_all_sweeps_engines_and_precisions.
    settings = config.build(config.InferSweepConfig, {})
    assert sweep.engine_pairs(settings, torch.device("cpu")) == [("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    crossed = config.build(config.InferSweepConfig, {"engines": "eager,onnxruntime", "precisions": "fp32,int8"})
    assert sweep.engine_pairs(crossed, torch.device("cpu")) == [("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    assert "Skipping pairs that cannot run on cpu: eager/int8" in capsys.readouterr().out
    # a pair refused for a reason says it (its record's refused, engines/table.py): ONNX Runtime's CUDA provider has no int8 convolutions
    on_cuda = config.build(config.InferSweepConfig, {"engines": "onnxruntime", "precisions": "fp16,int8"})
    assert sweep.engine_pairs(on_cuda, torch.device("cuda")) == [("onnxruntime", "fp16")]
    assert f"Skipping pairs that cannot run on cuda: onnxruntime/int8 ({table.find('pytorch', 'onnxruntime').refused['int8', 'cuda']})" in capsys.readouterr().out


@pytest.mark.usefixtures("cpu_calibration")
def test_sigterm_stops_a_sweep_with_the_running_configuration_recorded(cli, tmp_path, tiny_spec):
    # The sweep runs in this process (it shares the suite's calibration); a thread sends this process SIGTERM,
    # as `kill` would, once the first configuration's child has logged a steady step. cnnbench.cli.main
    # handles SIGTERM while it runs (pytest has no handler of its own: the signal is sent only while one is set).
    log = tmp_path / "results_train" / "result_tinyNet_2.txt"
    sweep_running, sent = threading.Event(), threading.Event()

    def terminate_in_the_steady_steps():
        while sweep_running.is_set():
            lines = log.read_text().splitlines() if log.exists() else []
            if any(line.split()[:1] == ["5"] for line in lines) and callable(signal.getsignal(signal.SIGTERM)):
                sent.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    sweep_running.set()
    killer = threading.Thread(target=terminate_in_the_steady_steps, daemon=True)
    killer.start()
    try:
        # two configurations (one model given twice is now merged into one: issue 23)
        code, out, err = cli("train-all", "--models", f"{tiny_spec}", "--batch-sizes", "2,4", *QUICK,
                             "--num-batches", "100000", "--warmup", "1", "--duration", "60")  # a missed signal: fails in 2 min
    finally:
        sweep_running.clear()
        killer.join()
    assert sent.is_set()
    assert code == 143, err
    assert "Sweep terminated during configuration 1 of 2" in out
    records = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert [r["status"] for r in records] == ["terminated"]  # the second configuration never started
    assert records[0]["steady_steps"] >= 3
    assert "Images/sec:" in log.read_text()
