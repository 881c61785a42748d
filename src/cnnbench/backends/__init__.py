"""The frameworks a run can use (--framework), each behind the one Backend interface of base.py:

  pytorch/      the default: torch models, torchrun's data-parallel processes, cnnbench.engines' engines
  tensorflow/   Keras builds of the same models, tf.data, MirroredStrategy, TensorFlow's engines

`get(name)` is the one way from a configuration's framework to its backend; the recipes
(recipes/training.py, recipes/inference.py) and the tools built on them call nothing else of a framework.
"""

from __future__ import annotations

from cnnbench.backends.base import Backend
from cnnbench.core.errors import UsageError

FRAMEWORKS = ("pytorch", "tensorflow")


def get(framework: str) -> Backend:
    """A fresh backend for `framework` (a run keeps its own: TensorFlow's holds its distribution strategy).
    Each package is imported only when asked for, so PyTorch's runs never import TensorFlow."""
    if framework == "pytorch":
        from cnnbench.backends.pytorch.backend import PyTorchBackend

        return PyTorchBackend()
    if framework == "tensorflow":
        from cnnbench.backends.tensorflow.backend import TensorFlowBackend

        return TensorFlowBackend()
    raise UsageError(f"unknown --framework {framework!r}; use one of: {', '.join(FRAMEWORKS)}")


def launches_processes(cfg) -> bool:
    """Data parallelism by processes (torchrun) is PyTorch's; TensorFlow's MirroredStrategy is one process."""
    return cfg.framework == "pytorch" and cfg.num_accelerators > 1
