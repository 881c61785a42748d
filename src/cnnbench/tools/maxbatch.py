"""`cnnbench max-batch MODEL`: the largest batch that trains (or runs inference) without running out of
memory, and the images/s at every batch tried (issue 12; the original's tools/max-bs-test.sh).

The search runs coarse to fine (issue 23: the exact bisection cost 18 probes, 25 minutes, for ResNet-50
under 4 GiB). The first probe (--first-batch) gives the process's own memory and start-up time; with the
memory model's per-image lower bound (core/memory.py) that puts the largest batch at most at some N, and
the second probe runs N/8, far enough up to measure the memory per image. A line through the two probes'
resident memory then predicts where the limit falls: the next probe aims half a --tolerance below it, and
the one after at the batch whose failure settles the search. The search stops when the largest batch that
ran and the smallest that did not are --tolerance percent apart (5), exactly 1 apart below batch 32. A
probe that contradicts the fit (fails where it said it fits, or the reverse) makes the next step plain
bisection; with no memory figures (a model the meta device cannot run) it is doubling and bisection, as
before. The estimate (how many probes, how long) is printed before the first probe's line, and priced
again once a sizeable probe has measured images/s. Each probe is its own process,
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

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cnnbench.core import config, environment, errors, files, memory, store, terminal
from cnnbench.core.config import InferConfig, MaxBatchConfig, MeasureConfig, PlacementConfig, TrainConfig

POLL_SECONDS = 0.05  # resident memory grows at a few GB/s at most: 50 ms lets a probe pass its limit by little
GIB = 2**30
# The second probe runs this fraction of the memory model's bound: far enough up that its memory rises a
# tenth of the headroom or more (the model's per image is low by 1.1-1.5x for ResNet-50, so about 1/8 of
# the boundary is reached), cheap enough that its steps cost an eighth of the probe near the boundary.
SLOPE_FRACTION = 8


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


def gap(good: int, tolerance: float) -> int:
    """How far apart the largest batch that ran and the smallest that did not may end: `tolerance` percent
    of the batch that ran, at least 1, and exactly 1 below MAX_BATCH_EXACT_BELOW (where 5% is under 1)."""
    if good < config.MAX_BATCH_EXACT_BELOW:
        return 1
    return max(1, int(good * tolerance / 100))


@dataclass
class Estimate:
    """Where the memory limit is expected to fall: `batch`; `fitted` when it comes from two probes' resident
    memory (a line through them), not from the memory model's per-image lower bound (an over-estimate)."""
    batch: float
    fitted: bool


def search(probe: Callable[[int], Probe], first: int, largest: int, tolerance: float = 0.0,
           predict: Callable[[list[Probe]], Estimate | None] | None = None) -> tuple[int | None, list[Probe]]:
    """Coarse to fine: (the largest batch that ran or None, every probe in order). The batch grows from
    `first` until a probe fails (doubling, or a jump to the predicted boundary), then the bracket closes
    until the batch that ran and the one that did not are `gap` apart (`tolerance` percent; 0: exact). A
    batch that failed bounds the search from above whatever the failure. Without `predict` (or when a
    probe contradicted its prediction) the steps are plain doubling and bisection."""
    probes: list[Probe] = []
    good, bad, batch, used = 0, None, first, None  # used: the estimate that chose `batch`
    while True:
        probes.append(probe(batch))
        if probes[-1].ran:
            good = batch
        else:
            bad = batch
        if good >= largest or (bad is not None and bad - good <= gap(good, tolerance)):
            return (good or None), probes
        # A guided probe that failed where the fit said it fits, or ran where it said it fails: the fit is
        # off here, so the next step is a plain one (bisection keeps the worst case logarithmic).
        surprised = used is not None and used.fitted and (batch <= used.batch) != probes[-1].ran
        used = None if surprised or predict is None else predict(probes)
        batch = next_batch(good, bad, largest, tolerance, used)


def next_batch(good: int, bad: int | None, largest: int, tolerance: float, estimate: Estimate | None) -> int:
    """The next probe. `low` is the batch whose failure would settle the search; `high` (with a failure
    known) the smallest batch whose success would. A fitted estimate aims half a tolerance below itself
    (so that the probe runs, and `low` after it settles); one above the bracket means the failure is just
    past `bad`, so `high` is tried; a rough (model) estimate only sets 1/SLOPE_FRACTION of itself as the
    next batch, which measures the memory per image for the fit."""
    low = good + gap(good, tolerance)
    if bad is None:
        if estimate is None:
            return min(2 * good, largest)
        if not estimate.fitted:
            return min(max(2 * good, int(estimate.batch / SLOPE_FRACTION)), largest)
        return min(max(low, int(estimate.batch * (1 - tolerance / 200))), largest)
    high = bad - 1
    while high - 1 > good and bad - (high - 1) <= gap(high - 1, tolerance):
        high -= 1
    if estimate is None or not estimate.fitted:
        return (good + bad) // 2
    if estimate.batch < low:
        return min(low, bad - 1)
    if estimate.batch >= bad:
        return high
    return min(max(low, int(estimate.batch * (1 - tolerance / 200))), high)


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


def preflight(cfg: MaxBatchConfig, scratch: Path):
    """Check model, engine, precision and device once, here, as a probe would (one line, exit 2, for a
    mistake); returns the resolved run (its entry, image size and placement)."""
    cfg.validate()
    run = probe_config(cfg, cfg.first_batch, scratch / "preflight")
    if cfg.mode == "train":
        from cnnbench.backends.pytorch import distributed
        from cnnbench.recipes import training

        return training.preflight(run, distributed.planned(1))
    from cnnbench.recipes import inference

    return inference.preflight(run)


def host_limit_gib(asked: float | None) -> float:
    """--memory-limit-gib, or the default; one above the host's RAM could never act (the kernel's
    out-of-memory killer would pick a victim first), so it is capped there, saying so (issue 23)."""
    if asked is None:
        return default_memory_limit_gib()
    total = memory.available_bytes("cpu")
    if total and asked * GIB > total:
        terminal.warn(f"--memory-limit-gib {asked:g} is above this host's {total / GIB:.1f} GiB of RAM, where it "
                      f"could never act; capped at {total / GIB:.1f} GiB")
        return round(total / GIB, 2)
    return asked


def per_image_bytes(resolved, cfg: MaxBatchConfig) -> float | None:
    """The memory model's lower bound of one more image (core/memory.py): batch 1's figure less its
    parameters (paid once); None where the meta device cannot run the model."""
    try:
        build = lambda: resolved.entry.build(resolved.image_size)  # noqa: E731
        both = memory.batch_one_bytes(build, resolved.image_size, training=cfg.mode == "train")
        params = memory.batch_one_bytes(build, resolved.image_size, training=cfg.mode == "train", bytes_per_value=0)
    except Exception:  # an estimate is a courtesy, as in memory.out_of_memory
        return None
    return float(both - params) if both > params else None


def predictor(limit_bytes: float, image_bytes: float | None, metric: str) -> Callable[[list[Probe]], Estimate | None]:
    """Where the limit falls, from the probes that ran: a line through the largest one and the largest
    other whose memory lies at least a tenth of the headroom below it (closer points are noise); with one
    probe only, the memory model's per image (a lower bound, so the estimate is high: `fitted` False)."""
    limit_mib = limit_bytes / 2**20

    def predict(probes: list[Probe]) -> Estimate | None:
        points = sorted({p.batch: getattr(p, metric) for p in probes if p.ran and getattr(p, metric)}.items())
        if not points:
            return None
        top, top_mib = points[-1]
        for batch, mib in reversed(points[:-1]):
            if top_mib - mib >= 0.1 * (limit_mib - mib) and top_mib > mib:
                return Estimate(top + (limit_mib - top_mib) * (top - batch) / (top_mib - mib), fitted=True)
        if image_bytes and limit_mib > top_mib:
            return Estimate(top + (limit_mib - top_mib) * 2**20 / image_bytes, fitted=False)
        return None

    return predict


def estimate_line(first: Probe, rough: Estimate | None, cfg: MaxBatchConfig) -> str:
    """Printed before the search goes on: how many probes and roughly how long. Each probe's start-up is
    the first probe's time (its batch is small); the steps are priced when a sizeable probe has run."""
    passes = cfg.warmup + cfg.steps
    if not first.ran:
        return (f"Estimate: batch {first.batch} did not run; bisection below it, at most about "
                f"{max(1, math.ceil(math.log2(first.batch)))} more probes of {first.seconds:.0f} s or more each")
    if rough is None:
        worst = 2 * max(1, math.ceil(math.log2(max(2, cfg.largest_batch / cfg.first_batch))))
        return (f"Estimate: no memory model for this run: doubling then bisection, at most about {worst} probes of "
                f"{first.seconds:.0f} s start-up each plus {passes} steps at their batch")
    top = min(rough.batch, cfg.largest_batch)
    planned = [b for b in (top / SLOPE_FRACTION, top * (1 - cfg.tolerance / 200), top * (1 + cfg.tolerance / 200)) if b > first.batch]
    return (f"Estimate: the memory model puts the largest batch at no more than about {top:,.0f}; about "
            f"{len(planned) + 1} probes to within {cfg.tolerance:g}% (exact below {config.MAX_BATCH_EXACT_BELOW}), "
            f"each {first.seconds:.0f} s of start-up plus {passes} steps at its batch (~{passes * sum(planned[:2]):,.0f} "
            f"images in all); priced in minutes once the probes' memory gives a fit")


def time_line(done: Probe, fit: Estimate, probes_left: int, cfg: MaxBatchConfig, startup: float) -> str:
    """The estimate again once a sizeable probe measured images/s: the rest of the search, priced."""
    passes = cfg.warmup + cfg.steps
    images = passes * fit.batch * (1 - cfg.tolerance / 200) + fit.batch / 2  # the one that runs; the one killed
    seconds = probes_left * startup + images / done.images_per_sec
    return (f"Estimate: largest batch about {fit.batch:,.0f} by the memory fit; about {probes_left} more probes, "
            f"roughly {seconds / 60:.1f} min at batch {done.batch}'s {done.images_per_sec:.1f} img/s")


def nothing_fits(probes: list[Probe], limit_gib: float, image_bytes: float | None) -> errors.CnnbenchError:
    """The final line when no batch ran, agreeing with the probe table: a probe killed at the host limit
    gets the limit's advice (core/memory.py), a device out-of-memory the shrink-the-run advice."""
    first = probes[0]
    if first.status == "oom" and first.reason and first.reason.startswith("passed the memory limit"):
        reached = (first.host_peak_rss_mib or 0) * 2**20
        return errors.OutOfMemory(first.batch, hint=memory.limit_advice(limit_gib * GIB, reached, image_bytes))
    if any(p.status == "oom" for p in probes):
        return errors.OutOfMemory(1, hint="batch 1 does not fit either: reduce --image-size or use a smaller model")
    return errors.CnnbenchError(f"no batch ran; the first probe's failure: {first.reason}")


def run(cfg: MaxBatchConfig) -> int:
    """The search, its table and its records; exit 0 when some batch ran."""
    cfg.validate()
    limit_gib = host_limit_gib(cfg.memory_limit_gib)
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    with tempfile.TemporaryDirectory(prefix="cnnbench-max-batch-") as scratch:
        resolved = preflight(cfg, Path(scratch))
        name, device = resolved.entry.name, str(resolved.placement.device)
        base = {"model": name, "mode": cfg.mode, "engine": cfg.engine, "precision": cfg.precision, "device": device,
                "image_size": cfg.image_size, "memory_limit_gib": limit_gib, **config.flatten(cfg), **environment.collect()}
        terminal.say(f"cnnbench max-batch {name}: {cfg.mode}, {cfg.engine} {cfg.precision} on {device}; each probe "
                      f"{cfg.warmup} warm-up + {cfg.steps} steps in its own process, host memory limit {limit_gib:g} GiB; "
                      f"batch {cfg.first_batch} first, for the estimate")
        image_bytes = per_image_bytes(resolved, cfg)
        on_gpu = resolved.placement.device.type == "cuda"
        # On a GPU the device's memory is the bound and the allocator's peak its measure; on a CPU the host limit.
        limit_bytes = memory.available_bytes(resolved.placement.device) if on_gpu else limit_gib * GIB
        predict = predictor(limit_bytes or limit_gib * GIB, image_bytes, "peak_memory_mib" if on_gpu else "host_peak_rss_mib")
        done: list[Probe] = []
        priced: list[bool] = []

        def probe(batch: int) -> Probe:
            result = run_probe(cfg, batch, int(limit_gib * GIB), Path(scratch))
            if not done:
                terminal.say(estimate_line(result, predict([result]), cfg))
            elif not priced and result.ran and result.images_per_sec and (fit := predict([*done, result])) and fit.fitted:
                priced.append(True)  # once: the first probe whose memory gives a fit prices the rest
                terminal.say(time_line(result, fit, 2, cfg, done[0].seconds))
            done.append(result)
            terminal.say(describe_probe(result))
            store.save_record(Path(cfg.results_dir), {"kind": "max_batch_probe", **base, **probe_fields(result)})
            return result

        found, probes = search(probe, cfg.first_batch, cfg.largest_batch, cfg.tolerance, predict)
    summary = summary_fields(found, probes)
    store.save_record(Path(cfg.results_dir), {"kind": "max_batch", **base, "batch_size": None, **summary})
    report(name, found, probes, summary, cfg)
    if found is None:
        raise nothing_fits(probes, limit_gib, image_bytes)
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
