"""The Backend seam: what the framework-neutral recipes (recipes/training.py, recipes/inference.py) and
the tools built on them (LoadGen, soak) ask of a framework. One base class here; one package per
framework implements it (backends/pytorch/, backends/tensorflow/), and `cnnbench.backends.get(name)`
returns the instance. The idea is optimum-benchmark's (optimum_benchmark/backends/base.py: one
`Backend` base class, a package per backend, the scenarios written once against it).

What a recipe does is the recipe's: preflight, the measured loop (core/timing), the fp32 guard, the step
display, the record and its fields. What a framework does is here, in four groups:

  resolving      check_installed, check_model, resolve_placement, engines, check_engine, ready, describe
  the job        world, planned_world, launched_at, check_world, apply, join, gather,
                 slowest_elapsed, job_fields, world_lines, leave, synchronize, reset (the processes or
                 replicas a run spans, and the runtime settings)
  training       seed, training_data, open_source, steps_per_epoch, epoch_images, load_checkpoint,
                 checkpoint_location, checkpoint_step, build_training, make_train_step, learning_rate,
                 save_checkpoint, evaluate
  inference      check_weights, inference_weights, load_model, synthetic_batch, real_batches, references,
                 cache_identity, build_engine, to_host, accuracy; for LoadGen library_pixels, engine_input,
                 engine_output

Models, engines and sources are the framework's own objects; a recipe only passes them back to the
backend, calls an engine on a batch, and reads logits and losses on the host through `to_host` /
`float()`. No backend imports another backend or a recipe (the recipes import the backends).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from cnnbench.engines import table

if TYPE_CHECKING:  # annotations only: the seam itself imports no framework
    from cnnbench.core.placement import Placement
    from cnnbench.core.timing import StepTimes
    from cnnbench.models.registry import ModelEntry


@dataclass(frozen=True)
class World:
    """The processes (PyTorch: torchrun's ranks) or replicas (TensorFlow: MirroredStrategy's) one run
    spans, seen from this process. A plain single-device run is rank 0 of 1, not distributed.
    `size` is the data-parallel width: the job's global batch is size x the per-replica batch."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes (or replicas) on this node
    distributed: bool = False  # PyTorch under torchrun: DDP and collectives, with one process too
    backend: str | None = None  # the collectives' library, set by join (gloo, nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Trainer:
    """What the neutral training recipe drives: `model` is the one whose state the checkpoint keeps
    (and the evaluation runs); `state` is whatever else the framework's checkpoint holds (optimizer,
    schedule, scaler), read only by the backend; `source` is the training input."""

    model: object
    state: object
    source: object
    start_step: int
    planned_steps: int


@dataclass(frozen=True)
class InferenceWeights:
    """Which weights an inference run uses: source (file | pretrained | checkpoint | random), the line
    that names them, and what the backend's load_model reads (a state_dict, a checkpoint prefix...)."""

    source: str
    description: str
    payload: object = None


class Backend:
    """A framework as the recipes see it. Subclasses implement every method; the defaults here are
    the single-process answers that hold for any framework."""

    name: str = ""  # the --framework value
    reference_name: str = "eager fp32"  # what the fp32 guard compares with, as its warning names it
    compile_name: str = "torch.compile"  # what --compile means, for the header
    compile_modes: bool = True  # whether --compile-mode applies (torch.compile's modes)
    tag: str = ""  # after the model's name in progress labels (" tensorflow"; "" for the default framework)

    # ------------------------------------------------------------ resolving, before any work

    def check_installed(self) -> None:
        """The install line (UsageError) when the framework is missing, without importing it."""

    def ready(self) -> None:
        """Import the framework, last in a preflight (its start-up lines come after any mistake's line)."""

    def describe(self) -> str:
        """The header's framework words ("" for the default framework)."""
        return ""

    def resolve_placement(self, placement_cfg, *, engine: str | None = None, world: World | None = None) -> Placement:
        """Device, precision and memory layout of a run (core/placement decides; the backend says which layouts it takes)."""
        raise NotImplementedError

    def check_model(self, entry: ModelEntry, image_size: int) -> None:
        """UsageError when the framework cannot build the model at this size."""

    def engines(self) -> tuple[str, ...]:
        """The --engine values this framework runs: the engine table's records of this framework, in its order."""
        return table.names(self.name)

    def check_engine(self, engine: str, precision: str, device_type: str) -> None:
        """UsageError, with what does work (or the install line), for an engine/precision/device this
        framework does not run: the engine table's check."""
        table.check(self.name, engine, precision, device_type)

    # ------------------------------------------------------------ the job: processes, replicas, runtime

    def world(self, cfg) -> World:
        """This process's place in the job, read once at the start of a run (PyTorch: torchrun's variables)."""
        return World()

    def planned_world(self, count: int) -> World:
        """The job --num-accelerators `count` will make, seen from its main process (preflights, sweeps)."""
        return World(size=count, local_size=count)

    def launched_at(self) -> float | None:
        """When the command that launched this process started, if another process launched it."""
        return None

    def check_world(self, cfg, world: World, placement: Placement) -> None:
        """--num-accelerators against the processes or devices there are."""

    def apply(self, placement: Placement, world: World = World(), training: bool = True) -> None:
        """The placement's process-wide settings (TF32, cuDNN autotuning, Keras policies, devices, the
        replicas of a training run); `training=False`: an inference run's (its weights are fp32)."""

    def join(self, world: World, placement: Placement, timeout_seconds: float) -> World:
        """Enter the job (a process group); returns the world as joined."""
        return world

    def gather(self, world: World, value: object) -> list:
        """`value` from every process, in rank order (never inside a timed step)."""
        return [value]

    def slowest_elapsed(self, world: World) -> Callable[[float], float] | None:
        """For timing.measure_together: every process's steady seconds so far, the largest (None: this one's)."""
        return None

    def job_fields(self, world: World, placement: Placement, times: StepTimes, batch: int) -> tuple[StepTimes, dict]:
        """The job's step times (each step as long as the slowest process's) and the record's per-process fields."""
        return times, {}

    def world_lines(self, world: World, placement: Placement, batch: int) -> list[str]:
        """Header lines that describe the job (processes, replicas)."""
        return []

    def leave(self, world: World) -> None:
        """Leave the job at the normal end of a run."""

    def synchronize(self, placement: Placement) -> None:
        """Wait until the device has finished its queued work: the measured loop reads no clock before it."""
        raise NotImplementedError

    def reset(self) -> None:
        """Undo process-wide settings a run made, so that the next run in this process starts clean."""

    # ------------------------------------------------------------ training

    def seed(self, seed: int) -> None:
        """Seed the framework's random streams (initial weights)."""
        raise NotImplementedError

    def training_data(self, cfg, entry: ModelEntry, world: World):
        """(data configuration, seed) of this process's training input."""
        raise NotImplementedError

    def open_source(self, data, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int, *,
                    train: bool, world: World = World()):
        """The input: `batches()` (endless (images, labels)), `epoch_batches()` (one pass, (images, labels, n),
        padded), `images_per_epoch`, `describe()`, `close()`, and with real data the waits and corrupt counts.
        `batch` is per replica; `steps_per_epoch` of the returned source is the epoch in steps of the job."""
        raise NotImplementedError

    def steps_per_epoch(self, source, batch: int, world: World) -> int:
        """Full steps in one pass of this process's input (a step feeds `batch` images to each replica)."""
        return source.images_per_epoch // batch

    def epoch_images(self, source, world: World, real: bool) -> int:
        """Images in one epoch of the whole job (for the display's epoch column)."""
        return source.images_per_epoch * (world.size if real else 1)

    def load_checkpoint(self, log_dir: Path, entry: ModelEntry, world: World) -> object | None:
        """The framework's training checkpoint in log_dir (checked to be this model's), None when there is none."""
        raise NotImplementedError

    def checkpoint_location(self, log_dir: Path) -> Path:
        """Where the training checkpoint lives in log_dir."""
        raise NotImplementedError

    def checkpoint_step(self, resume: object) -> int:
        """The step a checkpoint was saved at."""
        raise NotImplementedError

    def build_training(self, cfg, entry: ModelEntry, image_size: int, placement: Placement, world: World, source,
                       learning_rate: float, start_step: int, planned_steps: int, resume: object | None) -> Trainer:
        """Model, optimizer (SGD with the model's momentum and weight decay, polynomial decay over
        start_step + planned_steps), loss scaling for fp16; the resumed state loaded into them."""
        raise NotImplementedError

    def make_train_step(self, trainer: Trainer, placement: Placement, world: World, compile: bool,
                        batches: Iterator) -> Callable[[], object]:
        """One training step on the next batch -> the loss, left on the device (read only at display steps)."""
        raise NotImplementedError

    def learning_rate(self, trainer: Trainer) -> float:
        """The optimizer's current learning rate."""
        raise NotImplementedError

    def save_checkpoint(self, log_dir: Path, model_name: str, step: int, trainer: Trainer) -> Path:
        """Write the training checkpoint (atomically); CheckpointNotSaved when it cannot be written."""
        raise NotImplementedError

    def evaluate(self, trainer: Trainer, source, placement: Placement, batch: int) -> tuple[float | None, float | None, int]:
        """Top-1/top-5 and the image count of one pass over `source`, in eval mode at the run's precision."""
        raise NotImplementedError

    # ------------------------------------------------------------ inference

    def inference_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> InferenceWeights:
        """Which weights run (--weights, --pretrained, the training checkpoint, --random-weights)."""
        raise NotImplementedError

    def check_weights(self, cfg, entry: ModelEntry, log_dir: Path) -> None:
        """In preflight: UsageError when no weights can be found."""

    def load_model(self, entry: ModelEntry, image_size: int, placement: Placement,
                   weights: InferenceWeights) -> tuple[object, str]:
        """The eval-mode fp32 model with its weights, placed; and the weights' digest (part of the cache key).
        Random weights come from the streams `seed` seeded."""
        raise NotImplementedError

    def synthetic_batch(self, entry: ModelEntry, batch: int, image_size: int, placement: Placement, seed: int):
        """One seeded random batch of images in the engine's layout (guard, calibration, example inputs)."""
        raise NotImplementedError

    def real_batches(self, source, batch: int, placement: Placement, epochs: int | None = 1) -> Iterator:
        """`epochs` passes (None: endless) of (images, labels, n) over a real-data source, each batch padded to
        `batch` (evaluation.padded's convention: the padding is never counted)."""
        raise NotImplementedError

    def references(self, model, placement: Placement, inputs: list) -> list:
        """True-fp32 outputs of the model on `inputs`: the fp32 guard's reference."""
        raise NotImplementedError

    def build_engine(self, cfg, entry: ModelEntry, image_size: int, placement: Placement, batch: int, model, example,
                     cache, calibration: Callable[[], list], compile_mode: str | None, *, shared: bool = False,
                     calibration_tag: str = ""):
        """The engine named by cfg.engine, built by the class its engine-table record names: a callable
        (images -> logits) with an `info` dict of its build (engine_build_seconds, engine_load_seconds,
        cache_hit and the engine's own fields). `cache` is the run's ArtifactCache, `example` one input
        batch (None for eager), `calibration()` the int8 calibration batches. `shared`: the cache entry serves
        every batch size and precision (engines/table.shares_builds), `calibration_tag` names the calibration
        set in it (engines/base.BuildInputs)."""
        raise NotImplementedError

    def cache_identity(self, engine: str, placement: Placement, compile_mode: str | None) -> dict:
        """What the artefact cache's key adds for this framework (device, library versions, compile mode)."""
        return {}

    def to_host(self, logits):
        """Logits of any of this framework's engines as a float32 torch tensor on the host (guard, accuracy, LoadGen)."""
        raise NotImplementedError

    def accuracy(self):
        """An evaluation.Accuracy-like counter (add(logits, labels, n), result()) fed with this framework's batches."""
        raise NotImplementedError

    # LoadGen's sample library holds normalised torch batches in the placement's memory format.

    def library_pixels(self, images, labels):
        """A host batch of the source's `host_batches()` as uint8 NCHW torch images and int64 labels."""
        raise NotImplementedError

    def engine_input(self, images):
        """A normalised NCHW torch batch of the sample library in the form this framework's engines take."""
        raise NotImplementedError

    def engine_output(self, logits):
        """An engine's logits as a torch tensor LoadGen can rank (the device's for PyTorch, the host's otherwise);
        once returned, the device has finished the query."""
        return self.to_host(logits)
