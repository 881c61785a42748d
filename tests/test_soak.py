"""soak.py: the verdict flags a synthetic slowdown and passes a steady run; `cnnbench soak` end to end
(its own log dir, the verdict in the record and the final lines), and the pressure sweep's plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnbench import cli

from cnnbench.core import config, timing

from cnnbench.recipes import estimate, sweep

from cnnbench.tools import soak
from helpers import REPO, read_jsonl, run_process


def record(steps, **extra):
    return {"batch_size": 64, "num_accelerators": 1, "status": "ok", "reason": None, "steady_seconds": steps, **extra}


def test_the_verdict_flags_a_synthetic_slowdown_beyond_the_threshold():
    slowing = [0.100] * 90 + [0.110] * 10  # the last tenth 10% slower: throughput -9.1%
    out = soak.verdict(record(slowing, telemetry_series_sm_clock_mhz=[1980] * 9 + [1700],
                              telemetry_series_temperature_c=[60] * 9 + [83], throttle_reasons="gpu_idle,sw_thermal"), 5.0)
    assert out["soak_images_per_sec_first"] == pytest.approx(640.0) and out["soak_images_per_sec_last"] == pytest.approx(581.818, rel=1e-4)
    assert out["soak_throughput_drift_pct"] == pytest.approx(-9.0909, rel=1e-4)
    assert out["soak_p99_ms_first"] == pytest.approx(100.0) and out["soak_p99_drift_pct"] == pytest.approx(10.0)
    assert out["soak_clock_mhz_first"] == 1980 and out["soak_clock_mhz_last"] == 1700 and out["soak_temperature_c_last"] == 83
    assert out["soak_throttle_reasons"] == "sw_thermal" and out["soak_steps_compared"] == 10
    assert out["soak_flagged"] is True
    assert out["soak_verdict"].startswith("FLAGGED: throughput fell 9.1% from the first to the last 10% of steps (threshold 5%)")
    assert "clock 1980 -> 1700 MHz" in out["soak_verdict"] and "throttled: sw_thermal" in out["soak_verdict"]
    assert soak.verdict(record(slowing), 10.0)["soak_flagged"] is False  # within a 10% threshold


def test_a_steady_run_is_sustained_and_too_few_steps_or_a_failed_run_say_so():
    steady = soak.verdict(record([0.1] * 40), 5.0)
    assert steady["soak_flagged"] is False and steady["soak_verdict"].startswith("sustained (images/s 640.0 -> 640.0 (+0.0%)")
    short = soak.verdict(record([0.1] * 19), 5.0)
    assert short["soak_throughput_drift_pct"] is None and short["soak_verdict"].startswith("no verdict (too few steady steps (19)")
    stopped = soak.verdict(record([0.1] * 40, status="interrupted", reason="interrupted by the user (Ctrl-C)"), 5.0)
    assert stopped["soak_flagged"] is True and "the run ended interrupted" in stopped["soak_verdict"]


def test_soak_end_to_end_flags_a_run_that_slows_down(cli, tiny_spec, monkeypatch):
    class SlowingClock:  # the measured loop's clock: every step 10 ms, the last 4 of 1 + 24 steps 50 ms
        reads = 0

        @classmethod
        def perf_counter(cls):
            cls.reads += 1
            return cls.reads // 2 * 0.01 + (cls.reads // 2 - 21) * 0.04 * (cls.reads // 2 > 21)

    monkeypatch.setattr(timing, "time", SlowingClock)
    code, out, err = cli("soak", tiny_spec, "--batch-size", "2", "--num-batches", "24", "--warmup", "1",
                         "--display-every", "100", "--device", "cpu", "--no-telemetry")
    assert code == 0, err
    (r,) = read_jsonl("results_train_pressure/runs.jsonl")
    assert r["kind"] == "train" and r["steady_steps"] == 24 and r["config.drop_threshold"] == 5.0
    assert r["steady_seconds"][:20] == pytest.approx([0.01] * 20) and r["steady_seconds"][-2:] == pytest.approx([0.05] * 2)
    assert r["soak_flagged"] is True and r["soak_throughput_drift_pct"] == pytest.approx(-80.0)
    assert "Sustained performance: FLAGGED: throughput fell 80.0%" in out
    assert r["config.log_dir"] == "log_pressure_tinyNet_2" and (r["checkpoint"] or "").startswith("log_pressure_tinyNet_2")


def test_soak_without_num_batches_is_2000_or_bounded_by_duration_and_checks_its_threshold(cli, tiny_spec):
    cfg = config.SoakConfig(model="x")
    assert cfg.resolved().measure.num_batches == 2000 and cfg.measure.batch_size == 64
    timed = config.SoakConfig(model="x", measure=config.SoakMeasureConfig(duration=60.0))
    assert timed.resolved().measure.num_batches == config.MAX_INT
    code, out, err = cli("soak", tiny_spec, "--drop-threshold", "0")
    assert code == 2 and "--drop-threshold must be a percentage in (0, 100), got 0.0" in err


def test_the_pressure_sweep_plans_batch_64_x_2000_on_a_gpu_and_a_bounded_plan_on_a_cpu():
    args = cli.build_parser().parse_args(["soak-all", "--models", "resnet50,googlenet"])
    settings = config.build(config.TrainSweepConfig, cli.given_options(args, "sweep."))
    base = config.build(config.SoakConfig, cli.given_options(args))
    gpu = sweep.choose_plan("soak", settings, set(), torch.device("cuda"))
    assert (gpu.warmup, gpu.num_batches, gpu.duration, gpu.batch_sizes) == (20, 2000, None, "64")
    cpu = sweep.choose_plan("soak", settings, set(), torch.device("cpu"))
    assert (cpu.num_batches, cpu.duration, cpu.min_steady_steps, cpu.batch_sizes) == (2000, 120.0, soak.MIN_STEPS, "16")
    runs = sweep.plan_configurations("soak", settings, base, set(), cpu, ["resnet50", "googlenet"],
                                     sweep.batch_sizes(cpu, settings, set()), torch.device("cpu"))
    assert [c.argv[:2] for c in runs] == [["soak", "resnet50"], ["soak", "googlenet"]]
    assert runs[0].run.log_dir == "log_pressure_resnet50_16" and runs[0].run.results_dir == "results_train_pressure"
    rates = estimate.Rates("cpu", train_gflops=50.0, infer_gflops=50.0)
    assert estimate.configuration_seconds(runs[0].run, "soak", rates) > 120


def test_soak_all_soaks_each_model_in_its_own_process(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(estimate, "calibrate", lambda device, kind: estimate.Rates("cpu", 50.0, 50.0))
    code, out, err = cli("soak-all", "--models", tiny_spec, "--plan", "quick", "--duration", "0.2", "--device", "cpu")
    assert code == 0, err
    (r,) = read_jsonl("results_train_pressure/runs.jsonl")
    assert r["status"] == "ok" and r["batch_size"] == 16 and r["steady_steps"] >= soak.MIN_STEPS
    assert r["soak_verdict"] and r["soak_flagged"] in (True, False)
    assert "Sustained performance: " in (Path("results_train_pressure") / "result_tinyNet_16.txt").read_text()
    assert "flagged" in out  # the sweep's summary table has the verdict's column


def test_train_all_pressure_sh_runs_the_pressure_sweep(tmp_path):
    log, stub = tmp_path / "calls.txt", tmp_path / "cnnbench-stub"
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{log}"\n')
    stub.chmod(0o755)
    done = run_process([str(REPO / "train-all-pressure.sh"), "--", "--duration", "60"],
                       env={"CNNBENCH": str(stub), "NUM_ACCELERATORS": "2"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert log.read_text() == "soak-all --plan auto --num-accelerators 2 --duration 60\n"
