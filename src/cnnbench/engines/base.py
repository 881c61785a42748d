"""What every engine is: built once (timed as build time, kept out of the steady-state figures), then called
on a batch of images on the device, returning logits on the device.

A class named by a record of the engine table (engines/table.py) builds its engine with `build(inputs)`
and may say why it cannot run on a machine with `unavailable(device_type, offered)`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from cnnbench.core.errors import CnnbenchError, EngineRefused, is_out_of_memory

if TYPE_CHECKING:  # the table imports no engine module; these are the types of a build's inputs only
    import torch
    from torch import nn

    from cnnbench.core.placement import Placement
    from cnnbench.engines.artifacts import ArtifactCache


@contextlib.contextmanager
def refusal(engine: str, step: str) -> Iterator[None]:
    """A library's failure inside `step` of an engine's build (an export, a conversion, a quantisation) as the
    one line of EngineRefused: the engine cannot take this model. cnnbench's own errors pass as they are, and
    so does running out of memory (exit 3: a smaller batch may fit, another engine is not the answer)."""
    try:
        yield
    except CnnbenchError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise EngineRefused(engine, step, getattr(exc, "reason", None) or exc) from exc


@dataclass(frozen=True)
class BuildInputs:
    """Everything an engine may be built from; each class takes what it needs.

    int8_activations: u8 | s8 for int8 (onnx_export.quantize_int8); None or "auto": the device's default.
    shared: the cache entry serves every batch size and precision (table.shares_builds): the engine exports a
    dynamic batch and fixes it to the example's when it loads; calibration_tag names the calibration set in
    the int8 artefact's name, since such an entry holds one per calibration, not per configuration."""

    model: "nn.Module"
    placement: "Placement"
    example: "torch.Tensor"
    cache: "ArtifactCache"
    calibration: Callable[[], list]
    compile_mode: str | None = None
    int8_activations: str | None = None
    shared: bool = False
    calibration_tag: str = ""
    # LoadGen's Server: keep a shared build's batch dimension free, so that a partial batch runs at its own size
    # instead of padded to the full one (Engine.any_batch), and (ONNX Runtime) whether intra-op threads spin.
    any_batch: bool = False
    spinning: bool = True
    threads: int = 0  # ONNX Runtime's intra-op threads (0: its default)


class Engine:
    """Call on a batch of images on the device; returns logits on the device."""

    name = "engine"
    any_batch = False  # True: takes any batch up to its own (a partial batch need not be padded)

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
