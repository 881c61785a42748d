"""PyTorch, the default backend: the Backend seam (backends/base.py) on torch, torchrun's processes
(distributed.py), torch.save checkpoints (checkpoints.py), the weights an inference run loads
(weights.py) and the engines of cnnbench.engines (eager, torch.compile, ONNX Runtime, TensorRT)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable, Iterator

import torch

from cnnbench.backends.base import Backend, InferenceWeights, Trainer, World
from cnnbench.backends.pytorch import checkpoints, distributed, training
from cnnbench.backends.pytorch import weights as weights_module
from cnnbench.core import environment, terminal
from cnnbench.core.placement import PRECISIONS, Placement, resolve_placement
from cnnbench.engines import table
from cnnbench.core.timing import StepTimes
from cnnbench.data.sources import open_source
from cnnbench.data.synthetic import SyntheticSource
from cnnbench.models.registry import ModelEntry
from cnnbench.data.evaluation import Accuracy, evaluate, padded, real_batches

# Libraries whose versions change a built engine (the artefact cache's key).
ENGINE_LIBRARIES = ("torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt")


class PyTorchBackend(Backend):
    name = "pytorch"

    # ------------------------------------------------------------ resolving

    def resolve_placement(self, placement_cfg, *, engine: str | None = None, world: World | None = None) -> Placement:
        if engine is None:  # training
            local_rank = world.local_rank if world is not None and world.distributed else None
            return resolve_placement(placement_cfg.device, placement_cfg.precision, placement_cfg.memory_format,
                                     local_rank=local_rank)
        return resolve_placement(placement_cfg.device, placement_cfg.precision, placement_cfg.memory_format,
                                 PRECISIONS, layout=table.find(self.name, engine).layout)

    # ------------------------------------------------------------ the job: torchrun's processes

    def world(self, cfg) -> World:
        world = distributed.current()
        distributed.end_with_launcher(world)
        return world

    def planned_world(self, count: int) -> World:
        return distributed.planned(count)

    def launched_at(self) -> float | None:
        return distributed.started_at()

    def check_world(self, cfg, world: World, placement: Placement) -> None:
        distributed.check_world(cfg.num_accelerators, world, placement.device)

    def apply(self, placement: Placement, world: World = World(), training: bool = True) -> None:
        placement.apply_global_settings()

    def join(self, world: World, placement: Placement, timeout_seconds: float) -> World:
        return distributed.join(world, placement.device, timeout_seconds)

    def gather(self, world: World, value: object) -> list:
        return distributed.gather(world, value)

    def slowest_elapsed(self, world: World):
        return distributed.slowest_elapsed(world)

    def job_fields(self, world: World, placement: Placement, times: StepTimes, batch: int) -> tuple[StepTimes, dict]:
        """Every rank's step times, gathered after the timed loop. After Ctrl-C or SIGTERM the ranks may
        stand at different steps, so no collective is attempted: rank 0 reports its own times."""
        own = distributed.rank_report(placement.device, times)
        per_rank = [own] if times.interrupted else distributed.gather(world, own)
        return distributed.slowest_steps(per_rank), distributed.record_fields(world, per_rank, batch)

    def world_lines(self, world: World, placement: Placement, batch: int) -> list[str]:
        lines = []
        if world.distributed:
            lines.append(f"distributed: rank 0 of {world.size} processes ({world.local_size} on this node), backend "
                         f"{world.backend}, batch {batch} per process (global batch {world.size * batch})")
        return lines + list(filter(None, [distributed.cpu_note(world, placement.device)]))

    def leave(self, world: World) -> None:
        distributed.leave(world)

    def synchronize(self, placement: Placement) -> None:
        placement.synchronize()

    # ------------------------------------------------------------ training

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def training_data(self, cfg, entry: ModelEntry, world: World):
        return training.data_for(cfg, entry, world)

    def open_source(self, data, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int, *,
                    train: bool, world: World = World()):
        return open_source(data, entry, batch, image_size, placement.device, placement.memory_format, seed, train=train,
                           rank=world.rank, world_size=world.size)

    def checkpoint_location(self, log_dir: Path) -> Path:
        return checkpoints.checkpoint_path(log_dir)

    def load_checkpoint(self, log_dir: Path, entry: ModelEntry, world: World) -> dict | None:
        """The checkpoint in the log dir, read on rank 0 and handed to every rank."""
        path = checkpoints.checkpoint_path(log_dir)
        resume = distributed.from_main(world, lambda: checkpoints.load(path) if path.exists() else None)
        if resume is not None:
            checkpoints.check_model(resume, entry.name, path)
        return resume

    def checkpoint_step(self, resume: dict) -> int:
        return int(resume["step"])

    def build_training(self, cfg, entry, image_size, placement, world, source, learning_rate, start_step, planned_steps,
                       resume) -> Trainer:
        return training.build(cfg.seed, entry, image_size, placement, world, source, learning_rate, start_step,
                              planned_steps, resume)

    def make_train_step(self, trainer: Trainer, placement: Placement, world: World, compile: bool,
                        batches: Iterator) -> Callable[[], torch.Tensor]:
        trainable = training.wrap_for_training(trainer.model, compile, world, placement.device)
        s = trainer.state
        return training.make_train_step(trainable, s.optimizer, s.scheduler, s.scaler, placement, batches)

    def learning_rate(self, trainer: Trainer) -> float:
        return trainer.state.optimizer.param_groups[0]["lr"]

    def save_checkpoint(self, log_dir: Path, model_name: str, step: int, trainer: Trainer) -> Path:
        s = trainer.state
        return checkpoints.save(log_dir, model_name=model_name, step=step, model=trainer.model, optimizer=s.optimizer,
                                scheduler=s.scheduler, scaler=s.scaler)

    def evaluate(self, trainer: Trainer, source, placement: Placement, batch: int):
        model = trainer.model
        model.eval()
        with torch.inference_mode(), placement.autocast():
            counted = evaluate(model, source, batch, placement.memory_format)
        model.train()
        return counted

    # ------------------------------------------------------------ inference

    def check_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> None:
        if not (cfg.weights or cfg.pretrained or cfg.random_weights or checkpoints.checkpoint_path(log_dir).exists()):
            raise weights_module.missing(entry, log_dir)

    def inference_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> InferenceWeights:
        weights = weights_module.resolve(entry, weights_file=cfg.weights, pretrained=cfg.pretrained,
                                         random_weights=cfg.random_weights, log_dir=log_dir)
        if cfg.random_weights and weights.source != "random":
            terminal.warn(f"--random-weights: {weights.description} takes precedence (docs/engines.md: weights); it is what runs")
        return InferenceWeights(weights.source, weights.description, weights)

    def load_model(self, entry: ModelEntry, image_size: int, placement: Placement, weights: InferenceWeights):
        """The eval-mode model with its weights, placed; and the weights' digest (part of the cache key)."""
        model = entry.build(image_size)
        weights_module.load_into(model, entry, weights.payload)
        model.eval()
        digest = weights_module.digest(model)
        return model.to(placement.device, memory_format=placement.memory_format), digest

    def synthetic_batch(self, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int):
        return SyntheticSource(batch, image_size, entry.preprocessing, placement.device, placement.memory_format,
                               seed=seed).images

    def real_batches(self, source, batch: int, placement: Placement, epochs: int | None = 1) -> Iterator:
        return padded(real_batches(source, epochs), batch, placement.memory_format)

    def references(self, model, placement: Placement, inputs: list) -> list:
        """Eager fp32 outputs: true fp32, with TF32 off even in a tf32 run, whose global switch is already
        on (Placement.true_fp32)."""
        from cnnbench.engines import EagerEngine

        reference = EagerEngine(model, Placement(placement.device, "fp32", placement.channels_last))
        with Placement.true_fp32():
            return [reference(x) for x in inputs]

    def cache_identity(self, engine: str, placement: Placement, compile_mode: str | None) -> dict:
        return {"device": _device_name(placement.device), "channels_last": placement.channels_last,
                "compile_mode": compile_mode if engine == "compile" else None, "versions": _library_versions()}

    def build_engine(self, cfg, entry, image_size, placement, batch, model, example, cache, calibration,
                     compile_mode, *, shared=False, calibration_tag=""):
        from cnnbench.engines import build_engine

        return build_engine(cfg.engine, model, placement, example, cache, calibration, compile_mode,
                            int8_activations=cfg.int8_activations, model_name=entry.name, shared=shared,
                            calibration_tag=calibration_tag, any_batch=shared and cfg.serving, spinning=cfg.intra_op_spinning == "on",
                            threads=cfg.intra_op_threads)

    def to_host(self, logits) -> torch.Tensor:
        return logits.float().cpu()

    def accuracy(self) -> Accuracy:
        return Accuracy()

    def library_pixels(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        return images, labels

    def engine_input(self, images: torch.Tensor):
        return images

    def engine_output(self, logits) -> torch.Tensor:
        return logits


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{environment.collect()['env.cpu_model']}"


def _library_versions() -> dict:
    versions = {"torch": torch.__version__}
    for name in ENGINE_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
