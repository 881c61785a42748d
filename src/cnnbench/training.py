"""`cnnbench train`: the training benchmark, read top to bottom.

Resolve the configuration, build the model and optimizer, resume from a checkpoint if there is one,
run the measured loop, save the checkpoint, write the record. Under torchrun the same recipe runs in
every rank of a data-parallel job; what differs between ranks goes through distributed.py.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnbench import checkpoints, distributed, environment, reporting, results
from cnnbench.config import TrainConfig, flatten
from cnnbench.data.sources import open_source
from cnnbench.evaluation import evaluate
from cnnbench.errors import OutOfMemory, is_out_of_memory
from cnnbench.models.registry import check_image_size, resolve_entry
from cnnbench.placement import Placement, resolve_placement
from cnnbench.stats import throughput


def polynomial_decay(horizon: int, power: float):
    """lr(step) = lr0 * (1 - step / horizon) ** power, the original's decay (power 2), floored at 0."""
    return lambda step: max(0.0, 1.0 - step / horizon) ** power


# GradScaler skips the optimizer step of an fp16 step whose gradients overflowed; the schedule still
# advances once per training step by design, which PyTorch would otherwise warn about at every skip.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


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
        scheduler.step()
        return loss.detach()  # read on the host only at display steps

    return step


class StepDisplay:
    """Prints `step epoch img/s loss lr` every `every` steady steps; runs outside the timed region."""

    def __init__(self, every: int, batch_size: int, first_step: int, images_per_epoch: int, optimizer):
        self.every, self.batch_size, self.images_per_epoch, self.optimizer = every, batch_size, images_per_epoch, optimizer
        self.global_step = first_step
        self.window: list[float] = []
        self.first_loss: torch.Tensor | None = None
        self.last_loss: torch.Tensor | None = None

    def __call__(self, index: int, steady: bool, loss: torch.Tensor, seconds: float) -> None:
        self.global_step += 1
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        if not steady:
            return
        self.window.append(seconds)
        if len(self.window) < self.every:
            return
        reporting.say(
            reporting.step_line(
                self.global_step,
                self.global_step * self.batch_size / self.images_per_epoch,
                self.batch_size * len(self.window) / sum(self.window),
                loss.item(),  # host sync, after the step's clock has stopped
                self.optimizer.param_groups[0]["lr"],
            )
        )
        self.window = []


def resolve(cfg: TrainConfig, world: distributed.World):
    """Validate the configuration and resolve model, image size and placement for this rank.

    The launcher of a multi-process run calls it too, as rank 0 of the job to be, so that a mistake
    is one line from one process rather than one from every rank.
    """
    cfg.validate()
    entry = resolve_entry(cfg.model)
    image_size = cfg.image_size or entry.input_size
    check_image_size(entry, image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, cfg.placement.channels_last,
                                  local_rank=world.local_rank if world.distributed else None)
    distributed.check_world(cfg.num_accelerators, world, placement.device)
    return entry, image_size, placement


def run(cfg: TrainConfig, started_at: float | None = None) -> dict:
    """Run one training benchmark and append its record; returns the record.

    `started_at` is the wall-clock start of the whole command (for system performance). Under
    torchrun this process is one rank of a data-parallel job (see distributed.py): it trains on its
    own batch; rank 0 alone prints, saves the checkpoint and writes the record, which covers every rank.
    """
    started_at = started_at or distributed.started_at() or environment.process_start_time()
    world = distributed.current()
    entry, image_size, placement = resolve(cfg, world)
    placement.apply_global_settings()
    world = distributed.join(world, placement.device, cfg.dist_timeout)
    batch = cfg.measure.batch_size  # per process; the job's global batch is world.size x batch
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, batch)
    ckpt_path = checkpoints.checkpoint_path(log_dir)
    resume = distributed.from_main(world, lambda: checkpoints.load(ckpt_path) if ckpt_path.exists() else None)
    if resume is not None:
        checkpoints.check_model(resume, entry.name, ckpt_path)
    lr0 = cfg.learning_rate or entry.learning_rate(batch)

    env = environment.collect()
    reporting.header(f"train {entry.name}", cfg, env, extra=[
        f"resolved: {placement.describe()}, image {image_size}px, learning rate {lr0:g} "
        f"(SGD momentum {entry.momentum}, weight decay {entry.weight_decay}, polynomial decay power {entry.lr_decay_power})",
        f"log dir = {log_dir}",
        *([f"distributed: rank 0 of {world.size} processes ({world.local_size} on this node), backend {world.backend}, "
           f"batch {batch} per process (global batch {world.size * batch})"] if world.distributed else []),
        *filter(None, [distributed.cpu_note(world, placement.device)]),
    ])
    record = {
        "kind": "train", "model": entry.name, "batch_size": batch, "image_size": image_size,
        "device": str(placement.device), "precision": placement.precision,
        "channels_last": placement.channels_last, "compile": cfg.compile, "learning_rate": lr0,
        "num_accelerators": world.size, "status": "ok", "reason": None, **flatten(cfg), **env,
    }

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    try:
        model = entry.build(image_size).to(placement.device, memory_format=placement.memory_format)
        torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank))  # each rank its own random stream
        optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=entry.momentum, weight_decay=entry.weight_decay)
        start_step = int(resume["step"]) if resume else 0
        data, data_seed = _data_for(cfg, world)
        source = open_source(data, entry, batch, image_size, placement.device, placement.memory_format, data_seed,
                             train=True, rank=world.rank, world_size=world.size)
        planned = cfg.measure.warmup + cfg.measure.num_batches
        if cfg.data.num_epochs:  # whole passes over the training split (full batches only)
            planned = max(cfg.data.num_epochs * (source.images_per_epoch // batch), cfg.measure.warmup + 1)
            planned = min(distributed.gather(world, planned))  # shards can differ in size: every rank runs as many steps
        # The decay spans the whole training, the part already done before a resume included.
        decay = polynomial_decay(start_step + planned, entry.lr_decay_power)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
        scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.uses_grad_scaler)
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            scheduler.lr_lambdas[0] = decay  # a lambda is not part of the saved state
            scaler.load_state_dict(resume["scaler"])
            reporting.say(f"Resuming from checkpoint {ckpt_path} at step {start_step}")
        model.train()
        # Wrappers, from the inside out, always in this order: the placed module (the one whose state the
        # checkpoint keeps) -> torch.compile -> DistributedDataParallel (gradient averaging, in a
        # distributed run only). The model code knows nothing of either.
        trainable = torch.compile(model) if cfg.compile else model
        trainable = distributed.wrap(trainable, world, placement.device)
        step = make_train_step(trainable, optimizer, scheduler, scaler, placement, source.batches())
        # A step of the job processes world.size batches; a real-data epoch is every rank's shard.
        epoch_images = source.images_per_epoch * (world.size if cfg.data.data_dir else 1)
        display = StepDisplay(cfg.measure.display_every, world.size * batch, start_step, epoch_images, optimizer)
        reporting.say(f"data = {source.describe()}")
        reporting.say(reporting.STEP_COLUMNS)
        if hasattr(source, "reset_data_wait"):
            source.reset_data_wait()
        times = distributed.measure_together(
            world, step, placement.synchronize, warmup=cfg.measure.warmup, max_steps=planned - cfg.measure.warmup,
            duration=None if cfg.data.num_epochs else cfg.measure.duration, min_steps=cfg.measure.min_steady_steps,
            after_step=display,
        )
        # Every rank's step times, gathered after the timed loop. After Ctrl-C the ranks may stand at
        # different steps, so no collective is attempted: rank 0 reports its own times.
        own = distributed.rank_report(placement.device, times)
        per_rank = [own] if times.interrupted else distributed.gather(world, own)
        losses = [None if t is None else t.item() for t in (display.first_loss, display.last_loss)]
        evaluation = {}
        if cfg.eval_at_end and not times.interrupted and world.is_main:
            evaluation = _evaluate(cfg, entry, model, batch, image_size, placement)
        if not times.interrupted and world.is_main:
            checkpoints.save(log_dir, model_name=entry.name, step=display.global_step, model=model,
                             optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    except Exception as exc:
        if is_out_of_memory(exc):
            oom = OutOfMemory(batch)
            record.update(status="oom", reason=str(oom))
            if world.is_main:
                results.append_record(Path(cfg.results_dir), record)
            raise oom from None
        raise

    # The job's figures: world.size x batch images per step, each step as long as its slowest rank's.
    record.update(results.figures(world.size * batch, distributed.slowest_steps(per_rank), time.time() - started_at))
    record.update(distributed.record_fields(world, per_rank, batch))
    record.update(
        status="interrupted" if times.interrupted else "ok",
        reason="interrupted by the user (Ctrl-C)" if times.interrupted else None,
        initial_loss=losses[0], final_loss=losses[1], start_step=start_step, end_step=display.global_step,
        resumed=resume is not None, checkpoint=None if times.interrupted else str(ckpt_path),
        compile_seconds=times.warmup_seconds[0] if cfg.compile and times.warmup_seconds else None,
        peak_memory_mib=environment.peak_memory_mib(placement.device), **evaluation,
    )
    if cfg.data.data_dir:
        record.update(**results.data_wait(source.data_wait_seconds, times),
                      corrupt_images=source.corrupt_images, images_per_epoch=source.images_per_epoch)
        source.close()
    if world.is_main:
        results.append_record(Path(cfg.results_dir), record)
    reporting.final_lines(throughput(world.size * batch, record["steady_seconds"]), record["system_images_per_sec"])
    if world.size > 1:
        reporting.say("Per-rank images/sec: " + "  ".join(f"{r}: {v:.1f}" for r, v in enumerate(record["rank_images_per_sec"])))
    if cfg.data.data_dir:
        reporting.input_wait_line(record)
    if evaluation:
        reporting.say(f"Validation accuracy: top-1 {evaluation['top1']:.2f}%  top-5 {evaluation['top5']:.2f}%  over {evaluation['images_evaluated']} images")
    distributed.leave(world)
    return record


def _data_for(cfg: TrainConfig, world: distributed.World):
    """(data config, seed) for this rank's input.

    Synthetic: each rank its own random batch (rank seed). Real data: the same seed everywhere, since
    the ranks must agree on the shuffled order that they split between them; the loader workers of a
    node's processes share its cores.
    """
    if cfg.data.data_dir is None:
        return cfg.data, distributed.rank_seed(cfg.seed, world.rank)
    data = cfg.data
    if world.local_size > 1 and data.workers is None:
        data = dataclasses.replace(data, workers=distributed.share_of_cores(world))
    return data, cfg.seed


def _evaluate(cfg: TrainConfig, entry, model: nn.Module, batch: int, image_size: int, placement: Placement) -> dict:
    """Top-1/top-5 on the validation split (eval mode, the run's precision), after the timed steps."""
    val = dataclasses.replace(cfg.data, split="validation")
    source = open_source(val, entry, batch, image_size, placement.device, placement.memory_format, cfg.seed, train=False)
    model.eval()
    with torch.inference_mode(), placement.autocast():
        top1, top5, count = evaluate(model, source, batch, placement.memory_format)
    source.close()
    model.train()
    return {"top1": top1, "top5": top5, "images_evaluated": count}
