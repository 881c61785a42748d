"""Which bf16 engine the default CPU inference sweep adds where bf16 is native (issue 26, item 1).

    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/bf16_default.py      # the measurement in engines/table.py
    .venv/bin/python benchmarks/bf16_default.py --image-size 32 --seconds 2 --warmup 1   # a smoke run

The candidates are the guarded bf16 engines of the engine table on a CPU: PyTorch eager bf16 (autocast),
torch.compile bf16 and OpenVINO bf16; ONNX Runtime fp32 runs beside them as the fp32 engine they must beat.
Each configuration is its own `cnnbench infer` process (random weights, synthetic input, the same seed): the
figure is cnnbench's own, mean images/s over the steady steps after --warmup steps (which hold compilation),
with its standard error; every bf16 row is checked against eager fp32 (the fp32 guard) and a row whose guard
failed cannot win. The 1-minute load average before and after each run is saved with it (`uptime` at the
start and end of the output): the machine's 2 cores are shared with other work. The winner is printed last
and is what engines/table.py's `sweep` names for CPUs with native bf16 (avx512_bf16 or AMX).
Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

CANDIDATES = (("eager", "bf16"), ("compile", "bf16"), ("openvino", "bf16"))
CONFIGS = (("onnxruntime", "fp32"), *CANDIDATES)


def command(args, tmp: Path, engine: str, precision: str) -> list[str]:
    line = [sys.executable, "-m", "cnnbench", "infer", args.model, "--engine", engine, "--precision", precision,
            "--random-weights", "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
            "--duration", str(args.seconds), "--num-batches", "100000", "--min-steady-steps", "3",
            "--display-every", "100000", "--guard-batches", "2", "--calib-batches", "2",
            "--results-dir", str(tmp / "results"), "--cache-path", str(tmp / f"cache-{engine}-{precision}")]
    return line + (["--image-size", str(args.image_size)] if args.image_size else [])


def run_one(args, tmp: Path, engine: str, precision: str) -> dict:
    """One configuration's row; a failed or refused one is a row with its last line, not the end."""
    runs = tmp / "results" / "runs.jsonl"
    before = len(runs.read_text().splitlines()) if runs.exists() else 0
    row = {"model": args.model, "engine": engine, "precision": precision, "load_average_before": os.getloadavg()[0]}
    # cwd: the temporary folder, so that no file of the caller's folder shadows a package the run imports.
    done = subprocess.run(command(args, tmp, engine, precision), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=tmp)
    row["load_average_after"] = os.getloadavg()[0]
    records = [json.loads(line) for line in runs.read_text().splitlines()[before:]] if runs.exists() else []
    if done.returncode != 0 or not records:
        return {**row, "images_per_sec": None, "error": (done.stdout.strip().splitlines() or ["?"])[-1]}
    r = records[-1]
    return {**row, **{key: r.get(key) for key in (
        "images_per_sec", "images_per_sec_stderr", "steady_steps", "guard_ok", "guard_relative_error",
        "engine_build_seconds", "achieved_tflops", "peak_tflops", "peak_source", "mfu")}}


def winner(rows: list[dict]) -> dict | None:
    """The fastest candidate whose guard passed."""
    ok = [r for r in rows if (r["engine"], r["precision"]) in CANDIDATES and r["images_per_sec"] and r.get("guard_ok")]
    return max(ok, key=lambda r: r["images_per_sec"], default=None)


def report(args, rec: Recorder, rows: list[dict]) -> None:
    base = next((r["images_per_sec"] for r in rows if r["engine"] == "onnxruntime"), None)
    table = Table(title=f"bf16 engines on this CPU: {args.model}, batch {args.batch_size}, "
                        f"{args.image_size or 224} px, about {args.seconds:g} s of steady steps each")
    for col in ("engine", "precision", "img/s", "+/-", "steps", "x ort fp32", "guard", "rel. err", "build s",
                "load before", "after"):
        table.add_column(col)
    for r in rows:
        rec.row(kind="run", **r)
        if r["images_per_sec"] is None:
            table.add_row(r["engine"], r["precision"], "-", "-", "-", "-", f"not run: {r['error']}", "-", "-",
                          f"{r['load_average_before']:.1f}", f"{r['load_average_after']:.1f}")
            continue
        guard = "-" if r.get("guard_ok") is None else ("ok" if r["guard_ok"] else "FAILED")
        table.add_row(r["engine"], r["precision"], f"{r['images_per_sec']:.1f}", f"{r['images_per_sec_stderr'] or 0:.1f}",
                      str(r["steady_steps"]), f"{r['images_per_sec'] / base:.2f}" if base else "-", guard,
                      "-" if r.get("guard_relative_error") is None else f"{r['guard_relative_error']:.1e}",
                      "-" if r.get("engine_build_seconds") is None else f"{r['engine_build_seconds']:.1f}",
                      f"{r['load_average_before']:.1f}", f"{r['load_average_after']:.1f}")
    rec.table(table)
    best = winner(rows)
    rec.say(f"winner: {best['engine']} {best['precision']} at {best['images_per_sec']:.1f} img/s" if best else
            "winner: none (no bf16 engine ran with its guard passing)")
    rec.row(kind="winner", engine=best and best["engine"], precision=best and best["precision"])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's (224 px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0, help="steady-state seconds of each configuration")
    p.add_argument("--warmup", type=int, default=3)
    add_save_option(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rec.say_load("before")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for engine, precision in CONFIGS:
            row = run_one(args, Path(tmp), engine, precision)
            rec.say(f"{engine} {precision}: " + (f"{row['images_per_sec']:.2f} img/s, guard {row.get('guard_ok')}"
                    if row["images_per_sec"] else f"not run: {row['error']}"))
            rows.append(row)
    report(args, rec, rows)
    rec.say_load("after")
    rec.save()


if __name__ == "__main__":
    main()
