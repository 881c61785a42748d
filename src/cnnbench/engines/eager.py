"""The engines that run the PyTorch module itself: eager (torch.inference_mode) and torch.compile (inductor).

fp16/bf16 are autocast mixed precision, as in training.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from cnnbench.core.placement import Placement
from cnnbench.engines.artifacts import ArtifactCache
from cnnbench.engines.base import BuildInputs, Engine


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, model: nn.Module, placement: Placement):
        super().__init__()
        self.model, self.placement = model, placement

    @classmethod
    def build(cls, inputs: BuildInputs) -> "EagerEngine":
        return cls(inputs.model, inputs.placement)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self.placement.autocast():
            return self.model(images)


class CompiledEngine(EagerEngine):
    """torch.compile. Compilation is lazy (it happens at the first call), so the build makes that first
    call itself, on the example batch and exactly as every later call runs (inference_mode, the
    placement's autocast), and times it to the device's synchronisation: engine_build_seconds is the
    compile cost, and no warm-up or guard step pays it."""

    name = "compile"

    def __init__(self, model: nn.Module, placement: Placement, example: torch.Tensor, mode: str, cache: ArtifactCache):
        super().__init__(torch.compile(model, mode=mode), placement)
        self.info["compile_mode"] = mode
        saved = cache.lookup("inductor_artifacts.bin") if hasattr(torch.compiler, "load_cache_artifacts") else None
        start = time.perf_counter()
        if saved is not None:
            # Loading only fills inductor's caches; the first call below still traces the model and
            # builds its kernels from them, so a hit's build time is measured the same way as a miss's.
            torch.compiler.load_cache_artifacts(saved.read_bytes())
            self.info["cache_hit"] = True
        self.info["engine_load_seconds"] = time.perf_counter() - start
        self.info["engine_build_seconds"] = self._compile_now(example)
        if saved is None and cache.persistent and hasattr(torch.compiler, "save_cache_artifacts"):
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                (cache.dir / "inductor_artifacts.bin").write_bytes(artifacts[0])
                cache.record("inductor_artifacts.bin")

    @classmethod
    def build(cls, inputs: BuildInputs) -> "CompiledEngine":
        return cls(inputs.model, inputs.placement, inputs.example, inputs.compile_mode, inputs.cache)

    def _compile_now(self, example: torch.Tensor) -> float:
        """Seconds of the first call, which compiles; synchronised, so queued device work is included."""
        self.placement.synchronize()
        start = time.perf_counter()
        self(example)
        self.placement.synchronize()
        return time.perf_counter() - start
