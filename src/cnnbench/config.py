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
class TrainConfig:
    model: str
    image_size: int | None = None  # None: the model's own input size
    learning_rate: float | None = None  # None: the registry's (or spec file's) per-model rule
    compile: bool = False
    seed: int = 0
    log_dir: str | None = None  # None: log_<model>_<batch>, as the original's scripts
    results_dir: str = "results_train"
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def validate(self) -> None:
        self.measure.validate()
        if self.image_size is not None:
            _positive_int(self.image_size, "--image-size")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
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
