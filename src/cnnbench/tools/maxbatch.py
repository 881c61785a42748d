"""`cnnbench max-batch MODEL`: the largest batch that trains (or runs inference) without running out of
memory, and the images/s at every batch tried (issue 12; the original's tools/max-bs-test.sh).

The search doubles the batch from --first-batch until a probe fails (or --largest-batch runs), then
bisects between the largest batch that ran and the smallest that did not. Each probe is its own process,
`python -m cnnbench train|infer` with a few steps (its command line written from a typed config, as a
sweep's), so a failed allocation, a fragmented allocator or a crash cannot affect the next probe.

A probe fails by running out of memory (exit 3: CUDA's or the CPU allocator's error), by passing the
host memory limit, by dying (a signal, another exit code) or by running past --probe-timeout; any of
these makes its batch an upper bound, and the table says which it was. The host memory limit guards the
machine: this process polls the resident memory of the probe's whole process tree (/proc, every
POLL_SECONDS) and kills the tree above --memory-limit-gib, before the kernel's out-of-memory killer would
pick a victim. RLIMIT_AS was the alternative; it bounds virtual memory, and importing torch alone maps
3 GiB of it here, so it cannot express "4 GiB of RAM".

Records (results_max_batch/runs.jsonl): one per probe (kind max_batch_probe: batch_size, status
ok / oom / failed, reason, images_per_sec, peak_memory_mib, host_peak_rss_mib, probe_seconds) and one
for the search (kind max_batch: max_batch_size, images_per_sec_at_max, best_batch_size,
best_images_per_sec, memory_limit_gib, probe_batch_sizes, probe_statuses); every record carries the
configuration and the environment. results.csv holds the probes' images/s table (OOM where one failed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cnnbench.core import config, environment, errors, files, store, terminal
from cnnbench.core.config import InferConfig, MaxBatchConfig, MeasureConfig, PlacementConfig, TrainConfig

POLL_SECONDS = 0.05  # resident memory grows at a few GB/s at most: 50 ms lets a probe pass its limit by little
GIB = 2**30


@dataclass
class Probe:
    batch: int
    status: str  # ok, oom (out of memory, or past the host memory limit), failed (died, timed out)
    reason: str | None = None
    images_per_sec: float | None = None
    peak_memory_mib: float | None = None  # the probe's own record: allocator peak on CUDA, peak RSS on a CPU
    host_peak_rss_mib: float | None = None  # polled here: the probe's process tree
    seconds: float = 0.0

    @property
    def ran(self) -> bool:
        return self.status == "ok"


def search(probe: Callable[[int], Probe], first: int, largest: int) -> tuple[int | None, list[Probe]]:
    """Doubling from `first`, then bisection: (the largest batch that ran or None, every probe in order).
    A batch that failed bounds the search from above whatever the failure."""
    probes: list[Probe] = []

    def runs(batch: int) -> bool:
        probes.append(probe(batch))
        return probes[-1].ran

    good, bad, batch = 0, None, first
    while bad is None:
        if not runs(batch):
            bad = batch
        elif batch >= largest:
            return batch, probes
        else:
            good, batch = batch, min(2 * batch, largest)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if runs(middle) else (good, middle)
    return (good or None), probes


def default_memory_limit_gib() -> float:
    """Half the RAM, and at most 80% of what is available now: the rest of the machine keeps room."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = total
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return round(min(0.5 * total, 0.8 * available) / GIB, 2)


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (/proc/PID/stat's parent links, VmRSS)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # the process ended meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


def run_limited(command: list[str], limit_bytes: int, timeout: float, log: Path) -> tuple[int | None, int, str | None]:
    """Run `command` (its output to `log`) in a session of its own, killing its process tree when its
    resident memory passes `limit_bytes` or its time `timeout`. Returns (exit code or None when killed
    here, peak resident bytes seen, why it was killed)."""
    start, peak, why = time.monotonic(), 0, None
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while child.poll() is None:
            peak = max(peak, tree_rss_bytes(child.pid))
            if peak > limit_bytes:
                why = f"passed the memory limit ({peak / GIB:.2f} GiB resident > {limit_bytes / GIB:.2f} GiB)"
            elif time.monotonic() - start > timeout:
                why = f"still running after --probe-timeout {timeout:g} s"
            if why:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                return None, peak, why
            time.sleep(POLL_SECONDS)
    return child.returncode, peak, None


def probe_config(cfg: MaxBatchConfig, batch: int, folder: Path) -> TrainConfig | InferConfig:
    """The run a probe makes: cfg's model, device and precision at `batch`, a few steps, no telemetry, its
    checkpoint and record in `folder` (so no probe resumes from another's checkpoint)."""
    common = dict(model=cfg.model, image_size=cfg.image_size, seed=cfg.seed, log_dir=str(folder / "log"),
                  results_dir=str(folder / "results"),
                  measure=MeasureConfig(batch_size=batch, num_batches=cfg.steps, warmup=cfg.warmup,
                                        display_every=cfg.steps, no_telemetry=True),
                  placement=PlacementConfig(device=cfg.device, precision=cfg.precision, memory_format=cfg.memory_format))
    if cfg.mode == "train":
        return TrainConfig(**common, compile=cfg.engine == "compile")
    # No fp32 guard and one calibration batch: a probe asks whether the batch fits, not whether it is right.
    return InferConfig(**common, engine=cfg.engine, random_weights=True, guard_batches=0, calib_batches=1)


def probe_command(cfg: MaxBatchConfig, batch: int, folder: Path) -> list[str]:
    return [sys.executable, "-m", "cnnbench", cfg.mode, *config.to_argv(probe_config(cfg, batch, folder))]


def run_probe(cfg: MaxBatchConfig, batch: int, limit_bytes: int, scratch: Path) -> Probe:
    """One probe in its own process; its folder (checkpoint, record, log) removed afterwards."""
    import shutil

    folder = Path(tempfile.mkdtemp(prefix=f"probe-{batch}-", dir=scratch))
    started = time.monotonic()
    try:
        code, peak, killed = run_limited(probe_command(cfg, batch, folder), limit_bytes, cfg.probe_timeout,
                                         folder / "probe.log")
        probe = Probe(batch, "ok", host_peak_rss_mib=peak / 2**20, seconds=time.monotonic() - started)
        record = _child_record(folder / "results")
        if killed:
            probe.status, probe.reason = ("oom" if killed.startswith("passed the memory limit") else "failed"), killed
        elif code == 0 and record.get("status") == "ok":
            probe.images_per_sec, probe.peak_memory_mib = record.get("images_per_sec"), record.get("peak_memory_mib")
        elif code == errors.EXIT_OUT_OF_MEMORY:
            probe.status, probe.reason = "oom", record.get("reason") or _last_line(folder / "probe.log")
        else:
            died = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            probe.status, probe.reason = "failed", f"{died}: {_last_line(folder / 'probe.log')}"
        return probe
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child_record(results_dir: Path) -> dict:
    records = store.read_records(results_dir) if results_dir.exists() else []
    return records[-1] if records else {}


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1][:300] if lines else "no output"


def preflight(cfg: MaxBatchConfig, scratch: Path) -> tuple[str, str]:
    """Check model, engine, precision and device once, here, as a probe would (one line, exit 2, for a
    mistake); returns (the model's name, the device)."""
    cfg.validate()
    run = probe_config(cfg, cfg.first_batch, scratch / "preflight")
    if cfg.mode == "train":
        from cnnbench.backends.pytorch import distributed
        from cnnbench.recipes import training

        resolved = training.preflight(run, distributed.planned(1))
    else:
        from cnnbench.recipes import inference

        resolved = inference.preflight(run)
    return resolved.entry.name, str(resolved.placement.device)


def run(cfg: MaxBatchConfig) -> int:
    """The search, its table and its records; exit 0 when some batch ran."""
    limit_gib = cfg.memory_limit_gib or default_memory_limit_gib()
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    with tempfile.TemporaryDirectory(prefix="cnnbench-max-batch-") as scratch:
        name, device = preflight(cfg, Path(scratch))
        base = {"model": name, "mode": cfg.mode, "engine": cfg.engine, "precision": cfg.precision, "device": device,
                "image_size": cfg.image_size, "memory_limit_gib": limit_gib, **config.flatten(cfg), **environment.collect()}
        terminal.say(f"cnnbench max-batch {name}: {cfg.mode}, {cfg.engine} {cfg.precision} on {device}; each probe "
                      f"{cfg.warmup} warm-up + {cfg.steps} steps in its own process, host memory limit {limit_gib:g} GiB")

        def probe(batch: int) -> Probe:
            done = run_probe(cfg, batch, int(limit_gib * GIB), Path(scratch))
            terminal.say(describe_probe(done))
            store.save_record(Path(cfg.results_dir), {"kind": "max_batch_probe", **base, **probe_fields(done)})
            return done

        found, probes = search(probe, cfg.first_batch, cfg.largest_batch)
    summary = summary_fields(found, probes)
    store.save_record(Path(cfg.results_dir), {"kind": "max_batch", **base, "batch_size": None, **summary})
    report(name, found, probes, summary, cfg)
    if found is None:
        if any(p.status == "oom" for p in probes):
            raise errors.OutOfMemory(1, hint="batch 1 does not fit either: reduce --image-size or use a smaller model")
        raise errors.CnnbenchError(f"no batch ran; the first probe's failure: {probes[0].reason}")
    return 0


def probe_fields(p: Probe) -> dict:
    return {"batch_size": p.batch, "status": p.status, "reason": p.reason, "images_per_sec": p.images_per_sec,
            "peak_memory_mib": p.peak_memory_mib, "host_peak_rss_mib": p.host_peak_rss_mib, "probe_seconds": p.seconds}


def summary_fields(found: int | None, probes: list[Probe]) -> dict:
    ran = [p for p in probes if p.ran and p.images_per_sec is not None]
    best = max(ran, key=lambda p: p.images_per_sec, default=None)
    at_max = next((p for p in ran if p.batch == found), None)
    return {"status": "ok" if found else "oom", "max_batch_size": found,
            "images_per_sec_at_max": at_max.images_per_sec if at_max else None,
            "best_batch_size": best.batch if best else None, "best_images_per_sec": best.images_per_sec if best else None,
            "probes": len(probes), "probe_batch_sizes": [p.batch for p in probes],
            "probe_statuses": [p.status for p in probes], "probe_images_per_sec": [p.images_per_sec for p in probes]}


def describe_probe(p: Probe) -> str:
    what = f"{p.images_per_sec:.1f} img/s" if p.images_per_sec is not None else p.status.upper()
    memory = f", host peak {p.host_peak_rss_mib:.0f} MiB" if p.host_peak_rss_mib else ""
    return f"  batch {p.batch:>6}: {what}{memory} ({p.seconds:.0f} s)" + (f"; {p.reason}" if p.reason else "")


def report(name: str, found: int | None, probes: list[Probe], summary: dict, cfg: MaxBatchConfig) -> None:
    rows = [probe_fields(p) for p in sorted(probes, key=lambda p: p.batch)]
    terminal.summary_table(f"cnnbench max-batch {name} ({cfg.mode}, {cfg.engine} {cfg.precision})", rows,
                            [("batch", "batch_size"), ("status", "status"), ("img/s", "images_per_sec"),
                             ("peak MiB (run)", "peak_memory_mib"), ("host peak MiB", "host_peak_rss_mib"),
                             ("seconds", "probe_seconds"), ("why not", "reason")])
    if found is None:
        terminal.say(f"No batch ran ({len(probes)} probes)")
        return
    best = (f"; highest throughput at batch {summary['best_batch_size']} ({summary['best_images_per_sec']:.1f} img/s)"
            if summary["best_batch_size"] else "")
    limit = " (--largest-batch)" if found >= cfg.largest_batch else ""
    terminal.say(f"Largest batch that runs: {found}{limit}, {summary['images_per_sec_at_max'] or float('nan'):.1f} img/s"
                  f"{best}; {len(probes)} probes; records in {Path(cfg.results_dir) / store.RECORDS}")
