"""Which framework's recipe runs a train or infer configuration (--framework): PyTorch's (training.py,
inference.py, loadgen.py) or TensorFlow's (tfbackend/). Every caller (the CLI, soak, the sweeps' child
processes, nvcnn.py) goes through here, so a TensorFlow configuration never runs on PyTorch by omission.
"""

from __future__ import annotations

from typing import Callable


def train_recipe(cfg) -> Callable[..., dict]:
    """run(cfg, started_at=None, annotate=None) -> the record, of the configuration's framework."""
    if cfg.framework == "tensorflow":
        from cnnbench.backends.tensorflow import training as recipe
    else:
        from cnnbench.recipes import training as recipe
    return recipe.run


def infer_recipe(cfg) -> Callable[..., dict]:
    """run(cfg) -> the record: TensorFlow's, LoadGen's (--loadgen) or PyTorch's built-in loop."""
    if cfg.framework == "tensorflow":
        from cnnbench.backends.tensorflow import inference as recipe
    elif cfg.loadgen.enabled:
        from cnnbench.tools import loadgen as recipe
    else:
        from cnnbench.recipes import inference as recipe
    return recipe.run


def launches_processes(cfg) -> bool:
    """Data parallelism by processes (torchrun) is PyTorch's; TensorFlow's MirroredStrategy is one process."""
    return cfg.framework == "pytorch" and cfg.num_accelerators > 1


def preflight(kind: str, cfg, accelerators: int = 1) -> None:
    """Validate a sweep's configuration with its framework's own preflight, before anything runs."""
    if cfg.framework == "tensorflow":
        if kind == "infer":
            from cnnbench.backends.tensorflow import inference as tf_inference

            tf_inference.preflight(cfg)
        else:
            from cnnbench.backends.tensorflow import training as tf_training

            tf_training.preflight(cfg)
    elif kind == "infer":
        from cnnbench.recipes import inference

        inference.preflight(cfg)
    else:
        from cnnbench.backends.pytorch import distributed
        from cnnbench.recipes import training

        training.preflight(cfg, distributed.planned(accelerators))
