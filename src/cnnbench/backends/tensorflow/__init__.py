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

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

from cnnbench.core.errors import UsageError

INSTALL = ("--framework tensorflow needs TensorFlow: pip install 'cnnbench[tensorflow]' "
           "(in this repository: .venv/bin/pip install tensorflow-cpu)")


# TensorFlow's start-up lines, printed by its C++ libraries on file descriptor 2 while it is imported (issue 23:
# four lines, twice, before cnnbench's own on every TensorFlow run). TF_CPP_MIN_LOG_LEVEL=1 removes the CPU
# features' INFO lines, but TensorFlow 2.21 prints oneDNN's INFO line from port.cc, and absl its "before
# InitializeLog" warning, whatever the level (tried: levels 1-3 all print them). So the import's native stderr
# is caught and given back without exactly these lines; anything else it printed is kept. TF_CPP_MIN_LOG_LEVEL=0
# set by the user (TensorFlow's own switch for its INFO lines) keeps everything, absl's Python logging included.
STARTUP_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                           r"|I\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\] .*"
                           r"|To enable the following instructions: .*")


def require():
    """The tensorflow module, or the one line that says how to install it (exit 2)."""
    verbose = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off: warnings and errors are kept
    # torchvision first: importing it after TensorFlow kills the process (SIGSEGV; TensorFlow 2.21 with
    # torchvision 0.29, found while writing models.py); in this order both load.
    import torchvision  # noqa: F401

    try:
        with contextlib.nullcontext() if verbose else _without_startup_lines():
            import tensorflow
    except ImportError:
        raise UsageError(INSTALL) from None
    if not verbose:
        import absl.logging  # TensorFlow's dependency; Keras warns through it (e.g. on saving and compiling)

        absl.logging.set_verbosity(absl.logging.ERROR)
    return tensorflow


@contextlib.contextmanager
def _without_startup_lines():
    """File descriptor 2 into a temporary file for the block, then its lines back on stderr but STARTUP_NOISE's.
    The descriptor, not sys.stderr: the lines come from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not STARTUP_NOISE.fullmatch(line.rstrip("\n")))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def check_installed() -> None:
    """The install line (exit 2) when TensorFlow is missing, without importing it (seconds, and its start-up
    lines): preflights call it first, so that the line comes before any other."""
    if importlib.util.find_spec("tensorflow") is None:
        raise UsageError(INSTALL)
