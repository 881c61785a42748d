"""How glibc's malloc shapes CPU training steps: its defaults against a malloc that keeps freed memory.

    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/allocator.py                        # googlenet:64, synNet:64
    .venv/bin/python benchmarks/allocator.py --runs googlenet:16 --num-batches 3 --warmup 1      # a smoke run

PyTorch's CPU allocator hands every freed tensor back to malloc. glibc serves large blocks with fresh mmaps
(above its mmap threshold, which grows at run time up to 32 MiB) and returns freed heap above its trim
threshold to the kernel, so a training step's activations are mapped and page-faulted again step after step;
the sweep records show CPU training steps still slowing the warm-up and the first steady steps
(benchmarks/sweep_defaults.py, "last warm-up step against the steady median"). Each run here is one
`cnnbench train` process (synthetic input, no checkpoint) under each malloc setting, given to glibc through
GLIBC_TUNABLES at process start (the only time glibc reads it):

    system: the environment's own (glibc's defaults unless GLIBC_TUNABLES is already set)
    keep:   glibc.malloc.mmap_max=0 (no mmapped blocks) and a 64 GiB trim threshold: freed memory stays in the
            heap for the next step

For each: the warm-up and steady step times, the steady median and the spread of step times (std / mean),
and the process's peak resident memory (the record's peak_memory_mib). Nothing here changes cnnbench's
defaults; the output says what a tuned allocator would buy and cost on this machine. The load average before and after is saved with it.
Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

SETTINGS = {"system": None,
            "keep": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"}


def run_one(args, tmp: Path, model: str, batch: int, setting: str) -> dict:
    """One `cnnbench train` process under one malloc setting; its row (a failed run: its last line)."""
    results = tmp / f"{model}-{batch}-{setting}"
    env = dict(os.environ)
    if SETTINGS[setting] is not None:
        env["GLIBC_TUNABLES"] = SETTINGS[setting]
    command = [sys.executable, "-m", "cnnbench", "train", model, "--batch-size", str(batch), "--num-batches",
               str(args.num_batches), "--warmup", str(args.warmup), "--no-checkpoint", "--display-every", "100000",
               "--results-dir", str(results)] + (["--image-size", str(args.image_size)] if args.image_size else [])
    row = {"model": model, "batch_size": batch, "malloc": setting, "glibc_tunables": env.get("GLIBC_TUNABLES"),
           "load_average_before": os.getloadavg()[0]}
    done = subprocess.run(command, env=env, cwd=tmp, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    row["load_average_after"] = os.getloadavg()[0]
    runs = results / "runs.jsonl"
    if done.returncode != 0 or not runs.exists():
        return {**row, "error": (done.stdout.strip().splitlines() or ["?"])[-1]}
    r = json.loads(runs.read_text().splitlines()[-1])
    steady = r["steady_seconds"]
    return {**row, "warmup_seconds": r["warmup_seconds"], "steady_seconds": steady,
            "steady_median_seconds": statistics.median(steady),
            "steady_spread_pct": 100 * statistics.pstdev(steady) / statistics.mean(steady) if len(steady) > 1 else None,
            "images_per_sec": r["images_per_sec"], "peak_memory_mib": r.get("peak_memory_mib"),
            "wall_seconds": r["wall_seconds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="googlenet:64,synNet:64", help="comma-separated MODEL:BATCH (default googlenet:64,synNet:64)")
    p.add_argument("--num-batches", type=int, default=4, help="steady steps of each run (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps of each run, the CPU plan's (default 2)")
    p.add_argument("--image-size", type=int, help="default: each model's own")
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    rec.say_load("before")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnnbench-allocator-") as tmp:
        for item in args.runs.split(","):
            model, batch = item.rsplit(":", 1)
            for setting in SETTINGS:
                row = run_one(args, Path(tmp), model, int(batch), setting)
                rec.row(**row)
                rows.append(row)
    rec.say_load("after")
    table = Table(title=f"CPU training steps under glibc malloc settings ({args.warmup} warm-up, {args.num_batches} steady)")
    for column in ("model", "batch", "malloc", "warm-up s", "steady s", "median s", "spread %", "img/s", "peak MiB"):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], str(r["batch_size"]), r["malloc"], r["error"], "", "", "", "", "")
            continue
        table.add_row(r["model"], str(r["batch_size"]), r["malloc"], " ".join(f"{s:.2f}" for s in r["warmup_seconds"]),
                      " ".join(f"{s:.2f}" for s in r["steady_seconds"]), f"{r['steady_median_seconds']:.2f}",
                      "" if r["steady_spread_pct"] is None else f"{r['steady_spread_pct']:.1f}",
                      f"{r['images_per_sec']:.2f}", f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] else "")
    rec.table(table)
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
