"""What the default sweeps do on this machine: how long they take against their printed estimate, and
what `cnnbench infer-all` runs by default against what it ran before (eager fp32, NCHW).

    .venv/bin/python benchmarks/sweep_defaults.py --run-sh-quick          # ./run.sh --quick, timed (target < 10 min on 2 cores)
    .venv/bin/python benchmarks/sweep_defaults.py --run-sh                # ./run.sh, the whole default benchmark, timed
    .venv/bin/python benchmarks/sweep_defaults.py --infer-defaults        # infer-all defaults before/after, ResNet-50 batch 16
    .venv/bin/python benchmarks/sweep_defaults.py --train-all --models googlenet --batch-sizes 16   # any train-all, timed
    .venv/bin/python benchmarks/sweep_defaults.py --records DIR --baseline OLD.jsonl   # a finished run's records only

Each sweep runs in a scratch folder through the real command line; the estimate is the one the sweep
prints before it starts, the actual time is the sweep's own wall time (its "Sweep finished in" line)
and the whole command's. Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_save_option

REPO = Path(__file__).resolve().parents[1]
CLOCK = r"(\d+):(\d\d):(\d\d)"


def seconds(text: str) -> float:
    h, m, s = map(int, re.fullmatch(CLOCK, text).groups())
    return 3600 * h + 60 * m + s


def run(command: list[str], cwd: Path, rec: Recorder, label: str) -> dict:
    """Run a sweep command; its printed estimates and finish times, and the command's wall time."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (cwd / f"{label}.log").write_text(done.stdout + done.stderr)
    estimates = [seconds(":".join(g)) for g in re.findall(rf"; estimated {CLOCK}", done.stdout)]
    finished = [seconds(":".join(g)) for g in re.findall(rf"Sweep finished in {CLOCK}", done.stdout)]
    row = {"label": label, "command": " ".join(command), "exit_code": done.returncode, "wall_seconds": wall,
           "estimated_seconds": estimates, "sweep_seconds": finished}
    if estimates and finished:
        row["estimate_error"] = [e / f - 1 for e, f in zip(estimates, finished)]
    rec.row(kind="sweep", **row)
    errors = ", ".join(f"{100 * e:+.0f}%" for e in row.get("estimate_error", []))
    rec.say(f"{label}: exit {done.returncode}, whole command {wall / 60:.1f} min; sweeps {finished} s against estimates "
            f"{estimates} s ({errors or 'n/a'})")
    if done.returncode != 0:
        rec.say(done.stdout[-2000:] + done.stderr[-2000:])
    return row


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def infer_defaults(rec: Recorder, scratch: Path, model: str, batch: int) -> None:
    """Before: eager fp32 NCHW (the old defaults); after: the defaults of today."""
    cnnbench = [sys.executable, "-m", "cnnbench", "infer-all", "--models", model, "--batch-sizes", str(batch),
                "--random-weights"]
    for label, extra in (("before", ["--engines", "eager", "--precisions", "fp32", "--memory-format", "nchw"]), ("after", [])):
        folder = scratch / label
        folder.mkdir()
        run([*cnnbench, *extra], folder, rec, f"infer-all defaults {label}")
        for r in records(folder / "results_infer" / "runs.jsonl"):
            rec.row(kind="engine", when=label, model=r["model"], batch_size=r["batch_size"], engine=r["engine"],
                    precision=r["precision"], memory_format=r.get("memory_format", "nchw"), status=r["status"],
                    images_per_sec=r.get("images_per_sec"), images_per_sec_stderr=r.get("images_per_sec_stderr"),
                    guard_relative_error=r.get("guard_relative_error"), **{k: v for k, v in r.items() if k.startswith("env.")})
            rec.say(f"  {label}: {r['engine']} {r['precision']} {r.get('memory_format', 'nchw')}: "
                    f"{r.get('images_per_sec') or 0:.1f} +/- {r.get('images_per_sec_stderr') or 0:.1f} img/s, "
                    f"guard rel. err {r.get('guard_relative_error')}")


def configuration_times(rec: Recorder, scratch: Path, baseline: Path | None) -> None:
    """Each configuration's process time (its record's wall_seconds, start-up included), what it built, its
    warm-up and steady seconds and where its window stopped, by sweep and model: where the time of the whole run
    goes. With a baseline (an earlier output of this script), each figure against the same configuration's there."""
    before = {key(r): r for r in records(baseline) if r.get("kind") == "configuration"} if baseline else {}
    for kind in ("train", "infer"):
        rows = records(scratch / f"results_{kind}" / "runs.jsonl")
        parts = {"build": 0.0, "warm-up": 0.0, "steady": 0.0}
        for r in rows:
            warm, steady = sum(r.get("warmup_seconds") or []), sum(r.get("steady_seconds") or [])
            row = dict(sweep=kind, model=r["model"], batch_size=r["batch_size"], engine=r.get("engine"),
                       precision=r["precision"], status=r["status"], wall_seconds=r.get("wall_seconds"),
                       engine_build_seconds=r.get("engine_build_seconds"), cache_hit=r.get("cache_hit"),
                       images_per_sec=r.get("images_per_sec"), images_per_sec_stderr=r.get("images_per_sec_stderr"),
                       warmup_steps=r.get("warmup_steps"), warmup_seconds=warm, steady_steps=r.get("steady_steps"),
                       steady_seconds=steady, window_stop=window_stop(r, steady), peak_memory_mib=r.get("peak_memory_mib"),
                       **step_figures(r))
            old = before.get(key(row))
            if old and old.get("images_per_sec") and row["images_per_sec"]:
                row["images_per_sec_vs_baseline"] = row["images_per_sec"] / old["images_per_sec"] - 1
            rec.row(kind="configuration", **row)
            parts["build"] += r.get("engine_build_seconds") or 0.0
            parts["warm-up"] += warm
            parts["steady"] += steady
        by_model: dict[str, float] = {}
        for r in rows:
            by_model[r["model"]] = by_model.get(r["model"], 0.0) + (r.get("wall_seconds") or 0.0)
        total = sum(by_model.values())
        rec.say(f"{kind}-all: {len(rows)} records, {total / 60:.1f} min in the configurations' processes; "
                + ", ".join(f"{m} {t / 60:.1f} min" for m, t in by_model.items()))
        rec.say(f"  of which " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in parts.items())
                + f", the rest (start-up, model and weights, guard, calibration, record) {(total - sum(parts.values())) / 60:.1f} min")
        peak = max(rows, key=lambda r: r.get("peak_memory_mib") or 0, default=None)
        if peak and peak.get("peak_memory_mib"):
            rec.say(f"  largest peak memory: {peak['peak_memory_mib'] / 1024:.1f} GiB ({peak['model']}, batch {peak['batch_size']})")
        stops = [window_stop(r, sum(r.get("steady_seconds") or [])) for r in rows]
        rec.say("  windows stopped: " + ", ".join(f"{s} {stops.count(s)}" for s in sorted(set(stops))))
        spreads = sorted(row["step_spread_pct"] for row in rec.rows if row.get("sweep") == kind and row.get("step_spread_pct") is not None)
        if spreads:
            rec.say(f"  per-step images/s spread (std / mean): median {spreads[len(spreads) // 2]:.1f}%, "
                    f"range {spreads[0]:.1f}-{spreads[-1]:.1f}%")
        last = [row["warmup_vs_median"][-1] for row in rec.rows if row.get("sweep") == kind and row.get("warmup_vs_median")]
        if last:
            rec.say(f"  last warm-up step against the steady median: median x{sorted(last)[len(last) // 2]:.2f}, "
                    f"{sum(x > 1.1 for x in last)} of {len(last)} more than 10% slower")
        halves = sorted(abs(row["first_half_vs_window_pct"]) for row in rec.rows
                        if row.get("sweep") == kind and row.get("first_half_vs_window_pct") is not None)
        if halves:
            rec.say(f"  images/s of the window's first half against the whole window: median |diff| "
                    f"{halves[len(halves) // 2]:.1f}%, largest {halves[-1]:.1f}% ({len(halves)} configurations)")
        changes = sorted(abs(row["images_per_sec_vs_baseline"]) for row in rec.rows
                         if row.get("sweep") == kind and "images_per_sec_vs_baseline" in row)
        if changes:
            rec.say(f"  images/s against {baseline.name}: {len(changes)} configurations, median |change| "
                    f"{100 * changes[len(changes) // 2]:.1f}%, largest {100 * changes[-1]:.1f}%")


def step_figures(r: dict) -> dict:
    """The spread of per-step images/s (what the standard-error stop sees) and each warm-up step over the steady median."""
    steady = r.get("steady_seconds") or []
    if len(steady) < 2:
        return {}
    speeds = [1 / t for t in steady]
    mean = sum(speeds) / len(speeds)
    spread = (sum((v - mean) ** 2 for v in speeds) / len(speeds)) ** 0.5 / mean
    median = sorted(steady)[len(steady) // 2]
    # the window's first half (at least 3 steps) against the whole: would a window half as long say the same?
    half, elapsed = [], 0.0
    for t in steady:
        if elapsed >= sum(steady) / 2 and len(half) >= 3:
            break
        half.append(t)
        elapsed += t
    first_half = len(half) / sum(half) / (len(steady) / sum(steady)) - 1 if len(half) < len(steady) else None
    return {"step_spread_pct": 100 * spread, "warmup_vs_median": [w / median for w in r.get("warmup_seconds") or []],
            "first_half_vs_window_pct": None if first_half is None else 100 * first_half}


def key(r: dict) -> tuple:
    return r.get("sweep"), r.get("model"), r.get("batch_size"), r.get("engine"), r.get("precision")


def window_stop(r: dict, steady: float) -> str:
    """What ended the window (the record's window_ended_by), "min-steps" where the least steps ran past the duration."""
    ended = r.get("window_ended_by") or "signal"
    if ended == "duration" and steady > r["config.measure.duration"] and r.get("steady_steps") == r.get("config.measure.min_steady_steps"):
        return "min-steps"
    return ended


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-sh-quick", action="store_true", help="time ./run.sh --quick")
    p.add_argument("--run-sh", action="store_true", help="time ./run.sh (the default plan)")
    p.add_argument("--infer-defaults", action="store_true", help="infer-all defaults before/after")
    p.add_argument("--train-all", action="store_true", help="time cnnbench train-all with the extra arguments")
    p.add_argument("--model", default="resnet50", help="model of --infer-defaults (default resnet50)")
    p.add_argument("--batch-size", type=int, default=16, help="batch of --infer-defaults (default 16)")
    p.add_argument("--baseline", type=Path, help="an earlier output's .jsonl: each configuration's images/s against it")
    p.add_argument("--records", type=Path, help="only break down the records of a finished run: a folder holding "
                                                "results_train/ and results_infer/ (./run.sh's working folder)")
    add_save_option(p)
    args, extra = p.parse_known_args()
    rec = Recorder(__file__, args.save_to)
    if args.records:
        configuration_times(rec, args.records, args.baseline)
        rec.save()
        return 0
    with tempfile.TemporaryDirectory(prefix="cnnbench-sweep-") as tmp:
        scratch = Path(tmp)
        if args.run_sh_quick:
            rec.say_load("before")
            row = run([str(REPO / "run.sh"), "--quick"], scratch, rec, "./run.sh --quick")
            rec.say_load("after")
            rec.say(f"./run.sh --quick: {row['wall_seconds'] / 60:.1f} min (target under 10 min on 2 cores): "
                    f"{'PASS' if row['wall_seconds'] < 600 and row['exit_code'] == 0 else 'FAIL'}")
            configuration_times(rec, scratch, args.baseline)
        if args.run_sh:
            rec.say_load("before")
            row = run([str(REPO / "run.sh")], scratch, rec, "./run.sh")
            rec.say_load("after")
            configuration_times(rec, scratch, args.baseline)
            rec.say(f"./run.sh: {row['wall_seconds'] / 60:.1f} min (target under 30 min on 2 cores): "
                    f"{'PASS' if row['wall_seconds'] < 1800 and row['exit_code'] == 0 else 'FAIL'}")
        if args.infer_defaults:
            infer_defaults(rec, scratch, args.model, args.batch_size)
        if args.train_all:
            run([sys.executable, "-m", "cnnbench", "train-all", *extra], scratch, rec, "train-all " + " ".join(extra))
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
