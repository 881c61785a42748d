"""What every engine is: built once (timed as build time, kept out of the steady-state figures), then called
on a batch of images on the device, returning logits on the device.

A class named by a record of the engine table (engines/table.py) builds its engine with `build(inputs)`
and may say why it cannot run on a machine with `unavailable(device_type, offered)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the table imports no engine module; these are the types of a build's inputs only
    import torch
    from torch import nn

    from cnnbench.core.placement import Placement
    from cnnbench.engines.artifacts import ArtifactCache


@dataclass(frozen=True)
class BuildInputs:
    """Everything an engine may be built from; each class takes what it needs.

    int8_activations: u8 | s8 for int8 (onnx_export.quantize_int8); None or "auto": the device's default."""

    model: "nn.Module"
    placement: "Placement"
    example: "torch.Tensor"
    cache: "ArtifactCache"
    calibration: Callable[[], list]
    compile_mode: str | None = None
    int8_activations: str | None = None


class Engine:
    """Call on a batch of images on the device; returns logits on the device."""

    name = "engine"

    def __init__(self):
        self.info: dict = {"engine_build_seconds": 0.0, "engine_load_seconds": 0.0, "cache_hit": False}

    def __call__(self, images: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    @classmethod
    def build(cls, inputs: BuildInputs) -> "Engine":
        raise NotImplementedError(f"{cls.__name__} does not say how it is built")

    @classmethod
    def unavailable(cls, device_type: str, offered: list[str] | None = None) -> str | None:
        """Why the engine cannot run on this machine beyond its record's missing modules; None if it can."""
        return None
