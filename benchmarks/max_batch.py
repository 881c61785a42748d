"""The largest ResNet-50 batch under a host memory limit on this CPU (issue 12), training and inference.

    .venv/bin/python benchmarks/max_batch.py                          # 4 GiB, both modes
    .venv/bin/python benchmarks/max_batch.py --model /tmp/tiny.json --image-size 16 --largest-batch 8 --save-to /tmp/smoke
    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/max_batch.py --case user-wait   # issue 23

--case user-wait times issue 23's command through the CLI, as a user types it:
`cnnbench max-batch resnet50 --mode infer --device cpu --image-size 64 --memory-limit-gib 2` (default
--tolerance 5), wall-clock from launch to exit, with the load average before and after (the 2 cores are shared).

Runs `cnnbench max-batch` (maxbatch.run, each probe its own process) and saves each probe and the result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from cnnbench.tools import maxbatch

from cnnbench.core import store
from cnnbench.core.config import MaxBatchConfig
from record import Recorder, add_save_option


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--memory-limit-gib", type=float, default=4.0)
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--largest-batch", type=int, default=8192)
    p.add_argument("--case", choices=["search", "user-wait"], default="search")
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    if args.case == "user-wait":
        user_wait(rec)
        rec.save()
        return
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = MaxBatchConfig(model=args.model, mode=mode, device="cpu", image_size=args.image_size,
                                 memory_limit_gib=args.memory_limit_gib, largest_batch=args.largest_batch,
                                 results_dir=f"{tmp}/results")
            maxbatch.run(cfg)
            records = store.read_records(f"{tmp}/results")
        for r in records[:-1]:
            rec.row(kind="probe", mode=mode, **{k: r.get(k) for k in maxbatch.probe_fields(maxbatch.Probe(0, "ok"))})
            rec.say(f"{mode} batch {r['batch_size']}: {r['status']}, "
                    f"{r['images_per_sec'] or 0:.2f} img/s, host peak {r['host_peak_rss_mib'] or 0:.0f} MiB; {r.get('reason') or ''}")
        s = records[-1]
        rec.say(f"{args.model} {mode} under {args.memory_limit_gib:g} GiB: largest batch {s['max_batch_size']} "
                f"({s['images_per_sec_at_max'] or 0:.2f} img/s); best throughput at batch {s['best_batch_size']} "
                f"({s['best_images_per_sec'] or 0:.2f} img/s); {s['probes']} probes")
        rec.row(kind="summary", mode=mode, memory_limit_gib=args.memory_limit_gib,
                **{k: s[k] for k in ("max_batch_size", "images_per_sec_at_max", "best_batch_size", "best_images_per_sec", "probes")})
    rec.save()


USER_WAIT = ["max-batch", "resnet50", "--mode", "infer", "--device", "cpu", "--image-size", "64", "--memory-limit-gib", "2"]


def load_average() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def user_wait(rec: Recorder) -> None:
    """Issue 23's command, end to end in its own process, timed from launch to exit."""
    rec.say("before: " + load_average())
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "cnnbench", *USER_WAIT, "--results-dir", f"{tmp}/results"]
        rec.say("command: cnnbench " + " ".join(USER_WAIT))
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        records = store.read_records(f"{tmp}/results")
    rec.say(done.stdout.rstrip())
    if done.returncode:
        rec.say(done.stderr.rstrip())
    rec.say("after: " + load_average())
    if not records or records[-1].get("kind") != "max_batch":
        rec.say(f"exit {done.returncode} after {seconds:.1f} s wall-clock: no search record")
        rec.row(kind="user_wait", exit_code=done.returncode, wall_seconds=seconds)
        return
    s = records[-1]
    rec.say(f"exit {done.returncode} after {seconds:.1f} s wall-clock: largest batch {s['max_batch_size']} "
            f"({s['images_per_sec_at_max'] or 0:.2f} img/s), {s['probes']} probes {s['probe_batch_sizes']}")
    rec.row(kind="user_wait", exit_code=done.returncode, wall_seconds=seconds, max_batch_size=s["max_batch_size"],
            images_per_sec_at_max=s["images_per_sec_at_max"], probes=s["probes"],
            probe_batch_sizes=s["probe_batch_sizes"], probe_statuses=s["probe_statuses"],
            probe_seconds=[r["probe_seconds"] for r in records[:-1]], load_average=os.getloadavg())


if __name__ == "__main__":
    main()
