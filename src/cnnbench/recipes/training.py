"""`cnnbench train`: the training benchmark, read top to bottom, for every framework.

`run` is the recipe: preflight (validate and resolve), join the job, resume, build the model,
optimizer and input, measure, evaluate, save the checkpoint, record. What is a framework's (the model,
the step, the checkpoint's format, the processes or replicas of a data-parallel job) is asked of its
backend (cnnbench.backends.get(--framework), backends/base.py); the rest is written here once. Under
torchrun the same recipe runs in every rank of a PyTorch job; rank 0 alone prints, saves and records.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cnnbench import backends
from cnnbench.backends.base import Backend, Trainer, World
from cnnbench.core import environment, errors, files, stats, telemetry, terminal
from cnnbench.core.config import TrainConfig
from cnnbench.core.placement import Placement
from cnnbench.core.stats import throughput
from cnnbench.core.timing import StepTimes, measure_together
from cnnbench.models.registry import ModelEntry, resolve_with_size
from cnnbench.recipes import run_record


@dataclass(frozen=True)
class Resolved:
    entry: ModelEntry
    image_size: int
    placement: Placement
    log_dir: Path


def preflight(cfg: TrainConfig, world: World | None = None) -> Resolved:
    """Validate the configuration and resolve model, image size, placement and folders for this process,
    before any work. `world`: the job this process is part of (default: the one --num-accelerators plans).
    The launcher of a multi-process run and a sweep call it too, so that a mistake is one line from one
    process rather than one from every rank or configuration."""
    cfg.validate()
    backend = backends.get(cfg.framework)
    backend.check_installed()
    world = world or backend.planned_world(cfg.num_accelerators)
    entry, image_size = resolve_with_size(cfg.model, cfg.image_size, cfg.framework)
    backend.check_model(entry, image_size)
    placement = backend.resolve_placement(cfg.placement, world=world)
    backend.check_world(cfg, world, placement)
    log_dir = run_record.log_dir(cfg, entry)
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    if not cfg.no_checkpoint:  # --no-checkpoint: nothing is written there, so nothing need be writable
        files.ensure_writable(log_dir, "--log-dir")
    backend.ready()  # last: a mistake above is one line, before a framework's start-up lines
    return Resolved(entry, image_size, placement, log_dir)


def run(cfg: TrainConfig, started_at: float | None = None, annotate=None) -> dict:
    """Run one training benchmark and save its record; returns the record.

    `started_at` is the wall-clock start of the whole command (for system performance). In a data-parallel
    job each process (or replica) trains on its own batch; the main process alone prints, saves the
    checkpoint and writes the record, which covers the whole job. `annotate(record)`, when given,
    returns more fields for the record once its figures are in (`cnnbench soak`'s verdict).
    """
    backend = backends.get(cfg.framework)
    world = backend.world(cfg)
    started_at = started_at or backend.launched_at() or environment.process_start_time()
    r = preflight(cfg, world)
    backend.apply(r.placement, world)
    world = backend.join(world, r.placement, cfg.dist_timeout)
    resume = checkpoint_to_resume(cfg, r, world, backend)
    batch = cfg.measure.batch_size  # per process (replica); the job's global batch is world.size x batch
    lr0 = initial_learning_rate(cfg, r.entry, world.size)
    record = run_record.begin("train", cfg, r.entry, r.placement, batch, r.image_size,
                              header_lines(cfg, r, world, lr0, backend, resume),
                              compile=cfg.compile, learning_rate=lr0, num_accelerators=world.size)
    with run_record.out_of_memory_recorded(record, cfg.results_dir, r.entry, r.placement, training=True, save=world.is_main):
        trainer = build(cfg, r, world, resume, lr0, backend)
        times, display, sampler = train(cfg, trainer, r, world, backend)
        job_times, job_fields = backend.job_fields(world, r.placement, times, batch)
        ended, unsaved = finish(cfg, r, world, trainer, times, display, backend)
        record.update(ended)
    record.update(stats.figures(world.size * batch, job_times, time.time() - started_at))
    record.update(job_fields)
    record.update(sampler.fields(batch * len(times.steady_seconds)))  # this process's device and images
    record.update(run_record.efficiency_fields(record, r.entry, "train", r.placement.device, world.size))
    if annotate is not None:
        record.update(annotate(record))
    if cfg.data.data_dir:
        record.update(stats.real_data_fields(trainer.source, times))
        trainer.source.close()
    report(cfg, record, world, batch)
    if world.is_main:
        run_record.save(record, cfg.results_dir)
    backend.reset()
    if unsaved is not None:  # the figures and the record are kept; the missing checkpoint still fails the run
        raise unsaved
    backend.leave(world)
    return record


def checkpoint_to_resume(cfg: TrainConfig, r: Resolved, world: World, backend: Backend):
    """The checkpoint to continue from, with --resume only (issue 24: a second identical run resumed silently,
    its schedule already decayed to a learning rate of 0, and so measured another workload). Without
    --resume an existing checkpoint is left unread and, unless --no-checkpoint, overwritten at the end, as a
    rerun of a benchmark is expected to measure what the first run did; one line says so."""
    if cfg.resume:
        resume = backend.load_checkpoint(r.log_dir, r.entry, world)
        if resume is None:
            raise errors.UsageError(f"--resume: no checkpoint in {backend.checkpoint_location(r.log_dir)}; train without "
                                    "--resume first, or give --log-dir the folder that holds it")
        return resume
    location = backend.checkpoint_location(r.log_dir)
    if world.is_main and location.exists():
        fate = "left as it is (--no-checkpoint)" if cfg.no_checkpoint else "overwritten at the end"
        terminal.say(f"Not resuming: {location} exists and is {fate}; this run starts fresh (--resume continues from it)")
    return None


def initial_learning_rate(cfg: TrainConfig, entry: ModelEntry, world_size: int) -> float:
    """--learning-rate, else the model's rule applied to the job's global batch (world size x the
    per-process batch): DDP averages the gradients over every rank's batch, so N ranks of batch B take
    the step of one process of batch N*B and need its rate. The original does the same: nvcnn.py's
    ResNet rate is total_batch_size / 1024 with total_batch_size = batch_size * num_gpus."""
    return cfg.learning_rate or entry.learning_rate(world_size * cfg.measure.batch_size)


def header_lines(cfg: TrainConfig, r: Resolved, world: World, lr0: float, backend: Backend, resume=None) -> list[str]:
    e = r.entry
    start = (f"resumed from step {backend.checkpoint_step(resume)} of {backend.checkpoint_location(r.log_dir)}"
             if resume is not None else "fresh (no checkpoint read)")
    saved = "no checkpoint written (--no-checkpoint)" if cfg.no_checkpoint else f"checkpoint saved in {r.log_dir}"
    lines = [f"resolved: {backend.describe()}{r.placement.describe()}, image {r.image_size}px, learning rate {lr0:g} "
             f"(SGD momentum {e.momentum}, weight decay {e.weight_decay}, polynomial decay power {e.lr_decay_power} over "
             f"this run's steps){f', {backend.compile_name}' if cfg.compile else ''}, log dir {r.log_dir}",
             f"start: {start}; {saved}"]
    return lines + backend.world_lines(world, r.placement, cfg.measure.batch_size)


def build(cfg: TrainConfig, r: Resolved, world: World, resume, lr0: float, backend: Backend) -> Trainer:
    """This process's input, the planned steps, then the backend's model, optimizer and state (resumed)."""
    data, seed = backend.training_data(cfg, r.entry, world)
    source = backend.open_source(data, r.entry, cfg.measure.batch_size, r.image_size, r.placement, seed, train=True,
                                 world=world)
    planned = cfg.measure.warmup + cfg.measure.num_batches
    if cfg.data.num_epochs:  # whole passes over the training split (full batches only)
        per_epoch = backend.steps_per_epoch(source, cfg.measure.batch_size, world)
        planned = max(cfg.data.num_epochs * per_epoch, cfg.measure.warmup + 1)
        planned = min(backend.gather(world, planned))  # shards can differ in size: every rank runs as many steps
    start_step = backend.checkpoint_step(resume) if resume is not None else 0
    trainer = backend.build_training(cfg, r.entry, r.image_size, r.placement, world, source, lr0, start_step, planned,
                                     resume)
    if resume is not None:
        terminal.say(f"Resuming from checkpoint {backend.checkpoint_location(r.log_dir)} at step {start_step}")
    return trainer


def train(cfg: TrainConfig, t: Trainer, r: Resolved, world: World, backend: Backend):
    """The backend's step (wrapped for the job, compiled with --compile) in the measured loop, the telemetry
    sampler beside it; returns the step times, the display (losses, step count) and the sampler."""
    step = backend.make_train_step(t, r.placement, world, cfg.compile, t.source.batches())
    epoch_images = backend.epoch_images(t.source, world, cfg.data.data_dir is not None)
    display = StepDisplay(cfg.measure.display_every, world.size * cfg.measure.batch_size, t.start_step, epoch_images,
                          lambda: backend.learning_rate(t),
                          terminal.Progress(t.planned_steps, f"train {r.entry.name}{backend.tag}"))
    terminal.say(f"data = {t.source.describe()}")
    terminal.say(terminal.STEP_COLUMNS)
    if hasattr(t.source, "reset_data_wait"):
        t.source.reset_data_wait()
    sampler = telemetry.sampler_for(r.placement.device, not cfg.measure.no_telemetry)
    with display.progress, sampler:
        times = measure_together(
            step, lambda: backend.synchronize(r.placement), warmup=cfg.measure.warmup,
            max_steps=t.planned_steps - cfg.measure.warmup,
            **cfg.measure.window(None if cfg.data.num_epochs else cfg.measure.duration),
            after_step=telemetry.marking(display, sampler, cfg.measure.warmup),
            slowest_elapsed=backend.slowest_elapsed(world))
    return times, display, sampler


class StepDisplay:
    """Prints `step epoch img/s loss lr` every `every` steady steps and moves the progress bar; runs
    outside the timed region. Losses are 0-d tensors of either framework (float() reads both);
    `learning_rate()` is the optimizer's current rate."""

    def __init__(self, every: int, batch_size: int, first_step: int, images_per_epoch: int,
                 learning_rate: Callable[[], float], progress):
        self.every, self.batch_size, self.images_per_epoch = every, batch_size, images_per_epoch
        self.learning_rate = learning_rate
        self.progress = progress
        self.global_step = first_step
        self.window: list[float] = []
        self.first_loss = None
        self.last_loss = None

    def __call__(self, index: int, steady: bool, loss, seconds: float) -> None:
        self.global_step += 1
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        self.progress.advance()
        if not steady:
            return
        self.window.append(seconds)
        if len(self.window) < self.every:
            return
        terminal.say(terminal.step_line(
            self.global_step, self.global_step * self.batch_size / self.images_per_epoch,
            self.batch_size * len(self.window) / sum(self.window),
            float(loss),  # host sync, after the step's clock has stopped
            self.learning_rate()))
        self.window = []

    def losses(self) -> tuple[float | None, float | None]:
        return tuple(None if t is None else float(t) for t in (self.first_loss, self.last_loss))


def finish(cfg: TrainConfig, r: Resolved, world: World, t: Trainer, times: StepTimes, display: StepDisplay,
           backend: Backend):
    """How the run ended, the evaluation, and the checkpoint (kept only for a run that completed and
    did not diverge: a NaN model would poison the inference benchmark that reads it). Returns the
    record's fields and the CheckpointNotSaved to raise once the figures are printed and recorded."""
    first_loss, final_loss = display.losses()
    ending = run_record.ending(times, final_loss)
    completed = ending["status"] == "ok"
    evaluation = evaluate_at_end(cfg, r, t, backend) if cfg.eval_at_end and completed and world.is_main else {}
    saved = unsaved = None
    if completed and world.is_main and not cfg.no_checkpoint:
        try:
            saved = backend.save_checkpoint(r.log_dir, r.entry.name, display.global_step, t)
        except errors.CheckpointNotSaved as exc:  # a full disk at the end: the figures are still good
            unsaved, ending = exc, {**ending, "reason": str(exc)}
    return {**ending, "initial_loss": first_loss, "final_loss": final_loss, "start_step": t.start_step,
            "end_step": display.global_step, "resumed": t.start_step > 0, "checkpoint": None if saved is None else str(saved),
            "compile_seconds": times.warmup_seconds[0] if cfg.compile and times.warmup_seconds else None,
            **run_record.memory_fields(r.placement.device), **evaluation}, unsaved


def evaluate_at_end(cfg: TrainConfig, r: Resolved, t: Trainer, backend: Backend) -> dict:
    """Top-1/top-5 on the validation split (eval mode, the run's precision), after the timed steps,
    counted exactly (evaluation.Accuracy) whatever the framework."""
    val = dataclasses.replace(cfg.data, split="validation")
    source = backend.open_source(val, r.entry, cfg.measure.batch_size, r.image_size, r.placement, cfg.seed, train=False)
    top1, top5, count = backend.evaluate(t, source, r.placement, cfg.measure.batch_size)
    source.close()
    return {"top1": top1, "top5": top5, "images_evaluated": count}


def report(cfg: TrainConfig, record: dict, world: World, batch: int) -> None:
    """The final lines: figures first, so that nothing measured is lost whatever happens to the record."""
    terminal.final_lines(throughput(world.size * batch, record["steady_seconds"]), record["system_images_per_sec"])
    run_record.hardware_lines(record)
    if record.get("soak_verdict"):
        terminal.say(f"Sustained performance: {record['soak_verdict']}")
    if world.size > 1 and record.get("rank_images_per_sec"):  # processes' figures (TensorFlow's replicas have none)
        terminal.say("Per-rank images/sec: " + "  ".join(f"{r}: {v:.1f}" for r, v in enumerate(record["rank_images_per_sec"])))
    if cfg.data.data_dir:
        terminal.input_wait_line(record)
    if record.get("top1") is not None:
        terminal.say(f"Validation accuracy: top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%  "
                      f"over {record['images_evaluated']} images")
    if record["status"] == "diverged":
        terminal.warn(f"training diverged: {record['reason']}; the speed figures stand, no checkpoint was saved")
    elif record["status"] != "ok":
        terminal.say(f"Stopped: {record['reason']}; the figures cover the {record['steady_steps']} completed steady steps")
