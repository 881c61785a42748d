"""`cnnbench train`: the training benchmark, read top to bottom.

Resolve the configuration, build the model and optimizer, resume from a checkpoint if there is one,
run the measured loop, save the checkpoint, write the record.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from cnnbench import checkpoints, environment, reporting, results
from cnnbench.config import TrainConfig, flatten
from cnnbench.data.sources import open_source
from cnnbench.evaluation import evaluate
from cnnbench.errors import OutOfMemory, is_out_of_memory
from cnnbench.models.registry import check_image_size, resolve_entry
from cnnbench.placement import Placement, resolve_placement
from cnnbench.stats import throughput
from cnnbench.timing import measure


def polynomial_decay(horizon: int, power: float):
    """lr(step) = lr0 * (1 - step / horizon) ** power, the original's decay (power 2), floored at 0."""
    return lambda step: max(0.0, 1.0 - step / horizon) ** power


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


def run(cfg: TrainConfig, started_at: float | None = None) -> dict:
    """Run one training benchmark and append its record; returns the record.

    `started_at` is the wall-clock start of the whole command (for system performance).
    """
    started_at = started_at or environment.process_start_time()
    cfg.validate()
    entry = resolve_entry(cfg.model)
    image_size = cfg.image_size or entry.input_size
    check_image_size(entry, image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, cfg.placement.channels_last)
    placement.apply_global_settings()
    batch = cfg.measure.batch_size
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, batch)
    ckpt_path = checkpoints.checkpoint_path(log_dir)
    resume = checkpoints.load(ckpt_path) if ckpt_path.exists() else None
    if resume is not None:
        checkpoints.check_model(resume, entry.name, ckpt_path)
    lr0 = cfg.learning_rate or entry.learning_rate(batch)

    env = environment.collect()
    reporting.header(f"train {entry.name}", cfg, env, extra=[
        f"resolved: {placement.describe()}, image {image_size}px, learning rate {lr0:g} "
        f"(SGD momentum {entry.momentum}, weight decay {entry.weight_decay}, polynomial decay power {entry.lr_decay_power})",
        f"log dir = {log_dir}",
    ])
    record = {
        "kind": "train", "model": entry.name, "batch_size": batch, "image_size": image_size,
        "device": str(placement.device), "precision": placement.precision,
        "channels_last": placement.channels_last, "compile": cfg.compile, "learning_rate": lr0,
        "status": "ok", "reason": None, **flatten(cfg), **env,
    }

    torch.manual_seed(cfg.seed)
    try:
        model = entry.build(image_size).to(placement.device, memory_format=placement.memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=entry.momentum, weight_decay=entry.weight_decay)
        start_step = int(resume["step"]) if resume else 0
        source = open_source(cfg.data, entry, batch, image_size, placement.device, placement.memory_format, cfg.seed, train=True)
        planned = cfg.measure.warmup + cfg.measure.num_batches
        if cfg.data.num_epochs:  # whole passes over the training split (full batches only)
            planned = max(cfg.data.num_epochs * (source.images_per_epoch // batch), cfg.measure.warmup + 1)
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
        # torch.compile wraps the placed model last; the checkpoint keeps the plain module's state.
        trainable = torch.compile(model) if cfg.compile else model
        step = make_train_step(trainable, optimizer, scheduler, scaler, placement, source.batches())
        display = StepDisplay(cfg.measure.display_every, batch, start_step, source.images_per_epoch, optimizer)
        reporting.say(f"data = {source.describe()}")
        reporting.say(reporting.STEP_COLUMNS)
        if hasattr(source, "reset_data_wait"):
            source.reset_data_wait()
        times = measure(
            step, placement.synchronize, warmup=cfg.measure.warmup, max_steps=planned - cfg.measure.warmup,
            duration=None if cfg.data.num_epochs else cfg.measure.duration, min_steps=cfg.measure.min_steady_steps,
            after_step=display,
        )
        losses = [None if t is None else t.item() for t in (display.first_loss, display.last_loss)]
        evaluation = {}
        if cfg.eval_at_end and not times.interrupted:
            evaluation = _evaluate(cfg, entry, model, batch, image_size, placement)
        if not times.interrupted:
            checkpoints.save(log_dir, model_name=entry.name, step=display.global_step, model=model,
                             optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    except Exception as exc:
        if is_out_of_memory(exc):
            oom = OutOfMemory(batch)
            record.update(status="oom", reason=str(oom))
            results.append_record(Path(cfg.results_dir), record)
            raise oom from None
        raise

    record.update(results.figures(batch, times, time.time() - started_at))
    record.update(
        status="interrupted" if times.interrupted else "ok",
        reason="interrupted by the user (Ctrl-C)" if times.interrupted else None,
        initial_loss=losses[0], final_loss=losses[1], start_step=start_step, end_step=display.global_step,
        resumed=resume is not None, checkpoint=None if times.interrupted else str(ckpt_path),
        compile_seconds=times.warmup_seconds[0] if cfg.compile and times.warmup_seconds else None,
        peak_memory_mib=environment.peak_memory_mib(placement.device), **evaluation,
    )
    if cfg.data.data_dir:
        busy = sum(times.warmup_seconds) + sum(times.steady_seconds)
        record.update(data_wait_seconds=source.data_wait_seconds, data_wait_share=source.data_wait_seconds / busy if busy else None,
                      corrupt_images=source.corrupt_images, images_per_epoch=source.images_per_epoch)
        source.close()
    results.append_record(Path(cfg.results_dir), record)
    reporting.final_lines(throughput(batch, times.steady_seconds), record["system_images_per_sec"])
    if cfg.data.data_dir:
        reporting.say(f"Input wait: {record['data_wait_share'] * 100:.1f}% of step time ({record['data_wait_seconds']:.2f} s)")
    if evaluation:
        reporting.say(f"Validation accuracy: top-1 {evaluation['top1']:.2f}%  top-5 {evaluation['top5']:.2f}%  over {evaluation['images_evaluated']} images")
    return record


def _evaluate(cfg: TrainConfig, entry, model: nn.Module, batch: int, image_size: int, placement: Placement) -> dict:
    """Top-1/top-5 on the validation split (eval mode, the run's precision), after the timed steps."""
    from cnnbench.config import DataConfig

    val = DataConfig(**{**vars(cfg.data), "split": "validation"})
    source = open_source(val, entry, batch, image_size, placement.device, placement.memory_format, cfg.seed, train=False)
    model.eval()
    with torch.inference_mode(), placement.autocast():
        top1, top5, count = evaluate(model, source, batch, placement.memory_format)
    source.close()
    model.train()
    return {"top1": top1, "top5": top5, "images_evaluated": count}
