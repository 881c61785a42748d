"""Any model, every CPU engine: eight torchvision classifiers at batch 16, which engine wins each (issue 22).

    .venv/bin/python benchmarks/any_model.py                    # the grid in docs/model-sources.md
    .venv/bin/python benchmarks/any_model.py --models resnet18 --image-size 32 --seconds 1 --warmup 1   # a smoke run

Models: torchvision names resolved by cnnbench's one model resolver (random weights, synthetic input, 224 px).
Configurations, each its own `cnnbench infer` process (cold start as a user's run: export, conversion,
quantisation and compilation land in build s, never in img/s):
  eager fp32 (the reference), compile fp32 (torch.compile, the CPU's default mode), eager bf16 (autocast,
  where the CPU has native bf16: AVX-512 BF16 here), onnxruntime fp32 and int8 (static QDQ), openvino fp32
  and int8 (NNCF post-training quantisation).
The figure is cnnbench's own: mean images/s over the steady steps (after --warmup steps), with its standard
error. Every non-reference row is checked against eager fp32 on the same inputs (the fp32 guard) and shows
its verdict; a configuration that fails or is refused is a row with its one line, and the grid goes on.
The winner of a model is its fastest configuration whose guard passed. A short steady window (--seconds)
keeps the 56 runs within an afternoon on 2 cores: figures are indicative (standard errors shown), and the
1-minute load average before and after each run is saved with it (`uptime` before and after the grid).
--stop-at HH:MM (UTC) bounds the whole grid: configurations not started by then are listed as not run; --timeout
bounds one configuration (a torch.compile autotuning a large model on 2 cores can take minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

MODELS = ("resnet18", "resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
          "convnext_tiny", "vit_b_16")
CONFIGS = (("eager", "fp32"), ("compile", "fp32"), ("eager", "bf16"), ("onnxruntime", "fp32"),
           ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"))
KEYS = ("images_per_sec", "images_per_sec_stderr", "steady_steps", "latency_ms_p90", "guard_ok",
        "guard_relative_error", "guard_top1_agreement", "engine_build_seconds", "model_source", "flops", "params")


def cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text() or "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def uptime() -> str:
    return subprocess.run(["uptime"], text=True, stdout=subprocess.PIPE).stdout.strip()


def command(args, tmp: Path, model: str, engine: str, precision: str) -> list[str]:
    line = [sys.executable, "-m", "cnnbench", "infer", model, "--engine", engine, "--precision", precision,
            "--device", "cpu", "--random-weights", "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
            "--duration", str(args.seconds), "--num-batches", "100000", "--min-steady-steps", "3",
            "--display-every", "100000", "--guard-batches", str(args.guard_batches),
            "--calib-batches", str(args.calib_batches), "--results-dir", str(tmp / "results"),
            "--cache-path", str(tmp / f"cache-{model}-{engine}-{precision}")]
    return line + (["--image-size", str(args.image_size)] if args.image_size else [])


def run_one(args, tmp: Path, model: str, engine: str, precision: str) -> dict:
    """One configuration's row; a failed or refused one is a row with its last line, not the end."""
    load, start = os.getloadavg()[0], time.monotonic()
    runs = tmp / "results" / "runs.jsonl"
    before = len(runs.read_text().splitlines()) if runs.exists() else 0
    # cwd: the temporary folder, so that no file of the caller's folder shadows a package the run imports.
    # Its own session, so that a configuration past --timeout is stopped with the compile workers it started.
    child = subprocess.Popen(command(args, tmp, model, engine, precision), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        output = f"timed out after {args.timeout:g} s (--timeout): not measured"
    records = [json.loads(line) for line in runs.read_text().splitlines()[before:]] if runs.exists() else []
    row = {"model": model, "engine": engine, "precision": precision, "load_average_before": load,
           "load_average_after": os.getloadavg()[0], "wall_seconds": time.monotonic() - start}
    if child.returncode != 0 or not records:
        return {**row, "images_per_sec": None, "error": (output.strip().splitlines() or ["?"])[-1]}
    return {**row, **{key: records[-1].get(key) for key in KEYS}}


def measure(args, tmp: Path, rec: Recorder, configs) -> list[dict]:
    rows, stop = [], stop_time(args.stop_at)
    for model in args.models.split(","):
        for engine, precision in configs:
            if time.time() > stop:
                rows.append({"model": model, "engine": engine, "precision": precision, "images_per_sec": None,
                             "error": f"not started: past --stop-at {args.stop_at} UTC"})
                continue
            row = run_one(args, tmp, model, engine, precision)
            rec.say(f"{model} {engine} {precision}: " + (
                f"{row['images_per_sec']:.2f} img/s, guard {verdict(row)}" if row["images_per_sec"] else
                f"not run: {row['error']}") + f" (load average before: {row['load_average_before']:.2f}, after: "
                f"{row['load_average_after']:.2f}; {row['wall_seconds']:.0f} s)")
            rows.append(row)
    return rows


def stop_time(hhmm: str | None) -> float:
    """--stop-at as a Unix time: the next HH:MM UTC (today's, or tomorrow's if already past); none: never."""
    if not hhmm:
        return float("inf")
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    hour, minute = (int(part) for part in hhmm.split(":"))
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return (at if at > now else at + dt.timedelta(days=1)).timestamp()


def verdict(row: dict) -> str:
    if row["engine"] == "eager" and row["precision"] == "fp32":
        return "reference"
    return {True: "ok", False: "FAILED", None: "-"}[row.get("guard_ok")]


def report(args, rec: Recorder, rows: list[dict]) -> None:
    size = f"{args.image_size} px" if args.image_size else "224 px"
    table = Table(title=f"Any model on the CPU: batch {args.batch_size}, {size}, about {args.seconds:g} s of steady "
                        f"steps each (random weights, synthetic input)")
    for col in ("model", "engine", "precision", "img/s", "+/-", "steps", "x eager fp32", "guard", "rel. err",
                "top-1 %", "build s", "load before", "after"):
        table.add_column(col)
    for r in rows:
        base = next((b["images_per_sec"] for b in rows if (b["model"], b["engine"], b["precision"]) ==
                     (r["model"], "eager", "fp32")), None)
        if r["images_per_sec"] is None:
            table.add_row(r["model"], r["engine"], r["precision"], "-", "-", "-", "-", f"not run: {r['error']}",
                          "-", "-", "-", f"{r.get('load_average_before', 0):.1f}", f"{r.get('load_average_after', 0):.1f}")
            rec.row(kind="run", **r)
            continue
        err, top1 = r.get("guard_relative_error"), r.get("guard_top1_agreement")
        table.add_row(r["model"], r["engine"], r["precision"], f"{r['images_per_sec']:.1f}",
                      f"{r['images_per_sec_stderr'] or 0:.1f}", str(r["steady_steps"]),
                      f"{r['images_per_sec'] / base:.2f}" if base else "-", verdict(r),
                      f"{err:.1e}" if err is not None else "-", f"{top1:.1f}" if top1 is not None else "-",
                      f"{r['engine_build_seconds'] or 0:.1f}", f"{r['load_average_before']:.1f}",
                      f"{r['load_average_after']:.1f}")
        rec.row(kind="run", x_eager_fp32=r["images_per_sec"] / base if base else None, **r)
    rec.table(table)
    winners(rec, rows)


def winners(rec: Recorder, rows: list[dict]) -> None:
    """Per model: the fastest configuration whose guard passed (eager fp32 is its own reference)."""
    table = Table(title="Which engine wins each model (fastest with a passing fp32 guard)")
    for col in ("model", "winner", "img/s", "x eager fp32", "runner-up", "guard failures / not run"):
        table.add_column(col)
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        good = sorted((r for r in mine if r["images_per_sec"] and verdict(r) in ("ok", "reference")),
                      key=lambda r: -r["images_per_sec"])
        base = next((r["images_per_sec"] for r in mine if verdict(r) == "reference" and r["images_per_sec"]), None)
        bad = [f"{r['engine']} {r['precision']}: " + ("guard FAILED" if r["images_per_sec"] else "not run")
               for r in mine if not r["images_per_sec"] or verdict(r) == "FAILED"]
        if not good:
            table.add_row(model, "-", "-", "-", "-", "; ".join(bad) or "-")
            continue
        win = good[0]
        runner = f"{good[1]['engine']} {good[1]['precision']} ({good[1]['images_per_sec']:.1f})" if len(good) > 1 else "-"
        table.add_row(model, f"{win['engine']} {win['precision']}", f"{win['images_per_sec']:.1f}",
                      f"{win['images_per_sec'] / base:.2f}" if base else "-", runner, "; ".join(bad) or "-")
        rec.row(kind="winner", model=model, engine=win["engine"], precision=win["precision"],
                images_per_sec=win["images_per_sec"], x_eager_fp32=win["images_per_sec"] / base if base else None)
    rec.table(table)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated names cnnbench infer takes")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's (224 px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0, help="steady-state seconds of each configuration (at least 3 steps)")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing (compilation, first-touch), excluded")
    p.add_argument("--guard-batches", type=int, default=1)
    p.add_argument("--calib-batches", type=int, default=2, help="int8 calibration batches, the same for both engines")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="stop a configuration (build included) after this long; its row says so")
    p.add_argument("--stop-at", default=None, metavar="HH:MM",
                   help="start no configuration after this UTC time (the rest are listed as not run)")
    add_save_option(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    bf16 = cpu_has_bf16()
    configs = [c for c in CONFIGS if bf16 or c[1] != "bf16"]
    rec.say(f"CPU cores usable: {len(os.sched_getaffinity(0))}; native bf16 (avx512_bf16/amx_bf16): {bf16}; shared "
            f"with other processes (load average before and after each run in the table)")
    rec.say(f"uptime before: {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp), rec, configs)
    rec.say(f"uptime after: {uptime()}")
    report(args, rec, rows)
    rec.save()


if __name__ == "__main__":
    main()
