"""Every check that needs a GPU, in one run of under 8 minutes, ending with one summary table.

    bash benchmarks/gpu_checks.sh OUT        # from the repository root, on the machine's own python3

OUT gets each check's log and records (OUT/<check>.log, OUT/<check>/runs.jsonl, the benchmark scripts'
saved results) and this script's own output with its environment (OUT/gpu_checks-<UTC>.{txt,jsonl},
record.py). Checks run in priority order, the headline figures first, each under its own time limit and
all of them under one budget (BUDGET_SECONDS), so the run ends in time even when one hangs.

  train_bf16_eager     ResNet-50 training, bf16, channels-last, batch 256: images/s, MFU, images/J, clocks
  infer_{bf16,fp16}_eager   ResNet-50 inference, batch 256: images/s, p99 latency, fp32 guard
  gpu_suite            pytest -m gpu (tests/test_gpu.py): every path the CPU suite cannot reach
  train_bf16_compile   as train_bf16_eager, torch.compile (compilation reported apart)
  infer_{bf16,fp16}_compile
  loadgen_offline_bf16_compile   MLCommons LoadGen Offline, compile bf16, batch 256, 20 s (needs mlcommons-loadgen)
  train_tf32           ResNet-50 training at tf32, batch 256
  nccl_world_1         the distributed path with one process against the plain one (target < 2%)
  jpeg_decode          the real-data pipeline with nvJPEG decoding against CPU decoding
NVML's power draw is sampled through every check (cnnbench.core.telemetry, nvidia-ml-py); each run's record holds
its memory, MFU (efficiency.py's datasheet peak), energy, images per joule, clocks and throttle reasons.

Without CUDA every check is skipped, the table says so, and the exit status is 0 (a test runs it so).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from cnnbench.core import store, telemetry
from record import Recorder

REPO = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 470  # the 8 minutes, less start-up and the summary

TRAIN = ["train", "resnet50", "--device", "cuda", "--batch-size", "256", "--num-batches", "60", "--warmup", "10",
         "--display-every", "20"]
INFER = ["infer", "resnet50", "--device", "cuda", "--random-weights", "--batch-size", "256", "--num-batches", "100",
         "--warmup", "10", "--display-every", "50"]


@dataclass
class Check:
    name: str
    limit: int  # seconds
    command: list[str]
    summarise: Callable[[Path, str], list[tuple[str, str]]]  # (OUT, log text) -> rows of (figure, value)


def _memory(r: dict) -> str:
    nvml = r.get("device_memory_used_mib")
    return f"peak {r['peak_memory_mib']:.0f} MiB (allocator)" + (f", {nvml:.0f} MiB in use (NVML)" if nvml else "")


def _hardware(r: dict) -> str:
    """MFU (the record's: datasheet peak at the run's precision) and energy per image (NVML's counter)."""
    mfu = f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.4g} ({r['peak_source']})" if r.get("mfu") is not None \
        else f"MFU n/a ({r.get('peak_source')})"
    energy = (f"{r['images_per_joule']:.2f} img/J, {r['power_w_mean']:.0f} W mean, SM {r['sm_clock_mhz_mean']:.0f} MHz, "
              f"{r['temperature_c_max']:.0f} C max, throttle [{r.get('throttle_reasons') or 'none'}]"
              if r.get("images_per_joule") and r.get("power_w_mean") is not None else f"energy {r.get('energy_source')}")
    return f"{mfu}; {energy}"


def _train_rows(name: str) -> Callable[[Path, str], list[tuple[str, str]]]:
    def rows(out: Path, log: str) -> list[tuple[str, str]]:
        r = store.read_records(out / name)[-1]
        compiled = f", compile {r['compile_seconds']:.0f} s" if r.get("compile_seconds") else ""
        return [(f"{name}", f"{r['images_per_sec']:,.0f} img/s ±{r['images_per_sec_stderr']:.0f}, {_hardware(r)}{compiled}; "
                            f"{_memory(r)}; status {r['status']}")]
    return rows


def _infer_rows(name: str) -> Callable[[Path, str], list[tuple[str, str]]]:
    def rows(out: Path, log: str) -> list[tuple[str, str]]:
        r = store.read_records(out / name)[-1]
        guard = "guard ok" if r.get("guard_ok") else f"guard {r.get('guard_ok')} (rel. error {r.get('guard_relative_error')})"
        build = f", build {r['engine_build_seconds']:.0f} s" if r.get("engine_build_seconds") else ""
        return [(name, f"{r['images_per_sec']:,.0f} img/s, p99 {r['latency_ms_p99']:.2f} ms, {guard}{build}; {_hardware(r)}; "
                       f"{_memory(r)}")]
    return rows


# MLPerf Inference v5.0, ResNet-50 Offline on one H200 with TensorRT int8: about 95,000 samples/s (issue 14's
# reference; ours is compile at bf16, a different engine and precision, so the ratio is a distance, not a score).
MLPERF_H200_OFFLINE = 95_000


def _loadgen_rows(name: str) -> Callable[[Path, str], list[tuple[str, str]]]:
    def rows(out: Path, log: str) -> list[tuple[str, str]]:
        if not (out / name / "runs.jsonl").exists():  # e.g. no mlcommons-loadgen on the machine: its one line
            return [(name, (log.strip().splitlines() or ["no output"])[-1])]
        r = store.read_records(out / name)[-1]
        rate = r["loadgen_samples_per_sec"] or 0
        return [(name, f"LoadGen Offline {rate:,.0f} samples/s ({r['loadgen_result']}, not MLPerf-compliant: shortened), "
                       f"{rate / MLPERF_H200_OFFLINE:.0%} of MLPerf v5.0's ~{MLPERF_H200_OFFLINE:,} (H200, TensorRT int8); "
                       f"{_hardware(r)}")]
    return rows


def _suite_rows(out: Path, log: str) -> list[tuple[str, str]]:
    last = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return [("gpu_suite", last[-1].strip("= ") if last else "no pytest summary line (see gpu_suite.log)")]


def _saved_row(script: str, key: str, describe: Callable[[dict], str]) -> Callable[[Path, str], list[tuple[str, str]]]:
    """The summary row a benchmark script saved with record.py under OUT/benchmark_results."""
    def rows(out: Path, log: str) -> list[tuple[str, str]]:
        saved = sorted((out / "benchmark_results").glob(f"{script}-*.jsonl"))
        summary = [json.loads(line) for line in saved[-1].read_text().splitlines() if key in line] if saved else []
        return [(script, describe(summary[-1]) if summary else "no summary saved (see its log)")]
    return rows


def checks(out: Path, scratch: Path) -> list[Check]:
    def cnnbench(name: str, base: list[str], *extra: str) -> list[str]:
        return [sys.executable, "-m", "cnnbench", *base, *extra, "--results-dir", str(out / name)] + (
            ["--log-dir", str(scratch / name)] if base[0] == "train" else [])

    saved = ["--save-to", str(out / "benchmark_results")]
    bf16, fp16 = ["--precision", "bf16"], ["--precision", "fp16"]
    return [
        Check("train_bf16_eager", 60, cnnbench("train_bf16_eager", TRAIN, *bf16, "--channels-last"), _train_rows("train_bf16_eager")),
        Check("infer_bf16_eager", 45, cnnbench("infer_bf16_eager", INFER, *bf16), _infer_rows("infer_bf16_eager")),
        Check("infer_fp16_eager", 45, cnnbench("infer_fp16_eager", INFER, *fp16), _infer_rows("infer_fp16_eager")),
        Check("gpu_suite", 150, [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_gpu.py")],
              _suite_rows),
        Check("train_bf16_compile", 150, cnnbench("train_bf16_compile", TRAIN, *bf16, "--channels-last", "--compile"),
              _train_rows("train_bf16_compile")),
        Check("infer_bf16_compile", 90, cnnbench("infer_bf16_compile", INFER, *bf16, "--engine", "compile", "--compile-mode", "default"),
              _infer_rows("infer_bf16_compile")),
        Check("infer_fp16_compile", 90, cnnbench("infer_fp16_compile", INFER, *fp16, "--engine", "compile", "--compile-mode", "default"),
              _infer_rows("infer_fp16_compile")),
        Check("loadgen_offline_bf16_compile", 90, cnnbench("loadgen_offline_bf16_compile", INFER, *bf16, "--engine", "compile",
                                                           "--compile-mode", "default", "--loadgen", "--scenario", "offline",
                                                           "--min-duration", "20", "--min-queries", "1"),
              _loadgen_rows("loadgen_offline_bf16_compile")),
        Check("train_tf32", 45, cnnbench("train_tf32", TRAIN, "--precision", "tf32"), _train_rows("train_tf32")),
        Check("nccl_world_1", 120, [sys.executable, str(REPO / "benchmarks" / "distributed_scaling.py"), "--batch-size", "128",
                                    "--steps", "50", "--rounds", "2", *saved],
              _saved_row("distributed_scaling", "ddp_x1_overhead_percent",
                         lambda s: f"distributed path x1 costs {s['ddp_x1_overhead_percent']:+.2f}% against plain (target < 2%)")),
        Check("jpeg_decode", 60, [sys.executable, str(REPO / "benchmarks" / "input_pipeline.py"), "--device", "cuda", *saved],
              _saved_row("input_pipeline", "speedup",
                         lambda s: f"nvJPEG ({s['gpu_decoder']}) {s['gpu_images_per_sec']:,.0f} img/s, {s['speedup']:.2f}x {s['against']}; "
                                   f"same batch: {'yes' if s['check_passed'] else 'NO'} (mean diff {s['mean_diff_percent_of_range']:.3f}% of range)")),
    ]


def power_during(device: str = "cuda"):
    """cnnbench's telemetry sampler (NVML, 10 Hz) over a whole check: started with its window open."""
    sampler = telemetry.sampler_for(torch.device(device), enabled=True)
    sampler.start()
    sampler.mark_steady()
    return sampler


def describe_power(sampler) -> str:
    f = sampler.fields(images=0)
    if f["telemetry"] != "on":
        return f"NVML power not sampled ({f['telemetry_note']})"
    if f["power_w_mean"] is None:
        return "no power samples"
    return f"power {f['power_w_mean']:.0f} W mean, {f['power_w_max']:.0f} W max (NVML, {f['telemetry_samples']} samples)"


def run_check(check: Check, out: Path, seconds: float, env: dict) -> tuple[str, str]:
    """Runs one check with its log in OUT/<name>.log; (status, log text). A check over its time is
    stopped with its whole process group (torchrun's workers, compile workers)."""
    log_path = out / f"{check.name}.log"
    with open(log_path, "w") as log:
        child = subprocess.Popen(check.command, stdout=log, stderr=subprocess.STDOUT, cwd=out, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=seconds)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status = f"stopped after {seconds:.0f} s"
    return status, log_path.read_text(errors="replace")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder for logs, records and the summary")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(__file__, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="cnnbench-gpu-checks-") as scratch:
        todo = checks(out, Path(scratch))
        rows = run_all(todo, out, env, rec) if torch.cuda.is_available() else skip_all(todo, rec)
    rec.say("\nSummary" + (f" ({torch.cuda.get_device_name(0)}, torch {torch.__version__})" if torch.cuda.is_available() else ""))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        rec.say(f"  {name:<{width}}  {value}")
        rec.row(check=name, result=value)
    rec.save()
    return 0


def skip_all(todo: list[Check], rec: Recorder) -> list[tuple[str, str]]:
    rec.say(f"no CUDA device here: skipped {len(todo)} checks: {', '.join(c.name for c in todo)}")
    return [(c.name, "skipped: no CUDA device") for c in todo]


def run_all(todo: list[Check], out: Path, env: dict, rec: Recorder) -> list[tuple[str, str]]:
    deadline, rows = time.monotonic() + BUDGET_SECONDS, []
    for check in todo:
        left = deadline - time.monotonic()
        if left < 15:
            rows.append((check.name, "skipped: the 8-minute budget is spent"))
            continue
        rec.say(f"=== {check.name} ({time.strftime('%H:%M:%S')}, limit {min(check.limit, left):.0f} s)")
        power = power_during()
        try:
            status, log = run_check(check, out, min(check.limit, left), env)
        finally:
            power.stop()
        rec.say("\n".join(log.splitlines()[-6:]))
        try:
            found = check.summarise(out, log) if status == "ok" else [(check.name, f"{status} (see {check.name}.log)")]
        except (IndexError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            found = [(check.name, f"{status}, but no figures read ({type(exc).__name__}: {exc}; see {check.name}.log)")]
        rows += [(name, f"{value}; {describe_power(power)}") for name, value in found]
    return rows


if __name__ == "__main__":
    sys.exit(main())
