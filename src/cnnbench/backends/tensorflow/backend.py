"""TensorFlow behind the Backend seam (backends/base.py): Keras models (models.py), tf.data (data.py),
the precision policy, devices and MirroredStrategy (runtime.py), the train step and TensorFlow's
checkpoint (training.py), the engines (engines.py). The recipes are recipes/training.py and
recipes/inference.py, the same as PyTorch's; nothing here imports a recipe or the PyTorch backend.

One process: --num-accelerators N makes N replicas of a MirroredStrategy inside it (the world's size is
the replica count, the global batch N x --batch-size), where PyTorch starts N processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cnnbench.backends import tensorflow
from cnnbench.backends.base import Backend, InferenceWeights, Trainer, World
from cnnbench.backends.tensorflow import data, engines, models, require, runtime, training
from cnnbench.core import terminal
from cnnbench.core.config import DataConfig
from cnnbench.core.errors import UsageError
from cnnbench.core.placement import PRECISIONS, TRAIN_PRECISIONS, Placement, resolve_placement
from cnnbench.data.evaluation import real_batches
from cnnbench.engines import table
from cnnbench.models.registry import ModelEntry

TENSORFLOW_LAYOUT = "nhwc"  # TensorFlow's native layout (and the only one its CPU convolutions take)


class TensorFlowBackend(Backend):
    name = "tensorflow"
    reference_name = "TensorFlow fp32"
    compile_name = "XLA"
    compile_modes = False
    tag = " tensorflow"

    def __init__(self):
        self.strategy = None  # made by `apply` for a training run

    # ------------------------------------------------------------ resolving

    def check_installed(self) -> None:
        tensorflow.check_installed()

    def ready(self) -> None:
        require()

    def describe(self) -> str:
        return f"TensorFlow {require().__version__}, "

    def resolve_placement(self, placement_cfg, *, engine: str | None = None, world: World | None = None) -> Placement:
        allowed = TRAIN_PRECISIONS if engine is None else PRECISIONS
        return resolve_placement(placement_cfg.device, placement_cfg.precision, TENSORFLOW_LAYOUT, allowed)

    def check_model(self, entry: ModelEntry, image_size: int) -> None:
        models.check_buildable(entry, image_size)

    def check_engine(self, engine: str, precision: str, device_type: str) -> None:
        """The table's check, after one that points TensorFlow's int8 to TensorFlow Lite."""
        runs = table.find(self.name, engine).precisions.get(device_type)
        if runs is not None and precision not in runs:
            hint = "; TensorFlow's int8 runs in --engine tflite" if precision == "int8" else ""
            raise UsageError(f"--engine {engine} with --framework tensorflow runs {', '.join(runs)} on {device_type}, "
                             f"not {precision}{hint}")
        table.check(self.name, engine, precision, device_type)

    # ------------------------------------------------------------ the job: one process, N replicas

    def world(self, cfg) -> World:
        return self.planned_world(cfg.num_accelerators)

    def apply(self, placement: Placement, world: World = World(), training: bool = True) -> None:
        if training:
            self.strategy = runtime.configure(placement, world.size)
        else:  # the reference and the weights are fp32; an engine's reduced precision is its own
            runtime.configure(Placement(placement.device, "fp32", True))

    def world_lines(self, world: World, placement: Placement, batch: int) -> list[str]:
        if world.size == 1:
            return []
        return [f"distributed: MirroredStrategy over {world.size} {placement.device.type} devices, batch {batch} per "
                f"replica (global batch {world.size * batch})"]

    def synchronize(self, placement: Placement) -> None:
        runtime.synchronize()

    def reset(self) -> None:
        runtime.reset()

    # ------------------------------------------------------------ training

    def seed(self, seed: int) -> None:
        import keras

        keras.utils.set_random_seed(seed)

    def training_data(self, cfg, entry: ModelEntry, world: World):
        if cfg.data.data_dir is None:
            return cfg.data, cfg.seed
        return cfg.data.with_augmentation(entry.min_crop_scale, entry.flip), cfg.seed

    def open_source(self, data_cfg, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int, *,
                    train: bool, world: World = World()):
        # One source feeds every replica: it makes the global batch, which each replica slices.
        return data.open_source(data_cfg, entry, batch * world.size, image_size, seed, train=train)

    def steps_per_epoch(self, source, batch: int, world: World) -> int:
        return source.images_per_epoch // (batch * world.size)

    def epoch_images(self, source, world: World, real: bool) -> int:
        return source.images_per_epoch

    def checkpoint_location(self, log_dir: Path) -> Path:
        return log_dir / training.CHECKPOINT_DIR

    def load_checkpoint(self, log_dir: Path, entry: ModelEntry, world: World) -> dict | None:
        return training.read_manifest(log_dir, entry.name)

    def checkpoint_step(self, resume: dict) -> int:
        return int(resume["step"])

    def build_training(self, cfg, entry, image_size, placement, world, source, learning_rate, start_step, planned_steps,
                       resume) -> Trainer:
        self.seed(cfg.seed)
        return training.build(entry, image_size, placement, self.strategy, source, cfg.measure.batch_size * world.size,
                              learning_rate, start_step, planned_steps, resume)

    def make_train_step(self, trainer: Trainer, placement: Placement, world: World, compile: bool,
                        batches: Iterator) -> Callable[[], object]:
        s = trainer.state
        step = training.make_train_step(require(), trainer.model, s.optimizer, s.strategy, s.weight_decay, s.global_batch,
                                        compile)
        return lambda: step(*next(batches))

    def learning_rate(self, trainer: Trainer) -> float:
        return float(trainer.state.optimizer.learning_rate)

    def save_checkpoint(self, log_dir: Path, model_name: str, step: int, trainer: Trainer) -> Path:
        return training.save_checkpoint(log_dir, trainer.state.checkpoint, model_name, step)

    def evaluate(self, trainer: Trainer, source, placement: Placement, batch: int):
        model = trainer.model
        return training.count_accuracy(lambda images: model(images, training=False), source)

    # ------------------------------------------------------------ inference

    def check_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> None:
        if not cfg.random_weights and training.read_manifest(log_dir, entry.name) is None:
            raise UsageError(f"no TensorFlow checkpoint in {log_dir / training.CHECKPOINT_DIR}: train first (cnnbench train "
                             f"{cfg.model} --framework tensorflow --log-dir {log_dir}) or give --random-weights")

    def inference_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> InferenceWeights:
        """TensorFlow's own training checkpoint, else random weights (--weights and --pretrained are PyTorch's)."""
        manifest = training.read_manifest(log_dir, entry.name)
        folder = log_dir / training.CHECKPOINT_DIR
        if manifest is None:
            return InferenceWeights("random", "random initialisation (--random-weights: speed only, accuracy is meaningless)")
        if cfg.random_weights:
            terminal.warn(f"--random-weights: the TensorFlow checkpoint in {folder} takes precedence; it is what runs")
        return InferenceWeights("checkpoint", f"TensorFlow checkpoint {folder} (step {manifest['step']})", manifest["path"])

    def load_model(self, entry: ModelEntry, image_size: int, placement: Placement, weights: InferenceWeights):
        """The fp32 Keras model with its weights (the checkpoint's, or seeded random ones) and their digest."""
        tf = require()
        model = models.build(entry, image_size)
        if weights.payload is not None:
            # The optimizer's saved state is left unread; every weight of the model must be found.
            training.read_checkpoint(tf.train.Checkpoint(model=model), weights.payload,
                                     "train again into another --log-dir, or give --random-weights", partial=True)
        digest = hashlib.sha256()
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        return model, digest.hexdigest()[:16]

    def synthetic_batch(self, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int):
        return next(data.open_source(DataConfig(), entry, batch, image_size, seed, train=False).batches())[0]

    def real_batches(self, source, batch: int, placement: Placement, epochs: int | None = 1) -> Iterator:
        return real_batches(source, epochs)  # TensorFlow's epoch_batches are padded already

    def references(self, model, placement: Placement, inputs: list) -> list:
        return [model(x, training=False) for x in inputs]  # the fp32 model under the float32 policy

    def cache_identity(self, engine: str, placement: Placement, compile_mode: str | None) -> dict:
        return {"framework": self.name, "versions": {"tensorflow": require().__version__}}

    def build_engine(self, cfg, entry, image_size, placement, batch, model, example, cache, calibration, compile_mode,
                     *, shared=False, calibration_tag=""):
        # No TensorFlow engine shares a build across configurations (table.shares_builds_on): `shared` is never set.
        inputs = engines.BuildInputs(cfg.engine, model, entry, image_size, batch, placement, cache, calibration)
        return table.engine_class(table.find(self.name, cfg.engine)).build(inputs)

    def to_host(self, logits):
        return training.host_logits(logits)

    def accuracy(self) -> training.HostAccuracy:
        return training.HostAccuracy()

    def library_pixels(self, images, labels):
        """uint8 NHWC host batches of tf.data as the NCHW torch tensors LoadGen's sample library holds."""
        import torch

        return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2), torch.from_numpy(np.array(labels)).long()

    def engine_input(self, images):
        # The library keeps channels-last tensors: the NHWC view is the same memory, no copy.
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def engine_output(self, logits):
        return training.host_logits(logits)  # on the host: the device has finished the query
