"""TensorFlow's training pieces behind the Backend seam: the Keras model, optimizer and checkpoint under
the distribution strategy, the step, the host-side accuracy counter and TensorFlow's checkpoint format.
The recipe that drives them is recipes/training.py, the same as PyTorch's.

What is TensorFlow's: the Keras model (models.py), tf.data (data.py), the step (a tf.function; --compile
makes it XLA, jit_compile=True), Keras mixed precision, the checkpoint format (tf.train.Checkpoint) and
MirroredStrategy for --num-accelerators.

The optimizer is PyTorch's, term for term: SGD with momentum, weight decay as an L2 term whose gradient
is PyTorch's `weight_decay * w` on every parameter (Keras' own weight_decay is decoupled), the same
learning-rate rule and polynomial decay (keras' PolynomialDecay is lr0 * (1 - step / horizon) ** power).
One difference: Keras' momentum buffer holds lr-scaled steps where PyTorch's holds gradients; the two
are equal while the rate is constant and differ by the decay's step-to-step change of the rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbench.backends.base import Trainer
from cnnbench.backends.tensorflow import models, require
from cnnbench.core import errors, files, terminal
from cnnbench.data.evaluation import Accuracy
from cnnbench.models.registry import ModelEntry

# Where a TensorFlow checkpoint lives inside --log-dir, beside (not over) a PyTorch one, with what it holds.
CHECKPOINT_DIR = "tensorflow"
MANIFEST = "cnnbench.json"


@dataclass
class State:
    """What the trainer holds beside the model: the optimizer, the tf.train.Checkpoint of both, the strategy."""

    optimizer: object
    checkpoint: object
    strategy: object
    weight_decay: float
    global_batch: int


def build(entry: ModelEntry, image_size: int, placement, strategy, source, global_batch: int, lr0: float,
          start_step: int, planned: int, resume: dict | None) -> Trainer:
    """Model, optimizer and schedule under the strategy; the checkpoint's state restored into them."""
    tf = require()
    import keras

    with strategy.scope():
        model = models.build(entry, image_size)
        # The decay spans this run's own steps, a resumed run's too (issue 24): the restored step count is set
        # back to 0 below, so the schedule starts again from lr0 instead of where the last run left it (0).
        schedule = keras.optimizers.schedules.PolynomialDecay(lr0, planned, 0.0, power=entry.lr_decay_power)
        optimizer = keras.optimizers.SGD(schedule, momentum=entry.momentum)
        if placement.uses_grad_scaler:  # fp16's narrow exponent: dynamic loss scaling, as GradScaler
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    if resume:
        read_checkpoint(checkpoint, resume["path"], "train without --resume (afresh, overwriting it) or give another --log-dir")
        optimizer.iterations.assign(0)  # the schedule's step: this run's own (the saved step is the manifest's)
    return Trainer(model, State(optimizer, checkpoint, strategy, entry.weight_decay, global_batch), source, start_step,
                   planned)


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


def read_checkpoint(checkpoint, path: str, advice: str, partial: bool = False) -> None:
    """tf.train.Checkpoint.read of the files at `path` (a prefix: path.index and path.data-*), every object of
    `checkpoint` found; with `partial`, what it holds beyond them (the optimizer's state) is left unread. A
    truncated or damaged file is one line naming the checkpoint (issue 23: two tracebacks, exit 1), as PyTorch's
    checkpoints.load says of its own. TensorFlow reports damage as its OpError (DataLossError: "not an
    sstable", a checksum mismatch) or, from its Python reader, as RuntimeError, IndexError ("Read less bytes than
    requested") or ValueError; a checkpoint of other objects fails the assertion (AssertionError)."""
    tf = require()
    try:
        status = checkpoint.read(path).assert_existing_objects_matched()
        if partial:
            status.expect_partial()
    except (tf.errors.OpError, RuntimeError, IndexError, ValueError, AssertionError) as exc:
        raise errors.UsageError(f"cannot read the TensorFlow checkpoint {path} (its .index and .data files): "
                                f"{errors.one_line(exc)}; the files are truncated or damaged: {advice}") from None


def read_manifest(log_dir: Path, model_name: str) -> dict | None:
    """The TensorFlow checkpoint in log_dir (None when there is none), its files' prefix as `path`; one of
    another model is an error."""
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
    return {**manifest, "path": str(path.parent / manifest["prefix"])}
