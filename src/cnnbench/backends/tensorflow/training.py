"""`cnnbench train --framework tensorflow`: the training benchmark on TensorFlow, read top to bottom.

The recipe is training.py's: preflight, build the model, optimizer and input (under the strategy),
resume, measure with cnnbench's own loop (timing.measure), evaluate, save the checkpoint, record with
cnnbench's fields and tables. What is TensorFlow's: the Keras model (models.py), tf.data (data.py),
the step (a tf.function; --compile makes it XLA, jit_compile=True), Keras mixed precision, the
checkpoint format (tf.train.Checkpoint) and MirroredStrategy for --num-accelerators.

The optimizer is PyTorch's, term for term: SGD with momentum, weight decay as an L2 term whose gradient
is PyTorch's `weight_decay * w` on every parameter (Keras' own weight_decay is decoupled), the same
learning-rate rule and polynomial decay (keras' PolynomialDecay is lr0 * (1 - step / horizon) ** power).
One difference: Keras' momentum buffer holds lr-scaled steps where PyTorch's holds gradients; the two
are equal while the rate is constant and differ by the decay's step-to-step change of the rate.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.recipes import checkpoints, run_record

from cnnbench.core import environment, errors, files, stats, telemetry, terminal
from cnnbench.recipes import training as pytorch_training
from cnnbench.core.config import TrainConfig
from cnnbench.recipes.evaluation import Accuracy
from cnnbench.models.registry import ModelEntry, resolve_with_size
from cnnbench.core.placement import Placement, resolve_placement
from cnnbench.backends.tensorflow import check_installed, data, models, require, runtime
from cnnbench.core.timing import StepTimes, measure

# Where a TensorFlow checkpoint lives inside --log-dir, beside (not over) a PyTorch one, with what it holds.
CHECKPOINT_DIR = "tensorflow"
MANIFEST = "cnnbench.json"


@dataclass(frozen=True)
class Resolved:
    entry: ModelEntry
    image_size: int
    placement: Placement
    log_dir: Path
    replicas: int


def preflight(cfg: TrainConfig) -> Resolved:
    """Validate and resolve before any work, as training.preflight; TensorFlow's layout is channels-last."""
    cfg.validate()
    check_installed()
    entry, image_size = resolve_with_size(cfg.model, cfg.image_size)
    models.check_buildable(entry, image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, "nhwc")
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, cfg.measure.batch_size)
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    files.ensure_writable(log_dir, "--log-dir")
    require()  # last: a mistake above is one line, before TensorFlow's start-up lines
    return Resolved(entry, image_size, placement, log_dir, cfg.num_accelerators)


@dataclass
class Trainer:
    model: object
    optimizer: object
    checkpoint: object
    step: object  # the tf.function training step: (images, labels) -> the mean loss
    source: object
    start_step: int
    planned_steps: int


def run(cfg: TrainConfig, started_at: float | None = None, annotate=None) -> dict:
    """One training benchmark on TensorFlow; saves and returns its record (training.run's contract)."""
    started_at = started_at or environment.process_start_time()
    r = preflight(cfg)
    strategy = runtime.configure(r.placement, r.replicas)
    batch = cfg.measure.batch_size  # per replica, as per process in PyTorch's data parallelism
    lr0 = pytorch_training.initial_learning_rate(cfg, r.entry, r.replicas)
    record = run_record.begin("train", cfg, r.entry, r.placement, batch, r.image_size, header_lines(cfg, r, lr0),
                             compile=cfg.compile, learning_rate=lr0, num_accelerators=r.replicas)
    with run_record.out_of_memory_recorded(record, cfg.results_dir, r.entry, r.placement, training=True):
        trainer = build(cfg, r, strategy, lr0)
        times, display, sampler = train(cfg, trainer, r)
        ended, unsaved = finish(cfg, r, trainer, times, display)
        record.update(ended)
    record.update(stats.figures(r.replicas * batch, times, time.time() - started_at))
    record.update(sampler.fields(batch * len(times.steady_seconds)))
    record.update(run_record.efficiency_fields(record, r.entry, "train", r.placement.device, r.replicas))
    if annotate is not None:
        record.update(annotate(record))
    if cfg.data.data_dir:
        record.update(stats.real_data_fields(trainer.source, times))
        trainer.source.close()
    # One process: the replicas' figures are the job's (training.report's per-rank line is PyTorch's processes').
    pytorch_training.report(cfg, record, _OneProcess(), r.replicas * batch)
    run_record.save(record, cfg.results_dir)
    runtime.reset()
    if unsaved is not None:
        raise unsaved
    return record


@dataclass(frozen=True)
class _OneProcess:
    """What training.report reads of a PyTorch world: its process count."""

    size: int = 1


def header_lines(cfg: TrainConfig, r: Resolved, lr0: float) -> list[str]:
    e = r.entry
    lines = [f"resolved: TensorFlow {require().__version__}, {r.placement.describe()}, image {r.image_size}px, "
             f"learning rate {lr0:g} (SGD momentum {e.momentum}, weight decay {e.weight_decay}, polynomial decay power "
             f"{e.lr_decay_power}){', XLA' if cfg.compile else ''}, log dir {r.log_dir}"]
    if r.replicas > 1:
        lines.append(f"distributed: MirroredStrategy over {r.replicas} {r.placement.device.type} devices, batch "
                     f"{cfg.measure.batch_size} per replica (global batch {r.replicas * cfg.measure.batch_size})")
    return lines


def build(cfg: TrainConfig, r: Resolved, strategy, lr0: float) -> Trainer:
    """Model, optimizer, schedule, input and step under the strategy; the checkpoint's state restored into them."""
    tf = require()
    import keras

    keras.utils.set_random_seed(cfg.seed)
    manifest = read_manifest(r.log_dir, r.entry.name)
    start_step = manifest["step"] if manifest else 0
    source = data.open_source(cfg.data if not cfg.data.data_dir else cfg.data.with_augmentation(r.entry.min_crop_scale, r.entry.flip),
                              r.entry, cfg.measure.batch_size * r.replicas, r.image_size, cfg.seed, train=True)
    planned = cfg.measure.warmup + cfg.measure.num_batches
    if cfg.data.num_epochs:
        global_batch = cfg.measure.batch_size * r.replicas
        planned = max(cfg.data.num_epochs * (source.images_per_epoch // global_batch), cfg.measure.warmup + 1)
    with strategy.scope():
        model = models.build(r.entry, r.image_size)
        schedule = keras.optimizers.schedules.PolynomialDecay(lr0, start_step + planned, 0.0, power=r.entry.lr_decay_power)
        optimizer = keras.optimizers.SGD(schedule, momentum=r.entry.momentum)
        if r.placement.uses_grad_scaler:  # fp16's narrow exponent: dynamic loss scaling, as GradScaler
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    if manifest:
        checkpoint.read(str(r.log_dir / CHECKPOINT_DIR / manifest["prefix"])).assert_existing_objects_matched()
        terminal.say(f"Resuming from checkpoint {r.log_dir / CHECKPOINT_DIR} at step {start_step}")
    step = make_train_step(tf, model, optimizer, strategy, r.entry.weight_decay, cfg.measure.batch_size * r.replicas,
                           cfg.compile)
    return Trainer(model, optimizer, checkpoint, step, source, start_step, planned)


def make_train_step(tf, model, optimizer, strategy, weight_decay: float, global_batch: int, xla: bool):
    """The step: forward, loss (mean over the global batch) plus PyTorch's weight decay as L2, backward,
    SGD update; each replica on its share, gradients summed across replicas by the optimizer."""
    import keras

    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    scaled = hasattr(optimizer, "scale_loss")
    share = global_batch // strategy.num_replicas_in_sync

    def replica_step(images, labels):
        # Every replica is handed the global batch and trains on its own slice of it.
        first = tf.distribute.get_replica_context().replica_id_in_sync_group * share
        images, labels = images[first : first + share], labels[first : first + share]
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(cross_entropy(labels, logits), global_batch_size=global_batch)
            # d/dw (wd / 2 * |w|^2) = wd * w: torch.optim.SGD(weight_decay=wd)'s term, on every parameter.
            decay = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                                   for v in model.trainable_variables])
            total = loss + tf.nn.scale_regularization_loss(decay)
            target = optimizer.scale_loss(total) if scaled else total
        optimizer.apply_gradients(zip(tape.gradient(target, model.trainable_variables), model.trainable_variables))
        return loss

    @tf.function(jit_compile=xla)
    def step(images, labels):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(images, labels)), axis=None)

    return step


def train(cfg: TrainConfig, t: Trainer, r: Resolved):
    """cnnbench's measured loop over the step, with the display and the telemetry sampler beside it."""
    batches = t.source.batches()
    display = pytorch_training.StepDisplay(
        cfg.measure.display_every, r.replicas * cfg.measure.batch_size, t.start_step, t.source.images_per_epoch,
        lambda: float(t.optimizer.learning_rate), terminal.Progress(t.planned_steps, f"train {r.entry.name} tensorflow"))
    terminal.say(f"data = {t.source.describe()}")
    terminal.say(terminal.STEP_COLUMNS)
    if hasattr(t.source, "reset_data_wait"):
        t.source.reset_data_wait()
    sampler = telemetry.sampler_for(r.placement.device, not cfg.measure.no_telemetry)
    with display.progress, sampler:
        times = measure(lambda: t.step(*next(batches)), runtime.synchronize, warmup=cfg.measure.warmup,
                        max_steps=t.planned_steps - cfg.measure.warmup,
                        duration=None if cfg.data.num_epochs else cfg.measure.duration,
                        min_steps=cfg.measure.min_steady_steps,
                        after_step=telemetry.marking(display, sampler, cfg.measure.warmup))
    return times, display, sampler


def finish(cfg: TrainConfig, r: Resolved, t: Trainer, times: StepTimes, display):
    """How the run ended, the evaluation, the checkpoint (only of a completed run that did not diverge)."""
    first_loss, final_loss = display.losses()
    ending = run_record.ending(times, final_loss)
    completed = ending["status"] == "ok"
    evaluation = evaluate_at_end(cfg, r, t.model) if cfg.eval_at_end and completed else {}
    saved = unsaved = None
    if completed:
        try:
            saved = save_checkpoint(r.log_dir, t.checkpoint, r.entry.name, display.global_step)
        except errors.CheckpointNotSaved as exc:
            unsaved, ending = exc, {**ending, "reason": str(exc)}
    return {**ending, "initial_loss": first_loss, "final_loss": final_loss, "start_step": t.start_step,
            "end_step": display.global_step, "resumed": t.start_step > 0, "checkpoint": None if saved is None else str(saved),
            "compile_seconds": times.warmup_seconds[0] if cfg.compile and times.warmup_seconds else None,
            **run_record.memory_fields(r.placement.device), **evaluation}, unsaved


def evaluate_at_end(cfg: TrainConfig, r: Resolved, model) -> dict:
    """Top-1/top-5 on the validation split, counted exactly as PyTorch's runs count them (evaluation.Accuracy)."""
    val = dataclasses.replace(cfg.data, split="validation")
    source = data.open_source(val, r.entry, cfg.measure.batch_size, r.image_size, cfg.seed, train=False)
    top1, top5, count = count_accuracy(lambda images: model(images, training=False), source)
    source.close()
    return {"top1": top1, "top5": top5, "images_evaluated": count}


def count_accuracy(forward, source) -> tuple[float | None, float | None, int]:
    """One pass over `source.epoch_batches()` through `forward`, counted as PyTorch's runs count."""
    counted = HostAccuracy()
    for images, labels, n in source.epoch_batches():
        counted.add(forward(images), labels, n)
    return counted.result()


def host_logits(logits):
    """Logits of any engine (a tf.Tensor or a NumPy array) as a float32 PyTorch tensor on the host."""
    import torch

    return torch.from_numpy(np.array(logits, dtype=np.float32))  # a copy: TensorFlow's arrays are read-only


class HostAccuracy:
    """evaluation.Accuracy fed with TensorFlow/NumPy batches (read on the host, outside the timed step)."""

    def __init__(self):
        self.accuracy = Accuracy()

    def add(self, logits, labels, n: int) -> None:
        import torch

        self.accuracy.add(host_logits(logits), torch.from_numpy(np.array(labels)).long(), n)

    def result(self):
        return self.accuracy.result()


# ---------------------------------------------------------------- the checkpoint, TensorFlow's format


def save_checkpoint(log_dir: Path, checkpoint, model_name: str, step: int) -> Path:
    """tf.train.Checkpoint's files under log_dir/tensorflow, then a manifest naming them, written last
    and atomically: a crash mid-save leaves the previous checkpoint the one that is read."""
    folder = log_dir / CHECKPOINT_DIR
    try:
        prefix = Path(checkpoint.write(str(folder / f"step-{step}"))).name
        files.atomic_write_text(folder / MANIFEST, json.dumps({"model": model_name, "step": step, "prefix": prefix,
                                                                 "framework": "tensorflow"}) + "\n")
    except (OSError, ValueError) as exc:
        raise errors.CheckpointNotSaved(f"TensorFlow checkpoint not saved in {folder}: {errors.one_line(exc)}") from exc
    terminal.say(f"Checkpoint saved: {folder} (step {step})")
    return folder


def read_manifest(log_dir: Path, model_name: str) -> dict | None:
    """The TensorFlow checkpoint in log_dir (None when there is none); one of another model is an error."""
    path = log_dir / CHECKPOINT_DIR / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise errors.UsageError(f"unreadable TensorFlow checkpoint manifest {path}: {errors.one_line(exc)}") from None
    if manifest.get("model") != model_name:
        raise errors.UsageError(f"the TensorFlow checkpoint in {path.parent} is of {manifest.get('model')}, not {model_name}; "
                                "give another --log-dir")
    return manifest
