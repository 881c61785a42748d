"""`cnnbench infer --framework tensorflow`: the inference benchmark on TensorFlow, read top to bottom.

The recipe is inference.py's: preflight, the weights (TensorFlow's own training checkpoint, or random),
the guard and calibration inputs, TensorFlow fp32 references, the engine (built and timed apart), the
fp32 guard, cnnbench's measured loop (timing.measure), exact accuracy, the record. Engines:

  eager    the Keras model in a tf.function (graph mode, what Keras' predict runs), at fp32, or fp16/bf16
           through a Keras mixed-precision policy (the fp32 weights copied into the mixed model)
  compile  the same tf.function with XLA (jit_compile=True)
  tflite   the TensorFlow Lite interpreter: fp32, or int8 by full-integer post-training quantisation
           (TFLITE_BUILTINS_INT8 only, calibrated on --calib-batches batches as PyTorch's int8 is; float
           input and output, quantised inside), TensorFlow's int8 path on CPUs

Each is checked against TensorFlow fp32 on the same inputs with inference.py's bounds.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.recipes import checkpoints, run_record

from cnnbench.core import environment, files, terminal
from cnnbench.recipes import inference as pytorch_inference
from cnnbench.core.config import DataConfig, InferConfig
from cnnbench.engines import ArtifactCache
from cnnbench.core.errors import UsageError
from cnnbench.recipes.evaluation import real_batches
from cnnbench.models.registry import ModelEntry, resolve_with_size
from cnnbench.core.placement import PRECISIONS, Placement, resolve_placement
from cnnbench.backends.tensorflow import check_installed, data, models, require, runtime
from cnnbench.backends.tensorflow.training import CHECKPOINT_DIR, HostAccuracy, host_logits, read_manifest

# Engine -> the precisions it runs here.
ENGINE_PRECISIONS = {"eager": ("fp32", "tf32", "fp16", "bf16"), "compile": ("fp32", "tf32", "fp16", "bf16"),
                     "tflite": ("fp32", "int8")}


@dataclass(frozen=True)
class Resolved:
    entry: ModelEntry
    image_size: int
    placement: Placement
    batch: int
    log_dir: Path
    manifest: dict | None


def preflight(cfg: InferConfig) -> Resolved:
    cfg.validate()
    check_installed()
    entry, image_size = resolve_with_size(cfg.model, cfg.image_size)
    models.check_buildable(entry, image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, "nhwc", PRECISIONS)
    if placement.precision not in ENGINE_PRECISIONS[cfg.engine]:
        hint = "; TensorFlow's int8 runs in --engine tflite" if placement.precision == "int8" else ""
        raise UsageError(f"--engine {cfg.engine} with --framework tensorflow runs "
                         f"{', '.join(ENGINE_PRECISIONS[cfg.engine])}, not {placement.precision}{hint}")
    if cfg.engine == "tflite" and placement.device.type != "cpu":
        raise UsageError("--engine tflite runs on the CPU (TensorFlow Lite's interpreter); use --device cpu")
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, cfg.measure.batch_size)
    manifest = read_manifest(log_dir, entry.name)
    if manifest is None and not cfg.random_weights:
        raise UsageError(f"no TensorFlow checkpoint in {log_dir / CHECKPOINT_DIR}: train first (cnnbench train "
                         f"{cfg.model} --framework tensorflow --log-dir {log_dir}) or give --random-weights")
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    if cfg.cache_path:
        files.ensure_writable(Path(cfg.cache_path), "--cache-path")
    require()  # last: a mistake above is one line, before TensorFlow's start-up lines
    return Resolved(entry, image_size, placement, cfg.engine_batch, log_dir, manifest)


def run(cfg: InferConfig, started_at: float | None = None) -> dict:
    """One inference benchmark on TensorFlow; saves and returns its record (inference.run's contract)."""
    started_at = started_at or environment.process_start_time()
    r = preflight(cfg)
    runtime.configure(Placement(r.placement.device, "fp32", True))  # the reference and the weights are fp32
    weights = describe_weights(cfg, r)
    header = [f"resolved: TensorFlow {require().__version__}, engine {cfg.engine}, {r.placement.describe()}, scenario "
              f"{cfg.scenario}, batch {r.batch}, image {r.image_size}px", f"weights = {weights.description}"]
    record = run_record.begin("infer", cfg, r.entry, r.placement, r.batch, r.image_size, header, engine=cfg.engine,
                             scenario=cfg.scenario,
                             weights_source=weights.source, weights=weights.description)
    with run_record.out_of_memory_recorded(record, cfg.results_dir, r.entry, r.placement, training=False):
        model, digest = load_model(cfg, r)
        source = data.open_source(cfg.data, r.entry, r.batch, r.image_size, cfg.seed, train=False)
        terminal.say(f"data = {source.describe()}")
        checked = (cfg.engine, r.placement.precision) != ("eager", "fp32")
        guard_inputs = take(cfg, r, source, cfg.guard_batches, 1000) if checked else []
        references = [model(x, training=False) for x in guard_inputs]
        engine, info = build(cfg, r, model, digest, lambda: take(cfg, r, source, cfg.calib_batches, 2000, calibration=True))
        checks = guard(cfg, r, engine, guard_inputs, references) if checked else pytorch_inference.guard_fields(None)
        figures = measure_engine(cfg, r, engine, source, started_at)
    record.update(figures, weights_digest=digest, **info, **checks, **run_record.memory_fields(r.placement.device))
    record.update(run_record.efficiency_fields(record, r.entry, "infer", r.placement.device))
    source.close()
    pytorch_inference.report(cfg, record)
    run_record.save(record, cfg.results_dir)
    runtime.reset()
    return record


@dataclass(frozen=True)
class Weights:
    source: str
    description: str


def describe_weights(cfg: InferConfig, r: Resolved) -> Weights:
    if r.manifest is None:
        return Weights("random", "random initialisation (--random-weights: speed only, accuracy is meaningless)")
    if cfg.random_weights:
        terminal.warn(f"--random-weights: the TensorFlow checkpoint in {r.log_dir / CHECKPOINT_DIR} takes precedence; "
                       "it is what runs")
    return Weights("checkpoint", f"TensorFlow checkpoint {r.log_dir / CHECKPOINT_DIR} (step {r.manifest['step']})")


def load_model(cfg: InferConfig, r: Resolved):
    """The fp32 Keras model with its weights (the checkpoint's, or seeded random ones) and their digest."""
    tf = require()
    import keras

    keras.utils.set_random_seed(cfg.seed)
    model = models.build(r.entry, r.image_size)
    if r.manifest is not None:
        # The optimizer's saved state is left unread; every weight of the model must be found.
        tf.train.Checkpoint(model=model).read(str(r.log_dir / CHECKPOINT_DIR / r.manifest["prefix"])).assert_existing_objects_matched().expect_partial()
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return model, digest.hexdigest()[:16]


def take(cfg: InferConfig, r: Resolved, source, count: int, seed_offset: int, calibration: bool = False) -> list:
    """Guard and calibration batches: the first batches of the real data, or seeded random ones."""
    if calibration and cfg.data.data_dir is None:
        terminal.warn("int8 calibrated on synthetic images: accuracy figures of this engine are meaningless; "
                       "give --data-dir for a real calibration")
    if cfg.data.data_dir is not None:
        batches = source.epoch_batches()
        return [next(batches)[0] for _ in range(count)]
    return [next(data.open_source(DataConfig(), r.entry, r.batch, r.image_size, cfg.seed + seed_offset + i,
                                  train=False).batches())[0] for i in range(count)]


def build(cfg: InferConfig, r: Resolved, model, digest: str, calibration):
    """The engine (a callable: NHWC float images -> logits) and the record's engine fields."""
    start = time.perf_counter()
    if cfg.engine == "tflite":
        engine, hit = tflite_engine(cfg, r, model, digest, calibration)
    else:
        engine, hit = graph_engine(r, model, xla=cfg.engine == "compile"), False
    info = {"engine_build_seconds": 0.0 if hit else time.perf_counter() - start, "engine_load_seconds": 0.0,
            "cache_hit": hit}
    terminal.say(f"engine = {cfg.engine} (TensorFlow): build {info['engine_build_seconds']:.2f} s, cache "
                  f"{'hit' if hit else 'miss' if cfg.cache_path else 'off'}")
    return engine, info


def graph_engine(r: Resolved, model, xla: bool):
    """The model in a tf.function (XLA-compiled when `xla`); fp16/bf16: a mixed-policy copy with the fp32 weights."""
    tf = require()
    import keras

    if r.placement.precision in ("fp16", "bf16"):
        keras.mixed_precision.set_global_policy(runtime.POLICIES[r.placement.precision])
        mixed = models.build(r.entry, r.image_size)
        mixed.set_weights(model.get_weights())
        keras.mixed_precision.set_global_policy("float32")
        model = mixed
    return tf.function(lambda images: model(images, training=False), jit_compile=xla)


def tflite_engine(cfg: InferConfig, r: Resolved, model, digest: str, calibration):
    """A TensorFlow Lite interpreter at the run's batch (fp32, or full-integer int8); the flatbuffer from
    the artefact cache when it holds an intact one."""
    tf = require()
    key = {"framework": "tensorflow", "model": r.entry.name, "weights": digest, "engine": "tflite",
           "precision": r.placement.precision, "batch_size": r.batch, "image_size": r.image_size,
           "calibration": (cfg.data.data_dir, cfg.calib_batches) if r.placement.precision == "int8" else None,
           "versions": {"tensorflow": tf.__version__}}
    cache = ArtifactCache(cfg.cache_path, key)
    path = cache.lookup("model.tflite")
    hit = path is not None
    if not hit:
        path = cache.dir / "model.tflite"
        path.write_bytes(convert(tf, model, r, calibration() if r.placement.precision == "int8" else None))
        cache.record("model.tflite")
    for note in cache.notes:
        terminal.warn(note)
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns once that LiteRT (ai-edge-litert) will replace it; it is TensorFlow 2.21's own.
        warnings.filterwarnings("ignore", module="tensorflow.lite.python.interpreter")
        interpreter = tf.lite.Interpreter(model_content=path.read_bytes(), num_threads=environment.usable_cores())
    interpreter.allocate_tensors()
    cache.close()
    source, sink = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run(images):
        interpreter.set_tensor(source, np.asarray(images, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(sink)

    return run, hit


def convert(tf, model, r: Resolved, calibration: list | None) -> bytes:
    """TFLiteConverter from the model's concrete function at the run's fixed batch; int8: full-integer
    post-training quantisation with the calibration batches as the representative dataset."""
    spec = tf.TensorSpec([r.batch, r.image_size, r.image_size, 3], tf.float32)
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


def guard(cfg: InferConfig, r: Resolved, engine, inputs: list, references: list) -> dict:
    """inference.py's guard against TensorFlow fp32 on the same inputs."""
    import torch

    if not inputs:
        return pytorch_inference.guard_fields(pytorch_inference.GUARD_BOUNDS[r.placement.precision])
    outputs = torch.cat([host_logits(engine(x)) for x in inputs])
    reference = torch.cat([host_logits(x) for x in references])
    return pytorch_inference.judge_guard(cfg.engine, r.placement.precision, outputs, reference, len(inputs),
                                         "TensorFlow fp32")


def measure_engine(cfg: InferConfig, r: Resolved, engine, source, started_at: float) -> dict:
    """inference.measured_figures over the engine, with TensorFlow's input, accuracy read on the host and its sync."""
    if cfg.data.data_dir is not None:
        stream = real_batches(source, cfg.data.num_epochs)

        def step():
            images, labels, n = next(stream)
            return engine(images), labels, n
    else:
        images = next(source.batches())[0]

        def step():
            return engine(images), None, r.batch
    return pytorch_inference.measured_figures(cfg, r, step, source, HostAccuracy(), runtime.synchronize,
                                              f"infer {r.entry.name} tensorflow {cfg.engine} {r.placement.precision}",
                                              started_at)
