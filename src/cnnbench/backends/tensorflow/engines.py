"""TensorFlow's inference engines (`cnnbench infer --framework tensorflow --engine ...`), each a callable
on a batch of NHWC float32 images returning logits, with an `info` dict of its build:

  FunctionEngine  eager: the Keras model in a tf.function (graph mode, what Keras' predict runs), at fp32,
                  or fp16/bf16 through a Keras mixed-precision policy (the fp32 weights copied into the
                  mixed model); compile: the same tf.function with XLA (jit_compile=True)
  TFLiteEngine    the TensorFlow Lite interpreter: fp32, or int8 by full-integer post-training
                  quantisation (TFLITE_BUILTINS_INT8 only, calibrated on --calib-batches batches as
                  PyTorch's int8 is; float input and output, quantised inside), TensorFlow's int8 path on
                  CPUs; the flatbuffer from the artefact cache when it holds an intact one

Each is checked against TensorFlow fp32 on the same inputs by the inference recipe's guard. Which
precisions each engine runs on which device, and which class builds it, is its record in the engine
table (cnnbench.engines.table); a class builds its engine with `build(inputs)`, as PyTorch's engines do.
"""

from __future__ import annotations

import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cnnbench.backends.tensorflow import models, require, runtime
from cnnbench.core import environment
from cnnbench.core.placement import Placement



@dataclass(frozen=True)
class BuildInputs:
    """What a TensorFlow engine is built from: the fp32 Keras model (and the registry entry and size that
    rebuild it under a mixed policy), the run's placement and fixed batch, the run's artefact cache and the
    int8 calibration batches (called only when a build needs them)."""

    name: str
    model: object
    entry: object
    image_size: int
    batch: int
    placement: Placement
    cache: object
    calibration: Callable[[], list]


class FunctionEngine:
    """The Keras model in a tf.function, XLA-compiled when `xla`; fp16/bf16: a mixed-policy copy of the model
    with the fp32 weights. Nothing is built ahead: a tf.function traces (and XLA compiles) at its first
    call, which the guard or the warm-up makes."""

    def __init__(self, model, entry, image_size: int, placement: Placement, xla: bool):
        tf = require()
        import keras

        start = time.perf_counter()
        if placement.precision in ("fp16", "bf16"):
            keras.mixed_precision.set_global_policy(runtime.POLICIES[placement.precision])
            mixed = models.build(entry, image_size)
            mixed.set_weights(model.get_weights())
            keras.mixed_precision.set_global_policy("float32")
            model = mixed
        self.model = model
        self.function = tf.function(lambda images: model(images, training=False), jit_compile=xla)
        self.info = {"engine_build_seconds": time.perf_counter() - start, "engine_load_seconds": 0.0, "cache_hit": False}

    @classmethod
    def build(cls, inputs: BuildInputs) -> FunctionEngine:
        return cls(inputs.model, inputs.entry, inputs.image_size, inputs.placement, xla=inputs.name == "compile")

    def __call__(self, images):
        return self.function(images)


class TFLiteEngine:
    """A TensorFlow Lite interpreter at the run's batch (fp32, or full-integer int8); `cache` is the
    run's ArtifactCache, `calibration()` the int8 calibration batches (called only on a miss)."""

    def __init__(self, model, placement: Placement, batch: int, image_size: int, cache, calibration):
        tf = require()
        start = time.perf_counter()
        path = cache.lookup("model.tflite")
        hit = path is not None
        if not hit:
            path = cache.dir / "model.tflite"
            path.write_bytes(convert(tf, model, batch, image_size, calibration() if placement.precision == "int8" else None))
            cache.record("model.tflite")
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns once that LiteRT (ai-edge-litert) will replace it; it is TensorFlow 2.21's own.
            warnings.filterwarnings("ignore", module="tensorflow.lite.python.interpreter")
            self.interpreter = tf.lite.Interpreter(model_content=path.read_bytes(), num_threads=environment.usable_cores())
        self.interpreter.allocate_tensors()
        # One interpreter is not safe to call from several threads (tf.lite.Interpreter's documentation); LoadGen's
        # --server-workers N calls an engine from N threads, so a call holds the interpreter until it has its output.
        self.lock = threading.Lock()
        self.source = self.interpreter.get_input_details()[0]["index"]
        self.sink = self.interpreter.get_output_details()[0]["index"]
        self.info = {"engine_build_seconds": 0.0 if hit else time.perf_counter() - start, "engine_load_seconds": 0.0,
                     "cache_hit": hit}

    @classmethod
    def build(cls, inputs: BuildInputs) -> TFLiteEngine:
        return cls(inputs.model, inputs.placement, inputs.batch, inputs.image_size, inputs.cache, inputs.calibration)

    def __call__(self, images):
        with self.lock:
            self.interpreter.set_tensor(self.source, np.asarray(images, dtype=np.float32))
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.sink)


def convert(tf, model, batch: int, image_size: int, calibration: list | None) -> bytes:
    """TFLiteConverter from the model's concrete function at the run's fixed batch; int8: full-integer
    post-training quantisation with the calibration batches as the representative dataset."""
    spec = tf.TensorSpec([batch, image_size, image_size, 3], tf.float32)
    import keras

    # Through a SavedModel written by Keras' ExportArchive, which tracks Keras 3's variables: a concrete
    # function of the model converts, but its variables come out unset (READ_VARIABLE fails at invoke).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda images: model(images, training=False), input_signature=[spec])
    with tempfile.TemporaryDirectory(prefix="cnnbench-savedmodel-") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        return _converted(tf, converter, calibration)


def _converted(tf, converter, calibration: list | None) -> bytes:
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.asarray(x, dtype=np.float32)] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
