"""`cnnbench train-all` and `infer-all`: models x batch sizes (x engines x precisions, x accelerator
counts), each configuration in its own process.

One process per configuration, as the original's scripts ran one nvcnn.py per configuration: a crash
or an out-of-memory in one cannot take the sweep down, every configuration starts from a clean
device, and system performance is the whole command's wall time. Each record is written by its run
as soon as the run ends, so an interrupted sweep keeps what finished.
"""

from __future__ import annotations

import argparse
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnbench import environment, errors, reporting, results
from cnnbench.models.registry import forward_flops, resolve_entry

DEFAULT_MODELS = results.ORIGINAL_MODEL_ORDER


@dataclass(frozen=True)
class Plan:
    name: str
    warmup: int
    num_batches: int
    duration: float | None
    min_steady_steps: int
    reason: str


# The original: 500 batches per configuration (train-all.sh) after nvcnn.py's warm-up steps.
ORIGINAL_PLAN = Plan("original", 20, 500, None, 3, "the original's 500 timed batches after 20 warm-up steps")
# A 2-core CPU trains ResNet-152 at batch 64 in tens of seconds per step: 15 x 520 steps would take days.
CPU_PLAN = Plan(
    "cpu", 2, 500, 20.0, 3,
    "no GPU: 2 warm-up steps, then 20 s of steady-state time and at least 3 steady steps per configuration "
    "(500 batches x 15 configurations at 224 px would take days on a CPU)",
)


def choose_plan(args: argparse.Namespace, device: torch.device, cpu_plan: Plan = CPU_PLAN) -> Plan:
    base = {"original": ORIGINAL_PLAN, "cpu": cpu_plan}.get(args.plan) or (ORIGINAL_PLAN if device.type == "cuda" else cpu_plan)
    reason = base.reason if args.plan != "auto" else f"{device.type} device detected: {base.reason}"
    overrides = {k: getattr(args, k) for k in ("warmup", "num_batches", "duration") if getattr(args, k) is not None}
    if overrides:
        reason += "; overridden by " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
    return Plan(
        name=base.name + ("+overrides" if overrides else ""),
        warmup=overrides.get("warmup", base.warmup),
        num_batches=overrides.get("num_batches", base.num_batches),
        duration=overrides.get("duration", base.duration),
        min_steady_steps=args.min_steady_steps,
        reason=reason,
    )


def parse_list(text: str, what: str) -> list[str]:
    # The original's scripts accept , : ; - as separators; so do we, except that a path to a spec
    # file (it has a '/' or ends in .json) keeps its hyphens.
    items = []
    for item in text.replace(":", ",").replace(";", ",").replace(" ", ",").split(","):
        items += [item] if "/" in item or item.endswith(".json") else item.split("-")
    items = [t for t in items if t]
    if not items:
        raise errors.UsageError(f"{what} is empty; give a comma-separated list")
    return items


def parse_accelerator_counts(text: str) -> list[int]:
    counts = []
    for item in parse_list(str(text), "--num-accelerators"):
        if not item.isdigit() or int(item) < 1:
            raise errors.UsageError(f"--num-accelerators: {item!r} is not a positive integer; give counts such as 1,2,4")
        counts.append(int(item))
    return counts


def parse_batch_sizes(text: str) -> list[int]:
    sizes = []
    for item in parse_list(text, "--batch-sizes"):
        if not item.isdigit() or int(item) < 1:
            raise errors.UsageError(f"--batch-sizes: {item!r} is not a batch size; give integers of at least 1, e.g. 16,32,64")
        sizes.append(int(item))
    return sizes


def matmul_gflops(device: torch.device) -> float:
    """A one-second calibration of the device's dense fp32 arithmetic rate, for the time estimate only."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5:
        a @ a
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


# Rough: convolution training reaches about a third of a device's GEMM rate, and a training step
# costs about 3 forward passes (forward, backward for activations, backward for weights).
CNN_EFFICIENCY = 0.3
TRAIN_PASSES = 3.0
STARTUP_SECONDS = 5.0  # interpreter, torch import, model build


def estimate_seconds(models: list[str], batches: list[int], plan: Plan, image_size: int | None, gflops: float, passes: float) -> float:
    total = 0.0
    for model in models:
        entry = resolve_entry(model)
        flops = forward_flops(entry, image_size or entry.input_size)
        for batch in batches:
            step = passes * flops * batch / (gflops * 1e9 * CNN_EFFICIENCY)
            steady = plan.num_batches * step
            if plan.duration is not None:
                steady = min(steady, max(plan.duration, plan.min_steady_steps * step))
            total += STARTUP_SECONDS + plan.warmup * step + steady
    return total


@dataclass
class Configuration:
    model: str
    batch_size: int
    log_name: str  # result_<...>.txt
    argv: list[str]  # arguments after `python -m cnnbench`
    base_record: dict  # what a failure record says about the run when the run itself could not write one
    num_accelerators: int = 1  # processes of a data-parallel training job


def run_sweep(kind: str, configurations: list[Configuration], results_dir: Path, estimate: float | None) -> int:
    """Run each configuration in a child process, tee its output to its log, record failures, summarise."""
    start = time.time()
    done_seconds: list[float] = []
    for k, cfg in enumerate(configurations, 1):
        elapsed = time.time() - start
        left = _time_left(done_seconds, len(configurations) - k + 1, estimate, elapsed)
        accelerators = f" x{cfg.num_accelerators} accelerators" if cfg.num_accelerators > 1 else ""
        reporting.console.rule(f"{kind} {k}/{len(configurations)}: {cfg.model} batch {cfg.batch_size}{accelerators}  "
                               f"elapsed {_clock(elapsed)}  left ~{_clock(left)}")
        t0 = time.time()
        before = len(results.read_records(results_dir))
        code = _run_child(cfg.argv, results_dir / cfg.log_name)
        done_seconds.append(time.time() - t0)
        if len(results.read_records(results_dir)) == before:  # the child died before it could write its record
            results.append_record(results_dir, {**cfg.base_record, "status": "failed", "reason": _failure_reason(code, results_dir / cfg.log_name),
                                                **environment.collect()})
        if code == errors.EXIT_INTERRUPTED:
            reporting.say(f"Sweep interrupted after {k - 1} complete configuration(s); results so far are in {results_dir}")
            _summary(kind, results_dir)
            return errors.EXIT_INTERRUPTED
    reporting.say(f"Sweep finished in {_clock(time.time() - start)}; tables in {results_dir / results.TABLES_CSV}")
    _summary(kind, results_dir)
    return 0


def _run_child(argv: list[str], log_path: Path) -> int:
    command = [sys.executable, "-m", "cnnbench", *argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()
            return process.wait()
        except KeyboardInterrupt:
            # The child got the same SIGINT (same process group); let it print its statistics and exit.
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
            process.wait()
            return errors.EXIT_INTERRUPTED


def _failure_reason(code: int, log_path: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (likely the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    lines = [l for l in log_path.read_text().splitlines() if l.strip()]
    return f"exit code {code}: {lines[-1][:300] if lines else 'no output'}"


def _time_left(done: list[float], remaining: int, estimate: float | None, elapsed: float) -> float:
    if done:
        return remaining * sum(done) / len(done)
    return max(0.0, (estimate or math.nan) - elapsed)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _summary(kind: str, results_dir: Path) -> None:
    records = results.with_scaling_efficiency(results.read_records(results_dir))
    columns = [("model", "model"), ("batch", "batch_size")]
    if kind == "infer":
        columns += [("engine", "engine"), ("precision", "precision"), ("p90 ms", "latency_ms_p90"), ("guard rel. err", "guard_relative_error")]
    several = any((r.get("num_accelerators") or 1) > 1 for r in records)
    if several:
        columns += [("accelerators", "num_accelerators")]
    columns += [("status", "status"), ("img/s", "images_per_sec"), ("+/-", "images_per_sec_stderr"),
                ("jitter", "images_per_sec_jitter"), ("system img/s", "system_images_per_sec")]
    if several:
        columns += [("efficiency %", "scaling_efficiency")]
    reporting.summary_table(f"cnnbench {kind}-all: {results_dir}", records, columns)


def child_argv(command: str, args: argparse.Namespace, model: str, overrides: dict) -> list[str]:
    """`cnnbench COMMAND MODEL ...` reproducing every option the user gave, with this configuration's overrides.

    Options are read off the child command's own parser, so a new option passes through with no edit here.
    """
    from cnnbench.cli import build_parser

    child = build_parser()._subparsers._group_actions[0].choices[command]  # argparse keeps subparsers here
    argv = [command, model]
    for action in child._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = overrides.get(action.dest, getattr(args, action.dest, action.default))
        if value is None or (value == action.default and action.dest not in overrides):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv += [action.option_strings[0]] if value else []
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


# Inference on a CPU: a forward pass costs a third of a training step, so 10 s of steady time suffices.
CPU_INFER_PLAN = Plan(
    "cpu", 2, 500, 10.0, 3,
    "no GPU: 2 warm-up batches, then 10 s of steady-state time and at least 3 steady batches per configuration",
)


def sweep(kind: str, args: argparse.Namespace) -> int:
    """train-all and infer-all: validate every configuration, print the plan and estimate, rotate, run."""
    from cnnbench import cli
    from cnnbench.config import flatten

    models = parse_list(args.models, "--models") if args.models else list(DEFAULT_MODELS)
    batches = parse_batch_sizes(args.batch_sizes)
    pairs = [(None, None)]
    if kind == "infer":
        from cnnbench.engines import ENGINES, SUPPORTED, supported_pairs

        engines = parse_list(args.engines, "--engines")
        precisions = parse_list(args.precisions, "--precisions")
        for engine in engines:
            if engine not in ENGINES:
                raise errors.UsageError(f"--engines: unknown engine {engine!r}; use some of: {', '.join(ENGINES)}")
    device = cli.placement_from(args).device  # bad device/precision options fail before anything runs
    if kind == "infer":
        pairs = [(e, p) for e in engines for p in precisions if p in SUPPORTED[e].get(device.type, ())]
        skipped = [f"{e}/{p}" for e in engines for p in precisions if (e, p) not in pairs]
        if not pairs:
            raise errors.UsageError(f"no engine/precision pair of --engines and --precisions works on {device.type}; "
                                    f"pairs that do: {supported_pairs(device.type)}")
        if skipped:
            reporting.say(f"Skipping pairs that cannot run on {device.type}: {', '.join(skipped)}")
    # Training: each configuration also runs at every accelerator count (data-parallel processes, batch
    # size per process); they share the configuration's log dir, so the inference sweep finds its checkpoint.
    counts = parse_accelerator_counts(args.num_accelerators) if kind == "train" else [1]
    if kind == "train":
        from cnnbench import distributed

        for count in counts:
            distributed.check_world(count, distributed.planned(count), device)
            note = distributed.cpu_note(distributed.planned(count), device)
            if note:
                reporting.say(f"x{count}: {note}")
    plan = choose_plan(args, device, CPU_INFER_PLAN if kind == "infer" else CPU_PLAN)
    results_dir = Path(args.results_dir)
    configurations = []
    for model in models:
        name = resolve_entry(model).name  # an unknown model fails here, before anything runs
        for batch in batches:
            for engine, precision in pairs:
                for count in counts:
                    overrides = {"batch_size": batch, "warmup": plan.warmup, "num_batches": plan.num_batches,
                                 "duration": plan.duration, "results_dir": str(results_dir), "log_dir": f"log_{name}_{batch}"}
                    suffix = f"_x{count}" if count > 1 else ""
                    if kind == "infer":
                        overrides.update(engine=engine, precision=precision)
                        suffix = "" if (engine, precision) == ("eager", "fp32") else f"_{engine}_{precision}"
                    else:
                        overrides.update(num_accelerators=count)
                    cfg = cli.config_from(kind, args, model, overrides)
                    cfg.validate()
                    if kind == "infer":
                        cli.check_infer_config(cfg)
                    base = {"kind": kind, "model": name, "batch_size": batch, "device": str(device), "engine": engine,
                            "precision": precision or cfg.placement.precision, **flatten(cfg)}
                    if kind == "train":
                        base["num_accelerators"] = count
                    configurations.append(Configuration(name, batch, f"result_{name}_{batch}{suffix}.txt",
                                                        child_argv(kind, args, model, overrides), base, count))

    gflops = matmul_gflops(device)
    estimate = estimate_seconds(models, batches, plan, args.image_size, gflops, TRAIN_PASSES if kind == "train" else 1.0) * len(pairs) * len(counts)
    reporting.say(f"Plan: {plan.name}: {plan.reason}")
    reporting.say(f"{len(configurations)} configurations ({', '.join(models)} x batch {', '.join(map(str, batches))}"
                  + (f" x {', '.join(f'{e}/{p}' for e, p in pairs)}" if kind == "infer" else "")
                  + (f" x {', '.join(map(str, counts))} accelerators" if counts != [1] else "")
                  + f") on {device}; estimated {_clock(estimate)} (rough: from FLOPs and a matmul calibration of this device)")
    moved = results.rotate(results_dir)
    if moved:
        reporting.say(f"Previous results moved to {moved}")
    results_dir.mkdir(parents=True)
    return run_sweep(kind, configurations, results_dir, estimate)
