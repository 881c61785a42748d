"""One typed configuration tree per command, validated before any work starts.

Each error names the option to change. The resolved tree is printed in the run's header and saved,
flattened to dotted names, in every result record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cnnbench.errors import UsageError


@dataclass
class MeasureConfig:
    batch_size: int = 64
    num_batches: int = 500  # the original's default; with --duration it is the upper bound
    warmup: int = 20  # steps run before timing starts (cuDNN autotuning, allocator growth, compilation)
    display_every: int = 100
    duration: float | None = None  # seconds of steady-state time; the run stops when reached
    min_steady_steps: int = 3  # with --duration: never fewer steady steps than this

    def validate(self) -> None:
        _positive_int(self.batch_size, "--batch-size")
        _positive_int(self.num_batches, "--num-batches")
        _positive_int(self.display_every, "--display-every")
        _positive_int(self.min_steady_steps, "--min-steady-steps")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more steps, got {self.warmup}")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration}")


@dataclass
class PlacementConfig:
    device: str = "auto"  # auto = cuda if available, else cpu
    precision: str = "fp32"
    channels_last: bool = False


@dataclass
class DataConfig:
    data_dir: str | None = None  # None: synthetic input
    num_epochs: int | None = None  # with data_dir: run the split this many times (all images counted)
    data_format: str | None = None  # tfrecord | folder; None: detected from the directory
    split: str | None = None  # None: train for training, validation for inference
    label_offset: int = 1  # TFRecord ImageNet convention: label 0 is the background class
    workers: int | None = None  # None: the usable cores
    preprocess: str | None = None  # None: what the weights expect; "aimatrix": the original's table
    skip_corrupt: bool = False
    # Training augmentation: RandomResizedCrop's smallest area fraction and the flip probability
    # (torchvision's ImageNet recipe: 0.08 and 0.5). Tiny images such as the digits sample need gentler crops.
    min_crop_scale: float = 0.08
    flip: float = 0.5

    def validate(self) -> None:
        if not 0 < self.min_crop_scale <= 1:
            raise UsageError(f"--min-crop-scale must be in (0, 1], got {self.min_crop_scale}")
        if not 0 <= self.flip <= 1:
            raise UsageError(f"--flip must be a probability in [0, 1], got {self.flip}")
        if self.num_epochs is not None:
            _positive_int(self.num_epochs, "--num-epochs")
            if self.data_dir is None:
                raise UsageError("--num-epochs needs --data-dir (synthetic input has no epochs); use --num-batches")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")


@dataclass
class RunConfig:
    """What every benchmark run has: a model, an input, a device, a way to measure, a place for results."""

    model: str
    image_size: int | None = None  # None: the model's own input size
    seed: int = 0
    log_dir: str | None = None  # checkpoint directory; None: log_<model>_<batch>, as the original's scripts
    results_dir: str = "results"
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        self.measure.validate()
        self.data.validate()
        if self.image_size is not None:
            _positive_int(self.image_size, "--image-size")


@dataclass
class TrainConfig(RunConfig):
    results_dir: str = "results_train"
    learning_rate: float | None = None  # None: the registry's (or spec file's) per-model rule
    compile: bool = False
    eval_at_end: bool = False  # with data.data_dir: top-1/top-5 on the validation split after training
    # Data-parallel processes on this machine, one per accelerator (the original's NUM_ACCELERATORS);
    # the batch size is per process. Under torchrun, torchrun's --nproc-per-node decides instead.
    num_accelerators: int = 1
    # Seconds a collective waits for the other ranks before the job fails (a rank died or hangs).
    dist_timeout: float = 60.0

    def validate(self) -> None:
        super().validate()
        _positive_int(self.num_accelerators, "--num-accelerators")
        if not self.dist_timeout > 0:
            raise UsageError(f"--dist-timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.eval_at_end and self.data.data_dir is None:
            raise UsageError("--eval-at-end needs --data-dir (a validation split to evaluate on)")
        if self.compile and self.measure.warmup < 1:
            raise UsageError("--compile needs --warmup 1 or more, so that compilation stays out of the steady-state figures")


def _positive_int(value: object, option: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise UsageError(f"{option} must be an integer of at least 1, got {value}")


def flatten(config: object, prefix: str = "config") -> dict[str, object]:
    """Dataclass tree -> {"config.measure.batch_size": 64, ...}: flat, stable names for records and CSV."""
    flat: dict[str, object] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def describe(config: object) -> list[str]:
    """Lines `name = value` for the run header."""
    return [f"{k.removeprefix('config.')} = {v}" for k, v in flatten(config).items()]


SCENARIOS = ("offline", "single-stream")


@dataclass
class InferConfig(RunConfig):
    results_dir: str = "results_infer"
    engine: str = "eager"
    compile_mode: str | None = None  # None: max-autotune on CUDA, max-autotune-no-cudagraphs on CPU
    scenario: str = "offline"
    weights: str | None = None
    pretrained: bool = False
    random_weights: bool = False
    calib_batches: int = 10  # the original calibrated TensorRT int8 on 10 batches
    guard_batches: int = 4
    cache_path: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.scenario not in SCENARIOS:
            raise UsageError(f"unknown --scenario {self.scenario!r}; use one of: {', '.join(SCENARIOS)}")
        _positive_int(self.calib_batches, "--calib-batches")
        if not isinstance(self.guard_batches, int) or self.guard_batches < 0:
            raise UsageError(f"--guard-batches must be 0 or more, got {self.guard_batches}")
