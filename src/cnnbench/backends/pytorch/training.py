"""PyTorch's training pieces behind the Backend seam: the model, optimizer, schedule and scaler (resumed
from a checkpoint), the wrappers of the module that trains (DDP, torch.compile) and the step itself."""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from cnnbench.backends.base import Trainer, World
from cnnbench.backends.pytorch import distributed
from cnnbench.core.placement import Placement
from cnnbench.models.registry import ModelEntry


def polynomial_decay(horizon: int, power: float):
    """lr(step) = lr0 * (1 - step / horizon) ** power, the original's decay (power 2), floored at 0."""
    return lambda step: max(0.0, 1.0 - step / horizon) ** power


@dataclasses.dataclass
class State:
    """What the checkpoint keeps beside the model's weights."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def build(seed: int, entry: ModelEntry, image_size: int, placement: Placement, world: World, source, lr0: float,
          start_step: int, planned: int, resume: dict | None) -> Trainer:
    """Model, optimizer, schedule and scaler; the resumed state loaded into them."""
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = entry.build(image_size).to(placement.device, memory_format=placement.memory_format)
    torch.manual_seed(distributed.rank_seed(seed, world.rank))  # each rank its own random stream
    optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=entry.momentum, weight_decay=entry.weight_decay)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.uses_grad_scaler)
    if resume is not None:  # weights, momentum buffers and loss scale continue; the schedule starts again below
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        for group in optimizer.param_groups:
            group["lr"] = lr0  # the saved rate is the end of the last run's decay: 0 (issue 24)
            group.pop("initial_lr", None)
    # The decay spans this run's own steps, from lr0 (a resumed run too): continuing the first run's decay left
    # a resumed run at a learning rate of 0, which measures no training at all (issue 24).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, polynomial_decay(planned, entry.lr_decay_power))
    model.train()
    return Trainer(model, State(optimizer, scheduler, scaler), source, start_step, planned)


def data_for(cfg, entry: ModelEntry, world: World):
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


def wrap_for_training(model: nn.Module, compile: bool, world: World, device: torch.device) -> nn.Module:
    """The module the measured loop trains. Wrappers, from the inside out, always in this order (here
    only): the placed module (the one whose state the checkpoint keeps) -> DistributedDataParallel
    (gradient averaging, in a distributed run only) -> torch.compile (--compile). The model code knows
    nothing of either.

    DDP inside compile: compiling the DDP-wrapped module lets TorchDynamo's DDPOptimizer split the graph
    at DDP's bucket boundaries, so each bucket's all-reduce starts while the backward of the layers
    before it still runs, as in eager DDP (PyTorch docs, torch.compiler FAQ, "Do you support Distributed
    code?"). The other order, DDP around the compiled module, makes the backward one compiled graph whose
    gradients DDP's hooks see only once it has ended: the all-reduce then follows the backward instead of
    overlapping it. Issue 10; not measured on this project's machines (no GPU), see docs.
    """
    trainable = distributed.wrap(model, world, device)
    return torch.compile(trainable) if compile else trainable
