"""`cnnbench train-all` and `infer-all`: models x batch sizes (x engines x precisions, x accelerator
counts), each configuration in its own process.

One process per configuration, as the original's scripts ran one nvcnn.py per configuration: a crash
or an out-of-memory in one cannot take the sweep down, every configuration starts from a clean
device, and system performance is the whole command's wall time. Each record is written by its run
as soon as the run ends, so an interrupted sweep keeps what finished.

The recipe: plan the configurations (each a typed config, its command line written back from it),
estimate the time, rotate the results folder, run them one by one, summarise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shlex
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnbench import backends
from cnnbench.core import config, efficiency, environment, errors, store, tables, terminal

from cnnbench.recipes import estimate
from cnnbench.core.config import InferConfig, RunConfig, SweepConfig
from cnnbench.models.registry import model_list, resolve_entry
from cnnbench.core.placement import resolve_device
from cnnbench.core.timing import Terminated
from cnnbench.engines import table as engine_table

DEFAULT_MODELS = config.ORIGINAL_MODELS


@dataclass(frozen=True)
class Plan:
    name: str
    warmup: int
    num_batches: int
    duration: float | None
    min_steady_steps: int
    reason: str
    batch_sizes: str | None = None  # a plan may fix the batch sizes (quick: 16 only)
    run_overrides: tuple[tuple[str, object], ...] = ()  # other child options the plan sets (dotted names)
    stop_at_stderr: float | None = None  # percent: a window that ends once its figure is known (timing.enough)
    min_steady_seconds: float = 0.0
    guard_warms_up: bool = False  # inference: a checked engine's guard batches count among its warm-up batches


# The original: 500 batches per configuration (train-all.sh) after nvcnn.py's warm-up steps.
ORIGINAL, WARMUP = config.ORIGINAL_NUM_BATCHES, config.ORIGINAL_WARMUP
ORIGINAL_PLAN = Plan("original", WARMUP, ORIGINAL, None, 3, f"the original's {ORIGINAL} timed batches after {WARMUP} warm-up steps")
# A 2-core CPU trains ResNet-152 at batch 64 in tens of seconds per step: 15 x 520 steps would take days.
# A CPU window ends at its duration, or earlier once Images/sec's +/- (the standard error) is within 0.5% of it
# after a floor of steady time and 10 steps (timing.enough). In ./run.sh on the 2-core EPYC, per-step images/s
# varied by a median 1.4% in inference (0.3-7.2%) and 5.4% in training (1.0-12.5%): 45 of 60 inference windows
# ended early, no training window did; a window's first half gave the whole window's images/s within a median
# 0.5% in inference, 1.8% in training (largest 6.7% and 7.6%). Training's last warm-up step was still more than
# 10% slower than the steady median in 14 of 15 configurations, so training keeps 2 warm-up steps and its 20 s
# (benchmarks/sweep_defaults.py --records, benchmarks/results/sweep_defaults-20261208T011027Z.txt; issue 26).
STOP_AT_STDERR = 0.5
CPU_PLANS = {
    "train": Plan("cpu", 2, ORIGINAL, 20.0, 3, "no GPU: 2 warm-up steps, then up to 20 s of steady-state time and at "
                                              "least 3 steady steps per configuration, stopping after 6 s once the "
                                              f"+/- is within {STOP_AT_STDERR}% ({ORIGINAL} batches x 15 configurations "
                                              "would take days on a CPU)", stop_at_stderr=STOP_AT_STDERR, min_steady_seconds=6.0),
    # A forward pass costs a third of a training step, so 10 s of steady time suffices. The guard compares one
    # batch (16-64 images' logits) with eager fp32: in ./run.sh's inference sweep on the 2-core EPYC its 4 default
    # batches took about a fifth of the time (4 eager fp32 reference passes per model and batch, 4 engine
    # passes per configuration; resnet152 at batch 64: 32 s of an 81 s configuration), and one batch judges the
    # relative error against its bound as well (benchmarks/results/sweep_defaults-*; issue 26).
    "infer": Plan("cpu", 2, ORIGINAL, 10.0, 3, "no GPU: 2 warm-up batches (the guard's batch is the first of a checked "
                                         "engine's), then up to 10 s of steady-state time and at least 3 steady "
                                         f"batches per configuration, stopping after 3 s once the +/- is within "
                                         f"{STOP_AT_STDERR}%; 1 guard batch",
                  run_overrides=(("guard_batches", 1),), stop_at_stderr=STOP_AT_STDERR, min_steady_seconds=3.0,
                  guard_warms_up=True),
}
# Every model once at batch 16, training then inference, in minutes on a 2-core CPU (docs/options.md, "Sweeps and their plans": measured).
# The guard keeps one batch against eager fp32 and int8 calibrates on 2 batches: enough to check, not to rank.
QUICK_PLANS = {
    "train": Plan("quick", 1, ORIGINAL, 3.0, 2, "quick: batch 16, 1 warm-up step, 3 s of steady-state time and at least 2 "
                                          "steady steps per configuration", batch_sizes="16"),
    "infer": Plan("quick", 1, ORIGINAL, 2.0, 2, "quick: batch 16, 1 warm-up batch, 2 s of steady-state time and at least 2 "
                                          "steady batches, 1 guard batch (a checked engine's warm-up), 2 int8 "
                                          "calibration batches per configuration",
                  batch_sizes="16", run_overrides=(("guard_batches", 1), ("calib_batches", 2)), guard_warms_up=True),
}


# The original's pressure test (train-all-pressure.sh): batch 64, 2,000 batches. On a CPU a bounded plan,
# with enough steps for the verdict's first and last 10% (soak.MIN_STEPS); a 2-core CPU trains ResNet-152 at
# batch 16 in about 15 s a step.
PRESSURE = config.PRESSURE_NUM_BATCHES
PRESSURE_PLAN = Plan("pressure", WARMUP, PRESSURE, None, 3, f"the original pressure test: batch 64, {PRESSURE:,} batches "
                                                           f"after {WARMUP} warm-up steps", batch_sizes="64")
CPU_PLANS["soak"] = Plan("cpu", 2, PRESSURE, 120.0, 20, "no GPU: batch 16, 2 warm-up steps, then 120 s of steady-state "
                                                        "time and at least 20 steady steps per model "
                                                        f"({PRESSURE:,} batches of 64 would take days on a CPU)",
                         batch_sizes="16")
QUICK_PLANS["soak"] = Plan("quick", 1, PRESSURE, 3.0, 20, "quick: batch 16, 1 warm-up step, 3 s of steady-state time and at "
                                                      "least 20 steady steps per model", batch_sizes="16")


def choose_plan(kind: str, settings: SweepConfig, explicit: set[str], device: torch.device) -> Plan:
    """The plan for the device, then any --warmup / --num-batches / --duration the user gave on top."""
    name = "quick" if settings.quick else settings.plan
    if name == "auto":
        name = "original" if device.type == "cuda" else "cpu"
    original = PRESSURE_PLAN if kind == "soak" else ORIGINAL_PLAN
    base = {"original": original, "cpu": CPU_PLANS[kind], "quick": QUICK_PLANS[kind]}[name]
    reason = f"{device.type} device detected: {base.reason}" if settings.plan == "auto" and not settings.quick else base.reason
    given = [k for k in ("warmup", "num_batches", "duration") if f"measure.{k}" in explicit]
    if given:
        reason += "; overridden by " + ", ".join(f"--{k.replace('_', '-')}" for k in given)
    return dataclasses.replace(base, name=base.name + ("+overrides" if given else ""), reason=reason)


def batch_sizes(plan: Plan, settings: SweepConfig, explicit: set[str]) -> list[int]:
    """--batch-sizes when given, else the plan's own (quick: 16), else the default 16,32,64."""
    text = plan.batch_sizes if plan.batch_sizes and "sweep.batch_sizes" not in explicit else settings.batch_sizes
    return parse_counts(text, "--batch-sizes", "16,32,64")


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


def parse_counts(text: str, what: str, example: str) -> list[int]:
    counts = []
    for item in parse_list(str(text), what):
        if not item.isdigit() or not 1 <= int(item) <= config.MAX_INT:
            raise errors.UsageError(f"{what}: {item!r} is not a positive integer; give integers of at least 1, e.g. {example}")
        counts.append(int(item))
    return counts


@dataclass
class Configuration:
    run: RunConfig  # the child's whole configuration
    log_name: str  # result_<...>.txt
    base_record: dict  # what a failure record says about the run when the run itself could not write one
    estimated_seconds: float = math.nan

    @property
    def argv(self) -> list[str]:  # arguments after `python -m cnnbench`
        return [self.base_record["kind"], *config.to_argv(self.run)]


def sweep(kind: str, settings: SweepConfig, base: RunConfig, explicit: set[str]) -> int:
    """train-all and infer-all: validate every configuration, print the plan and estimate, then (unless
    --dry-run) hold the results folder (rotating it only when no other sweep holds it), run, summarise."""
    settings.validate()
    device = resolve_device(base.placement.device)  # a bad device fails before anything runs
    plan = choose_plan(kind, settings, explicit, device)
    models = model_list(settings.models, "--models") if settings.models is not None else list(DEFAULT_MODELS)
    batches = unique(batch_sizes(plan, settings, explicit), "--batch-sizes")
    configurations = plan_configurations(kind, settings, base, explicit, plan, unique_models(models), batches, device)
    configurations = repeated(configurations, settings.repeat)
    # Measured in a child process: this one runs no model, so it holds no CUDA context or cached memory
    # while the configurations run (issue 10). Its device queries create none: is_available counts
    # devices, and get_device_capability (preflight's memory format) reads properties, which left no
    # process in nvidia-smi on PyTorch 2.10 (unslothai/unsloth-zoo PR 1053's measurements).
    rates = estimate.calibrate(device, kind)
    k, n = settings.shard_slice()
    results_dir = Path(base.results_dir)
    kept = kind == "infer" and base.cache_path is not None
    if kind == "infer":
        configurations = with_cache(configurations, Path(base.cache_path) if kept else build_folder(results_dir))
    if settings.time_budget is not None:  # fit_budget estimates the whole list itself, at each duration it tries
        configurations = fit_budget(configurations, settings.time_budget, kind, rates)
    everything = len(configurations)
    configurations = configurations[k - 1::n]  # the same list on every shard, sliced by index: disjoint, complete
    if settings.resume:
        configurations = still_to_run(configurations, results_dir)
    estimate_each(configurations, kind, rates)  # what this shard runs, in its order: it builds what it shares
    total = sum(c.estimated_seconds for c in configurations)
    terminal.say(f"Plan: {plan.name}: {plan.reason}")
    shard = f"shard {k}/{n}: {len(configurations)} of {everything} configurations" if n > 1 else f"{len(configurations)} configurations"
    terminal.say(f"{shard} ({describe_axes(configurations) if configurations else 'none left'}) on {device}; "
                  f"estimated {terminal.clock(total)} ({rates.describe()})")
    if kind == "infer" and configurations:
        where = configurations[0].run.cache_path
        terminal.say(f"Exports, int8 calibrations and guard references are built once and shared through {where} "
                     + ("(--cache-path: kept)" if kept else "(removed when the sweep ends; --cache-path keeps them)"))
    if settings.dry_run:
        print_plan(configurations, results_dir)
        return 0
    with held(results_dir, may_rotate=not settings.resume and n == 1):
        scratch = scratch_folder(results_dir)
        os.environ[efficiency.SWEEP_PEAKS_VARIABLE] = str(scratch / "peaks.json")  # the children inherit it
        try:
            return run_sweep(kind, configurations, results_dir, total, settings.strict)
        finally:
            os.environ.pop(efficiency.SWEEP_PEAKS_VARIABLE, None)
            shutil.rmtree(scratch, ignore_errors=True)


def scratch_folder(results_dir: Path) -> Path:
    """What a sweep's configurations share and the sweep removes at its end (infer-all's builds unless
    --cache-path keeps them, peaks measured under load: core/efficiency.py), in its results folder: one per
    sweep process, since sweeps that share a results folder (shards, a second sweep adding to it) end at
    different times and each removes its own."""
    return results_dir / f".sweep-{os.getpid()}"


def build_folder(results_dir: Path) -> Path:
    return scratch_folder(results_dir) / "builds"


def with_cache(configurations: list[Configuration], folder: Path) -> list[Configuration]:
    """Every configuration with --cache-path `folder`: they share their builds and guard references
    (recipes/inference.py), each configuration still its own process."""
    out = []
    for c in configurations:
        run = dataclasses.replace(c.run, cache_path=str(folder))
        out.append(dataclasses.replace(c, run=run, base_record={**c.base_record, **config.flatten(run)}))
    return out


def estimate_each(configurations: list[Configuration], kind: str, rates) -> None:
    for c, seconds in zip(configurations, estimate.sweep_seconds([c.run for c in configurations], kind, rates)):
        c.estimated_seconds = seconds


def unique(items: list, what: str) -> list:
    """Each item once: a duplicate (--batch-sizes 2,2) would run a configuration twice, and the tables keep
    one of the two; merged with a warning line."""
    kept = list(dict.fromkeys(items))
    if len(kept) < len(items):
        twice = [str(i) for i in kept if items.count(i) > 1]
        terminal.warn(f"{what}: {', '.join(twice)} given more than once; running each once")
    return kept


def unique_models(models: list[str]) -> list[str]:
    """--models, each model once: two spellings of one model (tiny,tiny; ResNet50,resnet50) are one."""
    seen: dict[tuple[str, str], str] = {}
    twice = []
    for model in models:
        entry = resolve_entry(model)  # an unknown model fails here
        key = (entry.name.lower(), entry.source)
        if key in seen:
            twice.append(model)
        else:
            seen[key] = model
    if twice:
        terminal.warn(f"--models: {', '.join(dict.fromkeys(twice))} given more than once; running each once")
    return list(seen.values())


def repeated(configurations: list[Configuration], count: int) -> list[Configuration]:
    """--repeat N: each configuration N times in a row, each its own process, record (`repeat`: 1..N) and log."""
    if count == 1:
        return configurations
    out = []
    for c in configurations:
        for index in range(1, count + 1):
            run = dataclasses.replace(c.run, repeat=index)
            out.append(Configuration(run, c.log_name.removesuffix(".txt") + f"_r{index}.txt",
                                     {**c.base_record, **config.flatten(run), "repeat": index}))
    return out


# What makes two records the same configuration for --resume: what was run (model and its source,
# framework, batch, image size, engine, precision, scenario, accelerators, input, memory format, compiler),
# on which device type, which repeat; not how long it was measured, nor where its files went.
IDENTITY = ("config.model", "config.framework", "config.measure.batch_size", "config.image_size", "config.engine",
            "config.placement.precision", "config.placement.memory_format", "config.scenario", "config.num_accelerators",
            "config.data.data_dir", "config.compile", "config.compile_mode", "config.loadgen.enabled", "repeat")


def identity(record: dict) -> str:
    device = str(record.get("device") or "").split(":")[0]
    return json.dumps([tables.model_source(record), device, *[record.get(k) for k in IDENTITY]], default=str)


def still_to_run(configurations: list[Configuration], results_dir: Path) -> list[Configuration]:
    """--resume: the configurations without a record that ended ok in the results folder."""
    done = {identity(r) for r in store.read_records(results_dir) if r.get("status") == "ok"}
    left = [c for c in configurations if identity(c.base_record) not in done]
    terminal.say(f"--resume: {len(configurations) - len(left)} of {len(configurations)} configurations already ended ok "
                  f"in {results_dir}; running the other {len(left)}")
    return left


def print_plan(configurations: list[Configuration], results_dir: Path) -> None:
    """--dry-run: each configuration, its estimate and the exact command its process would run."""
    for k, c in enumerate(configurations, 1):
        r = c.base_record
        variant = f" {r['engine']}/{r['precision']}" if r["kind"] == "infer" else f" x{r['num_accelerators']}"
        again = f" repeat {r['repeat']}" if r.get("repeat") else ""
        terminal.say(f"{k:>3}. {r['model']} batch {r['batch_size']}{variant}{again}  ~{terminal.clock(c.estimated_seconds)}  "
                      f"-> {results_dir / c.log_name}")
        terminal.say("     $ " + shlex.join(child_command(c)))
    terminal.say(f"--dry-run: nothing was run or written ({results_dir} left as it is)")


# A sweep holds its results folder for its whole life with a shared lock on a file beside it (not in it,
# so the lock does not move with the folder): the folder is moved aside only by a sweep that can take the
# lock exclusively, i.e. when no other sweep is writing into it (issue 23 #6). The guard byte serialises
# the decide-and-move step; POSIX record locks are released by the kernel if the process dies.
GUARD, LIFE = 0, 1


@contextlib.contextmanager
def held(results_dir: Path, may_rotate: bool):
    """Hold `results_dir` for a sweep's life; move an earlier folder aside first when `may_rotate` and no
    other sweep holds it."""
    results_dir = Path(results_dir)
    results_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = results_dir.parent / f".{results_dir.name}.sweep.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # POSIX record locks need a writable descriptor
    except OSError as exc:
        raise errors.UsageError(f"--results-dir {results_dir}: cannot open the sweep lock {lock} ({exc.strerror}); "
                                "give --results-dir a folder whose parent you can write to") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, GUARD)
        try:
            alone = _try_lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if may_rotate and alone:
                moved = store.rotate(results_dir)
                if moved:
                    terminal.say(f"Previous results moved to {moved}")
            elif may_rotate and results_dir.exists():
                terminal.say(f"Another sweep is writing into {results_dir}: adding to it rather than moving it aside")
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, LIFE)  # from exclusive (alone) or from nothing: shared for life
            results_dir.mkdir(parents=True, exist_ok=True)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, GUARD)
        yield
    finally:
        os.close(fd)  # closing drops the locks


def _try_lock(fd: int, how: int) -> bool:
    try:
        fcntl.lockf(fd, how, 1, LIFE)
        return True
    except OSError:  # EAGAIN / EACCES: another sweep holds the folder
        return False


def plan_configurations(kind: str, settings: SweepConfig, base: RunConfig, explicit: set[str], plan: Plan,
                        models: list[str], batches: list[int], device: torch.device) -> list[Configuration]:
    """Every configuration as a validated child config; any mistake fails here, before anything runs."""
    measure = {k: getattr(plan, k) for k in ("warmup", "num_batches", "duration", "min_steady_steps", "stop_at_stderr",
                                             "min_steady_seconds") if f"measure.{k}" not in explicit}
    if {"measure.duration", "measure.num_batches"} & explicit:  # the user's own window: no early stop they did not ask for
        measure.pop("stop_at_stderr", None)
    out = []
    for framework in frameworks(settings, base):
        framework_base = dataclasses.replace(base, framework=framework)
        out += configurations_of(kind, settings, framework_base, explicit, plan, measure, models, batches, device)
    return out


def frameworks(settings: SweepConfig, base: RunConfig) -> list[str]:
    """--frameworks, each once, else --framework's one."""
    if settings.frameworks is None:
        return [base.framework]
    chosen = list(dict.fromkeys(parse_list(settings.frameworks, "--frameworks")))
    for name in chosen:
        if name not in config.FRAMEWORKS:
            raise errors.UsageError(f"--frameworks: unknown framework {name!r}; use some of: {', '.join(config.FRAMEWORKS)}")
    return chosen


def configurations_of(kind: str, settings: SweepConfig, base: RunConfig, explicit: set[str], plan: Plan, measure: dict,
                      models: list[str], batches: list[int], device: torch.device) -> list[Configuration]:
    """One framework's configurations: models x batch sizes x (engine pairs | accelerator counts)."""
    from cnnbench.recipes import inference, training

    variants = engine_pairs(settings, device, base.framework) if kind == "infer" else accelerator_counts(settings, device)
    tag = "" if base.framework == "pytorch" else f"_{base.framework}"
    out = []
    for model in models:
        entry = resolve_entry(model)  # an unknown model fails here
        name = entry.name
        for batch in batches:
            for variant in variants:
                log_dir = checkpoint_dir(kind, settings, base, entry, batch, batches)
                run = dataclasses.replace(base, model=model, log_dir=log_dir,
                                          measure=dataclasses.replace(base.measure, batch_size=batch, **measure),
                                          **{k: v for k, v in plan.run_overrides if k not in explicit})
                if kind == "infer":
                    engine, precision = variant
                    run = dataclasses.replace(run, engine=engine, placement=dataclasses.replace(run.placement, precision=precision))
                    run = guard_as_warmup(run, plan, explicit)
                    inference.preflight(run)
                    suffix = "" if variant == ("eager", "fp32") else f"_{engine}_{precision}"
                else:
                    run = dataclasses.replace(run, num_accelerators=variant)
                    training.preflight(run)  # the job of --num-accelerators `variant`, as it would be launched
                    suffix = f"_x{variant}" if variant > 1 else ""
                base_record = {"kind": kind, "model": name, "model_source": entry.source, "framework": run.framework, "batch_size": batch, "device": str(device),
                               "engine": getattr(run, "engine", None), "precision": run.placement.precision,
                               "num_accelerators": getattr(run, "num_accelerators", 1), **config.flatten(run)}
                out.append(Configuration(run, f"result_{name}_{batch}{tag}{suffix}.txt", base_record))
    return out


def checkpoint_dir(kind: str, settings: SweepConfig, base: RunConfig, entry, batch: int, batches: list[int]) -> str:
    """The configuration's checkpoint folder: --log-dir, else the original's log_<model>_<batch> (soak:
    log_pressure_...), except that inference reads one checkpoint per model for every batch size unless
    --weights-batch each (InferSweepConfig.weights_batch)."""
    if base.log_dir:
        return base.log_dir
    if kind == "soak":
        return f"log_pressure_{entry.name}_{batch}"
    choice = getattr(settings, "weights_batch", "each")
    if kind != "infer" or choice == "each":
        return f"log_{entry.name}_{batch}"
    if choice != "auto":
        return f"log_{entry.name}_{int(choice)}"
    backend = backends.get(base.framework)
    for candidate in (f"log_{entry.name}_{b}" for b in batches):
        try:
            backend.check_weights(base, entry, Path(candidate))
            return candidate
        except errors.UsageError:
            continue
    return f"log_{entry.name}_{batch}"  # none has one: the run's own folder, which preflight names in its error


def guard_as_warmup(run: InferConfig, plan: Plan, explicit: set[str]) -> InferConfig:
    """A checked engine's guard runs it on whole batches of the run's shape before the window: where the plan says
    so, those calls are its first warm-up batches and the warm-up steps are the rest (issue 26: warm-up shared)."""
    if not plan.guard_warms_up or "measure.warmup" in explicit or (run.engine, run.placement.precision) == ("eager", "fp32"):
        return run
    warmup = max(0, plan.warmup - run.guard_batches)
    return dataclasses.replace(run, measure=dataclasses.replace(run.measure, warmup=warmup))


def engine_pairs(settings, device: torch.device, framework: str = "pytorch") -> list[tuple[str, str]]:
    """--engines x --precisions, impossible pairs skipped with a line; by default the device's default pairs
    (default_pairs). Every engine fact is read from the engine table (engines/table.py)."""
    if settings.engines is None and settings.precisions is None:
        return default_pairs(device.type, framework)
    engines = parse_list("eager" if settings.engines is None else settings.engines, "--engines")
    precisions = parse_list("fp32" if settings.precisions is None else settings.precisions, "--precisions")
    if "optimized" in engines:  # the original's --use_trt: the device's optimized engine (table.optimized)
        chosen, why = engine_table.optimized(framework, device.type)
        terminal.say(f"--engines optimized: running engine {chosen} ({why})")
        engines = [chosen if e == "optimized" else e for e in engines]
    specs = [_sweep_engine(framework, name) for name in dict.fromkeys(engines)]
    pairs = [(spec.name, p) for spec in specs for p in precisions if spec.runs(p, device.type)]
    skipped = [f"{spec.name}/{p}" + (f" ({spec.refused[p, device.type]})" if (p, device.type) in spec.refused else "")
               for spec in specs for p in precisions if (spec.name, p) not in pairs]
    if not pairs:
        raise errors.UsageError(f"no engine/precision pair of --engines and --precisions works on {device.type}; "
                                f"pairs that do: {engine_table.supported_pairs(framework, device.type)}")
    if skipped:
        terminal.say(f"Skipping pairs that cannot run on {device.type}: {', '.join(skipped)}")
    return pairs


def _sweep_engine(framework: str, name: str) -> engine_table.EngineSpec:
    try:
        return engine_table.find(framework, name)
    except errors.UsageError:
        raise errors.UsageError(f"--engines: {name!r} is not a {engine_table.FRAMEWORK_TITLES[framework]} engine; use "
                                f"some of: {', '.join(engine_table.names(framework))}") from None


def default_pairs(device_type: str, framework: str = "pytorch") -> list[tuple[str, str]]:
    """The table's default pairs of the device (each record's `sweep`), those that cannot run here left out
    with a line saying why; if none can, the first reason is the error."""
    pairs, reasons = [], []
    for engine, precision in engine_table.default_pairs(framework, device_type, environment.cpu_flags(), terminal.say):
        try:
            engine_table.check(framework, engine, precision, device_type)
            pairs.append((engine, precision))
        except errors.UsageError as exc:
            terminal.say(f"Default {engine}/{precision} left out: {exc}")
            reasons.append(exc)
    if not pairs and reasons:
        raise reasons[0]
    return pairs


def accelerator_counts(settings, device: torch.device) -> list[int]:
    """Each training configuration also runs at every accelerator count (data-parallel processes, batch
    size per process); they share the configuration's log dir, so the inference sweep finds its checkpoint."""
    from cnnbench.backends.pytorch import distributed

    counts = parse_counts(settings.num_accelerators, "--num-accelerators", "1,2,4")
    for count in counts:
        distributed.check_world(count, distributed.planned(count), device)
        note = distributed.cpu_note(distributed.planned(count), device)
        if note:
            terminal.say(f"x{count}: {note}")
    return counts


def fit_budget(configurations: list[Configuration], budget: float, kind: str, rates) -> list[Configuration]:
    """Spread `budget` seconds over the configurations: each keeps 1 warm-up and 2 steady steps, and
    every configuration gets the same steady duration, the largest whose estimated total fits the budget."""
    def fitted(duration: float) -> list[Configuration]:
        out = []
        for c in configurations:
            measure = dataclasses.replace(c.run.measure, warmup=1, min_steady_steps=2, duration=duration,
                                          stop_at_stderr=None)  # the budget's window, whole
            run = dataclasses.replace(c.run, measure=measure)
            out.append(Configuration(run, c.log_name, {**c.base_record, **config.flatten(run)}))
        estimate_each(out, kind, rates)
        return out

    def total(runs: list[Configuration]) -> float:
        return sum(c.estimated_seconds for c in runs)

    low, high = 1e-3, budget  # the estimate grows with the duration: bisect for the largest that fits
    if total(fitted(low)) > budget:
        terminal.warn(f"--time-budget {budget:g} s cannot be kept: 1 warm-up and 2 steady steps of every configuration "
                       f"take about {terminal.clock(total(fitted(low)))}; running that minimum")
        return fitted(low)
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if total(fitted(middle)) <= budget else (low, middle)
    return fitted(low)


def describe_axes(configurations: list[Configuration]) -> str:
    def distinct(key: str) -> list[str]:
        return list(dict.fromkeys(str(c.base_record[key]) for c in configurations))

    text = f"{', '.join(distinct('model'))} x batch {', '.join(distinct('batch_size'))}"
    if distinct("framework") != ["pytorch"]:
        text = f"{', '.join(distinct('framework'))}: " + text
    if configurations and configurations[0].base_record["kind"] == "infer":
        text += " x " + ", ".join(dict.fromkeys(f"{c.base_record['engine']}/{c.base_record['precision']}" for c in configurations))
    counts = distinct("num_accelerators")
    return text + (f" x {', '.join(counts)} accelerators" if counts != ["1"] else "")


def run_sweep(kind: str, configurations: list[Configuration], results_dir: Path, estimated: float,
              strict: bool = False) -> int:
    """Run each configuration in a child process, tee its output to its log, record failures, summarise.
    With `strict`, a failed configuration makes the exit code EXIT_RUN_FAILED."""
    start = time.time()
    with terminal.progress(len(configurations), f"{kind}-all", unit="configurations") as bar:
        code, failed = run_each(kind, configurations, results_dir, start, bar)
    if code not in (errors.EXIT_INTERRUPTED, errors.EXIT_TERMINATED):
        code = errors.EXIT_RUN_FAILED if strict and failed else 0
        terminal.say(f"Sweep finished in {terminal.clock(time.time() - start)} (estimated {terminal.clock(estimated)}); "
                      f"tables in {results_dir / store.TABLES_CSV}")
        if failed:
            terminal.say(f"{len(failed)} of {len(configurations)} configurations failed: {', '.join(failed)}"
                          + (f"; exit {code} (--strict)" if strict else ""))
    summary(kind, results_dir)
    return code


def run_each(kind: str, configurations: list[Configuration], results_dir: Path, start: float, bar) -> tuple[int, list[str]]:
    """The configurations one by one, until the last or until one is interrupted; returns the last exit code
    and the names of the configurations that failed."""
    code, failed = 0, []
    for k, cfg in enumerate(configurations, 1):
        left = sum(c.estimated_seconds for c in configurations[k - 1:])
        terminal.console.rule(f"{kind} {k}/{len(configurations)}: {cfg.base_record['model']} batch "
                               f"{cfg.base_record['batch_size']}  elapsed {terminal.clock(time.time() - start)}  left ~{terminal.clock(left)}")
        before = len(store.read_records(results_dir))
        log_path = open_log(results_dir, cfg.log_name)
        code = run_child(cfg, log_path)
        bar.advance(time_left=sum(c.estimated_seconds for c in configurations[k:]))
        # Its own record: other shards append theirs to the same folder meanwhile, so count none but this one's.
        mine = [r for r in store.read_records(results_dir)[before:] if identity(r) == identity(cfg.base_record)]
        if not mine:  # the child died before it could write its record
            mine = [{**cfg.base_record, "status": "failed", "reason": failure_reason(code, log_path), **environment.collect()}]
            try:
                store.save_record(results_dir, mine[0])
            except errors.RecordNotSaved as lost:  # the sweep goes on; the record is in the fallback file
                terminal.warn(str(lost))
        if code in (errors.EXIT_INTERRUPTED, errors.EXIT_TERMINATED):
            terminal.say(f"Sweep {'interrupted' if code == errors.EXIT_INTERRUPTED else 'terminated'} during configuration "
                          f"{k} of {len(configurations)}; results so far are in {results_dir}")
            break
        if mine[-1].get("status") != "ok":
            failed.append(log_path.stem.removeprefix("result_"))
    return code, failed


def open_log(results_dir: Path, name: str) -> Path:
    """A new console log with one writer: created exclusively, with .2, .3, ... added where the name is taken
    (a resumed configuration's earlier log, a concurrent sweep's), so no two processes write one file."""
    path, n = results_dir / name, 1
    while True:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            n += 1
            path = results_dir / f"{Path(name).stem}.{n}.txt"


def child_command(cfg: Configuration) -> list[str]:
    """The exact command a configuration's process runs (and --dry-run prints)."""
    return [sys.executable, "-m", "cnnbench", *cfg.argv]


def run_child(cfg: Configuration, log_path: Path) -> int:
    """`python -m cnnbench ...` with its output on the console and in its log (headed by the full
    configuration). Ctrl-C reaches the child too (same process group); a SIGTERM to the sweep is
    passed on. Either way the child records its completed steps, and the sweep stops after it."""
    command = child_command(cfg)
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(command) + "\n" + "".join(f"# {line}\n" for line in config.describe(cfg.run)))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        stopped = None
        while True:
            try:
                for line in process.stdout:
                    terminal.passthrough(line)
                    log.write(line)
                    log.flush()
                break
            except KeyboardInterrupt as exc:
                stopped = errors.EXIT_TERMINATED if isinstance(exc, Terminated) else errors.EXIT_INTERRUPTED
                if isinstance(exc, Terminated):
                    process.send_signal(signal.SIGTERM)
        code = process.wait()
    return stopped if stopped is not None and code in (0, stopped) else code


def failure_reason(code: int, log_path: Path) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (likely the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    # The child's last line, or for a crash (exit 70) the exception's line above the "this is a bug" one.
    lines = [l for l in log_path.read_text().splitlines() if l.strip() and not l.startswith("# ")]
    if code == errors.EXIT_CRASH and len(lines) > 1:
        lines = lines[:-1]
    return f"exit code {code}: {lines[-1][:300] if lines else 'no output'}"


def summary(kind: str, results_dir: Path) -> None:
    records = tables.with_scaling_efficiency(store.read_records(results_dir))
    columns = [("model", "model"), ("batch", "batch_size")]
    if kind == "infer":
        columns += [("engine", "engine"), ("precision", "precision"), ("p90 ms", "latency_ms_p90"), ("guard rel. err", "guard_relative_error")]
    several = any((r.get("num_accelerators") or 1) > 1 for r in records)
    if several:
        columns += [("accelerators", "num_accelerators")]
    if any(r.get("repeat") for r in records):  # --repeat: one row per process
        columns += [("repeat", "repeat")]
    columns += [("status", "status"), ("img/s", "images_per_sec"), ("+/-", "images_per_sec_stderr"),
                ("jitter", "images_per_sec_jitter"), ("system img/s", "system_images_per_sec")]
    if several:
        columns += [("efficiency %", "scaling_efficiency")]
    if kind == "soak":
        columns += [("drift %", "soak_throughput_drift_pct"), ("p99 drift %", "soak_p99_drift_pct"),
                    ("flagged", "soak_flagged")]
    terminal.summary_table(f"cnnbench {kind}-all: {results_dir}", records, columns)
