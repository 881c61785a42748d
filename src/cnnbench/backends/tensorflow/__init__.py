"""TensorFlow as a second backend (`--framework tensorflow`): the same recipes (recipes/training.py,
recipes/inference.py), measured loop, statistics, records and tables as PyTorch's, on the original's
framework, behind the Backend interface (backends/base.py).

  backend.py    TensorFlowBackend: the Backend methods, one process with N MirroredStrategy replicas
  models.py     Keras builds of the registry's models: keras.applications' ResNets and DenseNet,
                GoogLeNet after torchvision's layer structure, any spec file (synNet format)
  data.py       synthetic batches, and tf.data reading the TFRecord shards and image folders with
                the preprocessing presets of data/preprocess.py
  runtime.py    the placement applied to TensorFlow: Keras policy, TF32, devices, the strategy, sync
  training.py   the train step, the optimizer under the strategy, TensorFlow's checkpoint format
  engines.py    FunctionEngine (eager: tf.function; compile: XLA) and TFLiteEngine (fp32, full-integer
                int8), each checked against TensorFlow fp32 by the inference recipe's guard

TensorFlow is optional (the `tensorflow` extra); `require()` is the one way in, and says how to
install it when it is missing.
"""

from __future__ import annotations

import importlib.util
import os

from cnnbench.core.errors import UsageError

INSTALL = ("--framework tensorflow needs TensorFlow: pip install 'cnnbench[tensorflow]' "
           "(in this repository: .venv/bin/pip install tensorflow-cpu)")


def require():
    """The tensorflow module, or the one line that says how to install it (exit 2)."""
    # TensorFlow's C++ start-up lines (oneDNN, CPU features) are INFO: level 1 keeps warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # torchvision first: importing it after TensorFlow kills the process (SIGSEGV; TensorFlow 2.21 with
    # torchvision 0.29, found while writing models.py); in this order both load.
    import torchvision  # noqa: F401

    try:
        import tensorflow
    except ImportError:
        raise UsageError(INSTALL) from None
    return tensorflow


def check_installed() -> None:
    """The install line (exit 2) when TensorFlow is missing, without importing it (seconds, and its start-up
    lines): preflights call it first, so that the line comes before any other."""
    if importlib.util.find_spec("tensorflow") is None:
        raise UsageError(INSTALL)
