"""`cnnbench train`: the training benchmark, read top to bottom.

`run` is the recipe: preflight (validate and resolve), join the job, resume, build the model,
optimizer and input, measure, evaluate, save the checkpoint, record. Under torchrun the same recipe
runs in every rank of a data-parallel job; what differs between ranks goes through distributed.py.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnnbench.recipes import checkpoints, run_record

from cnnbench.backends.pytorch import distributed

from cnnbench.core import environment, errors, files, stats, telemetry, terminal
from cnnbench.core.config import TrainConfig
from cnnbench.data.sources import open_source
from cnnbench.recipes.evaluation import evaluate
from cnnbench.models.registry import ModelEntry, resolve_with_size
from cnnbench.core.placement import Placement, resolve_placement
from cnnbench.core.stats import throughput
from cnnbench.core.timing import StepTimes, measure_together


def polynomial_decay(horizon: int, power: float):
    """lr(step) = lr0 * (1 - step / horizon) ** power, the original's decay (power 2), floored at 0."""
    return lambda step: max(0.0, 1.0 - step / horizon) ** power


@dataclass(frozen=True)
class Resolved:
    entry: ModelEntry
    image_size: int
    placement: Placement
    log_dir: Path


def preflight(cfg: TrainConfig, world: distributed.World) -> Resolved:
    """Validate the configuration and resolve model, image size, placement and folders for this rank,
    before any work. The launcher of a multi-process run and a sweep call it too, so that a mistake is
    one line from one process rather than one from every rank or configuration."""
    cfg.validate()
    entry, image_size = resolve_with_size(cfg.model, cfg.image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, cfg.placement.memory_format,
                                  local_rank=world.local_rank if world.distributed else None)
    distributed.check_world(cfg.num_accelerators, world, placement.device)
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, cfg.measure.batch_size)
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    files.ensure_writable(log_dir, "--log-dir")
    return Resolved(entry, image_size, placement, log_dir)


@dataclass
class Trainer:
    """What the measured loop drives: the placed model (whose state the checkpoint keeps), the
    wrapped one that trains, the optimizer state, the input and the step count."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    source: object
    start_step: int
    planned_steps: int


def run(cfg: TrainConfig, started_at: float | None = None, annotate=None) -> dict:
    """Run one training benchmark and save its record; returns the record.

    `started_at` is the wall-clock start of the whole command (for system performance). Under
    torchrun this process is one rank of a data-parallel job: it trains on its own batch; rank 0
    alone prints, saves the checkpoint and writes the record, which covers every rank. `annotate(record)`,
    when given, returns more fields for the record once its figures are in (`cnnbench soak`'s verdict).
    """
    started_at = started_at or distributed.started_at() or environment.process_start_time()
    world = distributed.current()
    distributed.end_with_launcher(world)
    r = preflight(cfg, world)
    r.placement.apply_global_settings()
    world = distributed.join(world, r.placement.device, cfg.dist_timeout)
    resume = load_resume(world, r)
    batch = cfg.measure.batch_size  # per process; the job's global batch is world.size x batch
    lr0 = initial_learning_rate(cfg, r.entry, world.size)
    record = run_record.begin("train", cfg, r.entry, r.placement, batch, r.image_size, header_lines(cfg, r, world, lr0),
                             compile=cfg.compile, learning_rate=lr0, num_accelerators=world.size)
    with run_record.out_of_memory_recorded(record, cfg.results_dir, r.entry, r.placement, training=True, save=world.is_main):
        trainer = build(cfg, r, world, resume, lr0)
        times, display, sampler = train(cfg, trainer, r, world)
        per_rank = rank_reports(world, r.placement.device, times)
        ended, unsaved = finish(cfg, r, world, trainer, times, display)
        record.update(ended)
    record.update(stats.figures(world.size * batch, distributed.slowest_steps(per_rank), time.time() - started_at))
    record.update(distributed.record_fields(world, per_rank, batch))
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
    if unsaved is not None:  # the figures and the record are kept; the missing checkpoint still fails the run
        raise unsaved
    distributed.leave(world)
    return record


def initial_learning_rate(cfg: TrainConfig, entry: ModelEntry, world_size: int) -> float:
    """--learning-rate, else the model's rule applied to the job's global batch (world size x the
    per-process batch): DDP averages the gradients over every rank's batch, so N ranks of batch B take
    the step of one process of batch N*B and need its rate. The original does the same: nvcnn.py's
    ResNet rate is total_batch_size / 1024 with total_batch_size = batch_size * num_gpus."""
    return cfg.learning_rate or entry.learning_rate(world_size * cfg.measure.batch_size)


def load_resume(world: distributed.World, r: Resolved) -> dict | None:
    """The checkpoint in the log dir, read on rank 0 and handed to every rank; None when there is none."""
    path = checkpoints.checkpoint_path(r.log_dir)
    resume = distributed.from_main(world, lambda: checkpoints.load(path) if path.exists() else None)
    if resume is not None:
        checkpoints.check_model(resume, r.entry.name, path)
    return resume


def header_lines(cfg: TrainConfig, r: Resolved, world: distributed.World, lr0: float) -> list[str]:
    e, batch = r.entry, cfg.measure.batch_size
    lines = [f"resolved: {r.placement.describe()}, image {r.image_size}px, learning rate {lr0:g} (SGD momentum "
             f"{e.momentum}, weight decay {e.weight_decay}, polynomial decay power {e.lr_decay_power}), log dir {r.log_dir}"]
    if world.distributed:
        lines.append(f"distributed: rank 0 of {world.size} processes ({world.local_size} on this node), backend "
                     f"{world.backend}, batch {batch} per process (global batch {world.size * batch})")
    return lines + list(filter(None, [distributed.cpu_note(world, r.placement.device)]))


def build(cfg: TrainConfig, r: Resolved, world: distributed.World, resume: dict | None, lr0: float) -> Trainer:
    """Model, optimizer, schedule, scaler and input; the resumed state loaded into them."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = r.entry.build(r.image_size).to(r.placement.device, memory_format=r.placement.memory_format)
    torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank))  # each rank its own random stream
    optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=r.entry.momentum, weight_decay=r.entry.weight_decay)
    start_step = int(resume["step"]) if resume else 0
    data, data_seed = data_for(cfg, r.entry, world)
    source = open_source(data, r.entry, cfg.measure.batch_size, r.image_size, r.placement.device,
                         r.placement.memory_format, data_seed, train=True, rank=world.rank, world_size=world.size)
    planned = cfg.measure.warmup + cfg.measure.num_batches
    if cfg.data.num_epochs:  # whole passes over the training split (full batches only)
        planned = max(cfg.data.num_epochs * (source.images_per_epoch // cfg.measure.batch_size), cfg.measure.warmup + 1)
        planned = min(distributed.gather(world, planned))  # shards can differ in size: every rank runs as many steps
    # The decay spans the whole training, the part already done before a resume included.
    decay = polynomial_decay(start_step + planned, r.entry.lr_decay_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    scaler = torch.amp.GradScaler(r.placement.device.type, enabled=r.placement.uses_grad_scaler)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scheduler.lr_lambdas[0] = decay  # a lambda is not part of the saved state
        scaler.load_state_dict(resume["scaler"])
        terminal.say(f"Resuming from checkpoint {checkpoints.checkpoint_path(r.log_dir)} at step {start_step}")
    model.train()
    return Trainer(model, optimizer, scheduler, scaler, source, start_step, planned)


def data_for(cfg: TrainConfig, entry: ModelEntry, world: distributed.World):
    """(data config, seed) for this rank's input.

    Synthetic: each rank its own random batch (rank seed). Real data: the same seed everywhere, since
    the ranks must agree on the shuffled order that they split between them; the loader workers of a
    node's processes share its cores; the augmentation is the flags', else the model's, else ImageNet's.
    """
    if cfg.data.data_dir is None:
        return cfg.data, distributed.rank_seed(cfg.seed, world.rank)
    data = cfg.data.with_augmentation(entry.min_crop_scale, entry.flip)
    if world.local_size > 1 and data.workers is None:
        data = dataclasses.replace(data, workers=distributed.share_of_cores(world))
    return data, cfg.seed


def make_train_step(model: nn.Module, optimizer, scheduler, scaler, placement: Placement, batches):
    loss_fn = nn.CrossEntropyLoss()

    def step() -> torch.Tensor:
        images, labels = next(batches)
        with placement.autocast():
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scaler.is_enabled():
            with warnings.catch_warnings():
                # fp16: GradScaler skips the optimizer step of a step whose gradients overflowed, and the
                # schedule still advances once per training step by design, which PyTorch warns about.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()
        else:
            scheduler.step()
        return loss.detach()  # read on the host only at display steps

    return step


def wrap_for_training(model: nn.Module, compile: bool, world: distributed.World, device: torch.device) -> nn.Module:
    """The module the measured loop trains. Wrappers, from the inside out, always in this order (here
    only): the placed module (the one whose state the checkpoint keeps) -> DistributedDataParallel
    (gradient averaging, in a distributed run only) -> torch.compile (--compile). The model code knows
    nothing of either.

    DDP inside compile: compiling the DDP-wrapped module lets TorchDynamo's DDPOptimizer split the graph
    at DDP's bucket boundaries, so each bucket's all-reduce starts while the backward of the layers
    before it still runs, as in eager DDP (PyTorch docs, torch.compiler FAQ, "Do you support Distributed
    code?"). The other order, DDP around the compiled module, makes the backward one compiled graph whose
    gradients DDP's hooks see only once it has ended: the all-reduce then follows the backward instead of
    overlapping it. Issue 10; not measured on this project's machines (no GPU), see the README.
    """
    trainable = distributed.wrap(model, world, device)
    return torch.compile(trainable) if compile else trainable


def train(cfg: TrainConfig, t: Trainer, r: Resolved, world: distributed.World):
    """Wrap the model (wrap_for_training) and run the measured loop with the telemetry sampler beside it;
    returns the step times, the display (losses, step count) and the sampler."""
    trainable = wrap_for_training(t.model, cfg.compile, world, r.placement.device)
    step = make_train_step(trainable, t.optimizer, t.scheduler, t.scaler, r.placement, t.source.batches())
    # A step of the job processes world.size batches; a real-data epoch is every rank's shard.
    epoch_images = t.source.images_per_epoch * (world.size if cfg.data.data_dir else 1)
    display = StepDisplay(cfg.measure.display_every, world.size * cfg.measure.batch_size, t.start_step, epoch_images,
                          lambda: t.optimizer.param_groups[0]["lr"], terminal.Progress(t.planned_steps, f"train {r.entry.name}"))
    terminal.say(f"data = {t.source.describe()}")
    terminal.say(terminal.STEP_COLUMNS)
    if hasattr(t.source, "reset_data_wait"):
        t.source.reset_data_wait()
    sampler = telemetry.sampler_for(r.placement.device, not cfg.measure.no_telemetry)
    with display.progress, sampler:
        times = measure_together(
            step, r.placement.synchronize, warmup=cfg.measure.warmup, max_steps=t.planned_steps - cfg.measure.warmup,
            duration=None if cfg.data.num_epochs else cfg.measure.duration, min_steps=cfg.measure.min_steady_steps,
            after_step=telemetry.marking(display, sampler, cfg.measure.warmup),
            slowest_elapsed=distributed.slowest_elapsed(world))
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


def rank_reports(world: distributed.World, device: torch.device, times: StepTimes) -> list[dict]:
    """Every rank's step times, gathered after the timed loop. After Ctrl-C or SIGTERM the ranks may
    stand at different steps, so no collective is attempted: rank 0 reports its own times."""
    own = distributed.rank_report(device, times)
    return [own] if times.interrupted else distributed.gather(world, own)


def finish(cfg: TrainConfig, r: Resolved, world: distributed.World, t: Trainer, times: StepTimes, display: StepDisplay):
    """How the run ended, the evaluation, and the checkpoint (kept only for a run that completed and
    did not diverge: a NaN model would poison the inference benchmark that reads it). Returns the
    record's fields and the CheckpointNotSaved to raise once the figures are printed and recorded."""
    first_loss, final_loss = display.losses()
    ending = run_record.ending(times, final_loss)
    completed = ending["status"] == "ok"
    evaluation = evaluate_at_end(cfg, r, t.model) if cfg.eval_at_end and completed and world.is_main else {}
    saved = unsaved = None
    if completed and world.is_main:
        try:
            saved = checkpoints.save(r.log_dir, model_name=r.entry.name, step=display.global_step, model=t.model,
                                     optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler)
        except errors.CheckpointNotSaved as exc:  # a full disk at the end: the figures are still good
            unsaved, ending = exc, {**ending, "reason": str(exc)}
    return {**ending, "initial_loss": first_loss, "final_loss": final_loss, "start_step": t.start_step,
            "end_step": display.global_step, "resumed": t.start_step > 0, "checkpoint": None if saved is None else str(saved),
            "compile_seconds": times.warmup_seconds[0] if cfg.compile and times.warmup_seconds else None,
            **run_record.memory_fields(r.placement.device), **evaluation}, unsaved


def evaluate_at_end(cfg: TrainConfig, r: Resolved, model: nn.Module) -> dict:
    """Top-1/top-5 on the validation split (eval mode, the run's precision), after the timed steps."""
    val = dataclasses.replace(cfg.data, split="validation")
    source = open_source(val, r.entry, cfg.measure.batch_size, r.image_size, r.placement.device,
                         r.placement.memory_format, cfg.seed, train=False)
    model.eval()
    with torch.inference_mode(), r.placement.autocast():
        top1, top5, count = evaluate(model, source, cfg.measure.batch_size, r.placement.memory_format)
    source.close()
    model.train()
    return {"top1": top1, "top5": top5, "images_evaluated": count}


def report(cfg: TrainConfig, record: dict, world: distributed.World, batch: int) -> None:
    """The final lines: figures first, so that nothing measured is lost whatever happens to the record."""
    terminal.final_lines(throughput(world.size * batch, record["steady_seconds"]), record["system_images_per_sec"])
    run_record.hardware_lines(record)
    if record.get("soak_verdict"):
        terminal.say(f"Sustained performance: {record['soak_verdict']}")
    if world.size > 1:
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
