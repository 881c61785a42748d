"""Input for the TensorFlow backend: synthetic batches, and tf.data over the TFRecord shards and image folders.

`open_source` is the counterpart of cnnbench.data.sources.open_source and returns a source with the
PyTorch sources' interface: `batches()` (endless), `epoch_batches()` (one pass, padded to the batch
size), `images_per_epoch`, `describe()`, `close()`, `data_wait_seconds`, `reset_data_wait()` and
`corrupt_images`. Images come out as float32 NHWC (TensorFlow's native layout), labels as int32.

What is the same as the PyTorch pipeline (cnnbench/data):
  discovery     loader.detect_format / open_dataset / rank_share: the same layouts, split names, class
                index (folder.py: sorted folder names), label_offset and range check, and error messages.
  order         folders: the epoch's order is RankSampler's (the same permutation per seed and epoch,
                every world_size-th image per rank), so labels come out in the PyTorch order; TFRecord:
                shard i goes to rank i % world_size, the rank's shards in the order TFRecordImages gives
                one worker, records in file order, then (training) a seeded shuffle buffer.
  preprocessing the presets of data/preprocess.py, read from its `Preprocess`: the output sizes
                (shorter side to round(crop*256/224), 232 for torchvision-v2, 256x256 for aimatrix),
                the centre crop's offsets (Python's round, half to even) and RandomResizedCrop's
                algorithm (ten tries of a log-uniform aspect and uniform area, then the centre
                fallback), each image rounded back to uint8 after resizing as torchvision's uint8 path
                does, then normalised on the device with normalization.py's constants.
  synthetic     the same torch.Generator draws as data/synthetic.py: same seed, same pixels and labels.

What differs, and why:
  resize        tf.image.resize(bilinear, antialias=True) (a triangle filter widened by the scale,
                tensorflow/core/kernels/image/scale_and_translate_op.cc) against torchvision's
                antialiased bilinear on uint8 (PIL's fixed-point triangle filter). Both are the same
                filter; the arithmetic differs (float, then rounded, against fixed point), so 12-17% of
                the values differ by one grey level, never more, mean 0.12-0.16 grey levels (0.002-0.003
                in ImageNet-normalised units), the same for every preset (tests/test_tf_data.py checks
                it). TensorFlow has no torchvision kernel, and a Python one per image would cost more
                than the decode.
  decoding      none: JPEG through tf.io.decode_jpeg with dct_method INTEGER_ACCURATE (libjpeg-turbo's
                JDCT_ISLOW, what TorchCodec and torchvision.io use: identical pixels; TensorFlow's default,
                the fast IDCT, differs by up to 9 grey levels), PNG (and GIF, BMP) through
                tf.io.decode_image, lossless. Grey and alpha images come out as RGB in both.
  randomness    augmentation draws are stateless, keyed by (seed, epoch, position in the epoch), so a
                run is reproducible whatever the parallelism; they are not torch's numbers.
  parallelism   map(num_parallel_calls=AUTOTUNE) threads in one process instead of DataLoader worker
                processes: --workers does not apply. Shards are read one after another (flat_map, so
                positions stay in order; the decode is what runs in parallel), and the pipeline is
                rebuilt at each epoch (a new order), so each epoch's first batch waits for it to start.

Corrupt input (tf.data cannot catch a failing decode inside the pipeline, so the source keeps count):
each image carries its position in the epoch; the decode map is followed by ignore_errors(), and a scan
right after it sees the positions in order, so a gap is exactly the images TensorFlow could not read or
decode. The source then asks cnnbench's own readers about them (folder.ImageFolder, the TFRecord
reader with its CRC checks), which word the one-line message as the PyTorch source does.
  without skip_corrupt  the first such image ends the run with UsageError "cannot decode image
                        <file>: ...; pass --skip-corrupt ..." (in training from TFRecords, when the batch
                        that follows it through the shuffle buffer arrives).
  with skip_corrupt     each is counted in `corrupt_images` (exact), the first ten named in
                        `corrupt_files`, and left out of the batches (and of accuracy).
  always fatal          a damaged shard (CRC, truncation), a record that is not a tf.train.Example or lacks
                        image/encoded or image/class/label, and a label outside the model's classes, as in
                        PyTorch.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from cnnbench.core.config import DataConfig
from cnnbench.data.folder import ImageFolder
from cnnbench.data.loader import DataWaits, detect_format, open_dataset, rank_share
from cnnbench.data.normalization import AIMATRIX_RGB_MEAN, IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, normalized
from cnnbench.data.preprocess import Preprocess, preprocess_for
from cnnbench.data.synthetic import IMAGENET_TRAIN_IMAGES
from cnnbench.data.tfrecord import Sample, TFRecordImages, count_records, iter_records
from cnnbench.core.errors import UsageError, one_line
from cnnbench.backends.tensorflow import require

# The feature keys TFRecordImages reads (data/tfrecord.py, the ImageNet build script's schema).
ENCODED, LABEL = "image/encoded", "image/class/label"
MISSING_LABEL = -(2**62)  # parse default: a record without a label is told apart from a label out of range
SHUFFLE_BUFFER = 1024  # decoded crops (224 px: 150 KB each) mixed across TFRecord shards in training
SEED_STRIDE = 1_000_003  # seed * stride + epoch, as RankSampler and TFRecordImages derive per-epoch seeds


def open_source(data: DataConfig, entry, batch: int, image_size: int, seed: int, train: bool,
                rank: int = 0, world_size: int = 1):
    """The input of a TensorFlow run: synthetic without --data-dir, else tf.data over the split."""
    if data.data_dir is None:
        return SyntheticSource(batch, image_size, entry.preprocessing, num_classes=entry.num_classes, seed=seed)
    if data.min_crop_scale is None or data.flip is None:  # the model's augmentation, else torchvision's recipe
        data = data.with_augmentation(entry.min_crop_scale, entry.flip)
    preprocess = preprocess_for(entry.name, entry.preprocessing, image_size, data.preprocess, train=train,
                                min_crop_scale=data.min_crop_scale, flip=data.flip)
    return RealDataSource(data.data_dir, data.split or ("train" if train else "validation"), batch, preprocess,
                          train=train, seed=seed, label_offset=data.label_offset, skip_corrupt=data.skip_corrupt,
                          rank=rank, world_size=world_size, fmt=data.data_format, num_classes=entry.num_classes)


def default_device() -> str:
    """Where batches are normalised and kept: the first GPU TensorFlow sees, else the CPU."""
    tf = require()
    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


class Normalizer:
    """normalization.normalize in TensorFlow, on uint8 NHWC: the same constants and float32 operations, in
    the same order, so the same pixels give the same floats; the constants are made once, on `device`."""

    def __init__(self, name: str, device: str):
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {name!r}; known: {', '.join(NORMALIZATIONS)}")
        tf = require()
        self.name, self.device, self.mean, self.std = name, device, None, None
        with tf.device(device):
            if name == "aimatrix_densenet":
                self.mean = tf.constant(AIMATRIX_RGB_MEAN, tf.float32)
            elif name == "imagenet":
                self.mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
                self.std = tf.constant(IMAGENET_STD, tf.float32) * 255.0

    def __call__(self, images_uint8):
        tf = require()
        with tf.device(self.device):
            return normalized(tf.cast(images_uint8, tf.float32), self.name, self.mean, self.std)


class SyntheticSource:
    """One random batch, made once on the device and reused: data/synthetic.py's, in NHWC."""

    def __init__(self, batch_size: int, image_size: int, normalization: str, num_classes: int = 1000,
                 seed: int = 0, device: str | None = None):
        import torch

        # The draws of data/synthetic.py, in its order: the PyTorch source with this seed has these pixels.
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
        tf = require()
        self.device = device or default_device()
        self.images = Normalizer(normalization, self.device)(pixels.permute(0, 2, 3, 1).numpy())
        with tf.device(self.device):
            self.labels = tf.identity(tf.constant(labels.numpy(), tf.int32))
        self.images_per_epoch = IMAGENET_TRAIN_IMAGES
        self.batch_size = batch_size
        self.corrupt_images = None
        self._description = f"synthetic ({batch_size} random images of {image_size}x{image_size}, NHWC, reused)"

    def batches(self) -> Iterator:
        while True:
            yield self.images, self.labels

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        """Nothing to release (the batch lives as long as the source)."""


# ------------------------------------------------------------------------------------------------
# Preprocessing in TensorFlow ops (inside tf.data's map functions)
# ------------------------------------------------------------------------------------------------


def _resize(image, height, width):
    """Bilinear with antialias, rounded and clipped back to uint8 as torchvision's uint8 path returns."""
    tf = require()
    out = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _half_even(x):
    """Python's round() (half to even) of a float tensor, as int32: tf.round rounds half to even too."""
    tf = require()
    return tf.cast(tf.round(x), tf.int32)


def evaluation_geometry(image, p: Preprocess):
    """Preprocess's evaluation branch: resize (shorter side, or both sides for aimatrix), centre crop."""
    tf = require()
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if p.keep_aspect:  # torchvision's _compute_resized_output_size: long = int(resize * long / short)
        short, long = tf.minimum(h, w), tf.maximum(h, w)
        new_long = tf.cast(tf.cast(p.resize, tf.float64) * tf.cast(long, tf.float64) / tf.cast(short, tf.float64),
                           tf.int32)  # truncation, as int()
        height, width = tf.where(w <= h, new_long, p.resize), tf.where(w <= h, p.resize, new_long)
    else:
        height, width = tf.constant(p.resize), tf.constant(p.resize)
    resized = _resize(image, height, width)
    top = _half_even(tf.cast(height - p.crop, tf.float32) / 2.0)  # F.center_crop: int(round((h - crop) / 2))
    left = _half_even(tf.cast(width - p.crop, tf.float32) / 2.0)
    return resized[top : top + p.crop, left : left + p.crop, :]


def _crop_box(h, w, p: Preprocess, seeds):
    """RandomResizedCrop.get_params: (top, left, height, width) of the crop, drawn from stateless seeds."""
    tf = require()
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    area = hf * wf
    target = area * tf.random.stateless_uniform([10], seeds[0], p.scale[0], p.scale[1])
    aspect = tf.exp(tf.random.stateless_uniform([10], seeds[1], math.log(p.ratio[0]), math.log(p.ratio[1])))
    cw, ch = _half_even(tf.sqrt(target * aspect)), _half_even(tf.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # the first try that fits, as its loop
    # The fallback after ten misses: the whole image, its aspect clamped into the ratio range, centred.
    in_ratio = wf / hf
    fw = tf.where(in_ratio > max(p.ratio), _half_even(hf * max(p.ratio)), w)
    fh = tf.where(in_ratio < min(p.ratio), _half_even(wf / min(p.ratio)), h)
    found = tf.reduce_any(fits)
    height, width = tf.where(found, ch[first], fh), tf.where(found, cw[first], fw)
    top = tf.where(found, tf.random.stateless_uniform([], seeds[2], 0, h - height + 1, tf.int32), (h - height) // 2)
    left = tf.where(found, tf.random.stateless_uniform([], seeds[3], 0, w - width + 1, tf.int32), (w - width) // 2)
    return top, left, height, width


def training_geometry(image, p: Preprocess, seed):
    """Preprocess's training branch: random resized crop to crop x crop, then a flip with probability p.flip.

    `seed` (shape [2], int64) keys every draw: the same image, seed and preset give the same output."""
    tf = require()
    seeds = tf.random.experimental.stateless_split(seed, 5)
    top, left, height, width = _crop_box(tf.shape(image)[0], tf.shape(image)[1], p, seeds)
    image = _resize(image[top : top + height, left : left + width, :], tf.constant(p.crop), tf.constant(p.crop))
    if p.flip > 0:
        flip = tf.random.stateless_uniform([], seeds[4]) < p.flip
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return image


def preprocess_image(encoded, p: Preprocess, seed=None):
    """JPEG/PNG bytes -> uint8 crop x crop x 3 (RGB; grey and alpha converted), as `p` says."""
    tf = require()
    image = tf.cond(tf.io.is_jpeg(encoded),  # libjpeg-turbo's accurate integer IDCT, as TorchCodec and torchvision.io
                    lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image = training_geometry(image, p, seed) if p.train else evaluation_geometry(image, p)
    return tf.ensure_shape(image, [p.crop, p.crop, 3])


# ------------------------------------------------------------------------------------------------
# The per-epoch tf.data pipeline
# ------------------------------------------------------------------------------------------------


def plain(function):
    """`function` for tf.data as written: no AutoGraph rewrite (the code uses tf.cond and tf.where where it
    branches, and AutoGraph would also try to convert what it calls, require() included, and warn)."""
    return require().autograph.experimental.do_not_convert(function)


class _Epoch:
    """One epoch's plan: the items in order, and what each position is (for messages)."""

    def __init__(self, positions: int):
        self.positions = positions

    def items(self):
        """tf.data.Dataset of {"pos", "encoded", "label", "problem"}."""
        raise NotImplementedError

    def sample(self, pos: int) -> Sample:
        """What cnnbench's own reader makes of position `pos`: the image, or why not."""
        raise NotImplementedError


class _FolderEpoch(_Epoch):
    def __init__(self, dataset: ImageFolder, order: list[int]):
        super().__init__(len(order))
        self.dataset, self.order = dataset, order

    def items(self):
        tf = require()
        paths = [str(self.dataset.samples[i][0]) for i in self.order]
        labels = np.array([self.dataset.samples[i][1] for i in self.order], dtype=np.int64)
        items = tf.data.Dataset.from_tensor_slices({"pos": np.arange(len(paths), dtype=np.int64), "path": paths,
                                                    "label": labels})
        # Labels are the class index, in range by construction (open_dataset checked the class count).
        read = plain(lambda x: {"pos": x["pos"], "encoded": tf.io.read_file(x["path"]), "label": x["label"],
                                "problem": tf.constant(False)})
        return items.map(read)

    def sample(self, pos: int) -> Sample:
        return self.dataset[self.order[pos]]  # ImageFolder.__getitem__: "cannot read/decode image <path>: ..."


class _ShardEpoch(_Epoch):
    def __init__(self, dataset: TFRecordImages, files: list[Path], counts: dict[Path, int], offsets: dict):
        self.dataset, self.files = dataset, files
        self.starts = list(itertools.accumulate([counts[f] for f in files], initial=0))
        super().__init__(self.starts[-1])
        self.offsets = offsets  # file -> its records' byte offsets, or the UsageError that reading it raised

    def items(self):
        tf = require()
        offset, classes = self.dataset.label_offset, self.dataset.num_classes
        features = {ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
                    LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_LABEL)}

        def parse(pos, record):
            example = tf.io.parse_single_example(record, features)
            label = example[LABEL] - offset
            # Checked here, in int64: the int32 it becomes could wrap a huge label into range.
            problem = ((tf.strings.length(example[ENCODED]) == 0) | (example[LABEL] == MISSING_LABEL)
                       | (label < 0) | (label >= classes))
            return {"pos": pos, "encoded": example[ENCODED], "label": label, "problem": problem}

        # Positions from each file's own record count: a damaged shard's unread tail is a gap, not a shift.
        files = tf.data.Dataset.from_tensor_slices(([str(f) for f in self.files], np.array(self.starts[:-1], np.int64)))
        return files.flat_map(plain(lambda f, start: tf.data.TFRecordDataset(f).enumerate().map(
            plain(lambda i, record: parse(start + i, record)))))

    def sample(self, pos: int) -> Sample:
        k = bisect.bisect_right(self.starts, pos) - 1
        path, index = self.files[k], pos - self.starts[k]
        if path not in self.offsets:
            try:  # read once per shard, with its CRCs: damage is TFRecordImages' fatal message
                self.offsets[path] = [offset for offset, _ in iter_records(path)]
            except UsageError as exc:
                self.offsets[path] = exc
        if isinstance(self.offsets[path], UsageError):
            return Sample(None, -1, str(path), str(self.offsets[path]), fatal=True)
        offset = self.offsets[path][index]
        with open(path, "rb") as f:
            f.seek(offset)
            length = int.from_bytes(f.read(12)[:8], "little")
            data = f.read(length)
        return self.dataset.sample(path, offset, data)  # TFRecordImages' own checks and messages


def _track_gaps(expected, element):
    """scan: positions arrive in order after ignore_errors; a jump is the images that were dropped."""
    pos = element["pos"]
    return pos + 1, {**element, "gap_start": expected, "gap_len": pos - expected}


def pipeline(epoch: _Epoch, p: Preprocess, batch: int, seed: int, epoch_number: int, shuffle: bool):
    """tf.data.Dataset of batches {"image" uint8 NHWC, "label", "pos", "problem", "gap_start", "gap_len"}."""
    tf = require()
    AUTOTUNE = tf.data.AUTOTUNE
    epoch_seed = seed * SEED_STRIDE + epoch_number

    def load(x):
        element_seed = tf.stack([tf.constant(epoch_seed, tf.int64), x["pos"]])
        image = tf.cond(x["problem"], lambda: tf.zeros([p.crop, p.crop, 3], tf.uint8),  # reported, not decoded
                        lambda: preprocess_image(x["encoded"], p, element_seed))
        return {"image": image, "label": tf.cast(x["label"], tf.int32), "pos": x["pos"], "problem": x["problem"]}

    # deterministic=True keeps the positions in order through the parallel map, which the gap scan needs.
    data = epoch.items().map(plain(load), num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    data = data.scan(tf.constant(0, tf.int64), plain(_track_gaps))  # (a gap at the very end: RealDataSource._epoch)
    if shuffle:
        data = data.shuffle(min(SHUFFLE_BUFFER, max(epoch.positions, 1)), seed=epoch_seed)
    return data.batch(batch).prefetch(AUTOTUNE)


# ------------------------------------------------------------------------------------------------
# The real-data source
# ------------------------------------------------------------------------------------------------


class RealDataSource(DataWaits):
    """Batches of (normalised float32 NHWC images, int32 labels) from an image folder or TFRecord shards."""

    def __init__(self, data_dir: str | Path, split: str, batch_size: int, preprocess: Preprocess, train: bool | None = None,
                 seed: int = 0, label_offset: int = 1, skip_corrupt: bool = False, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, fmt: str | None = None, num_classes: int = 1000,
                 device: str | None = None):
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        self.train = preprocess.train if train is None else train  # shuffle (and by default drop_last)
        self.drop_last = self.train if drop_last is None else drop_last
        self.batch_size, self.preprocess, self.skip_corrupt, self.seed = batch_size, preprocess, skip_corrupt, seed
        self.data_dir, self.split, self.rank, self.world_size = Path(data_dir), split, rank, world_size
        self.format = fmt or detect_format(data_dir)
        self.dataset = open_dataset(data_dir, split, self.format, None, label_offset, num_classes, rank, world_size,
                                    shuffle=self.train, seed=seed)
        self.num_classes = self.dataset.num_classes
        what = f"{split} images from {data_dir}"
        if isinstance(self.dataset, ImageFolder):
            self.sampler, self.images_per_epoch = rank_share(self.dataset, rank, world_size, self.train, seed, what)
        else:
            self.counts = {f: count_records(f) for f in self.dataset.rank_files}
            self.images_per_epoch = sum(self.counts.values())
            if not self.images_per_epoch:
                rank_share(self.dataset, rank, world_size, self.train, seed, what)  # raises its "gets no images"
            self.offsets: dict = {}
        self.device = device or default_device()
        self.normalizer = Normalizer(preprocess.normalization, self.device)
        self.epoch = 0
        self.corrupt_images = 0
        self.corrupt_files: list[str] = []  # the first few, for the report
        self.data_wait_per_batch: list[float] = []

    def describe(self) -> str:
        tf = require()
        ranks = f" for rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        skip = f", skipping undecodable images ({self.corrupt_images} so far)" if self.skip_corrupt else ""
        return (f"{self.format} {self.data_dir} [{self.split}]: {self.images_per_epoch} images{ranks}, "
                f"{self.num_classes} classes, tf.data (TensorFlow {tf.__version__}, parallel map AUTOTUNE, "
                f"tf.io.decode_image), NHWC; {self.preprocess.describe()}{skip}")

    def close(self) -> None:
        """Nothing held between epochs: each epoch's iterator ends with its pass (or is dropped with it)."""

    # ---------------------------------------------------------------- iteration

    def batches(self) -> Iterator:
        """Endless (images, labels), epoch after epoch; with drop_last, batches smaller than batch_size are left out."""
        while True:
            produced = False
            for images, labels, n in self._epoch(normalise=True):
                if n == self.batch_size or not self.drop_last:
                    produced = True
                    yield images, labels
            if not produced:
                raise UsageError(f"{self.data_dir} [{self.split}] has {self.images_per_epoch} images for this rank, "
                                 f"fewer than one batch of {self.batch_size}; lower --batch-size")

    def epoch_batches(self) -> Iterator:
        """Exactly one epoch, every image once: (images, labels, n_valid), the last batch padded to the batch
        size by repeating its first image with labels -1 (evaluation.padded's convention), for fixed shapes."""
        tf = require()
        for images, labels, n in self._epoch(normalise=True):
            if n < self.batch_size:
                with tf.device(self.device):
                    images = tf.concat([images, tf.repeat(images[:1], self.batch_size - n, axis=0)], axis=0)
                    labels = tf.concat([labels, tf.fill([self.batch_size - n], tf.constant(-1, labels.dtype))], axis=0)
            yield images, labels, n

    def host_batches(self) -> Iterator:
        """One epoch of uint8 NHWC (images, labels) on the host, not normalised: the input pipeline alone."""
        for images, labels, _ in self._epoch(normalise=False):
            yield images, labels

    def _plan(self) -> _Epoch:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if isinstance(self.dataset, ImageFolder):
            self.sampler.set_epoch(epoch)
            return _FolderEpoch(self.dataset, list(self.sampler))
        files = list(self.dataset.rank_files)
        if self.train:  # TFRecordImages' shard order for one worker
            random.Random(self.seed * SEED_STRIDE + epoch).shuffle(files)
        return _ShardEpoch(self.dataset, files, self.counts, self.offsets)

    def _epoch(self, normalise: bool) -> Iterator:
        tf = require()
        number = self.epoch
        plan = self._plan()
        # A folder's order is already the epoch's permutation; shards are read in order and need mixing.
        mix = self.train and isinstance(plan, _ShardEpoch)
        iterator = iter(pipeline(plan, self.preprocess, self.batch_size, self.seed, number, mix))
        accounted = 0  # positions delivered or seen in a gap; those after the last delivered one are the rest
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                for pos in range(accounted, plan.positions):  # a gap at the end has no later image to carry it
                    self._dropped(plan.sample(pos))
                return
            except tf.errors.OpError as exc:  # none expected (ignore_errors is upstream); a traceback is not a message
                raise UsageError(f"TensorFlow's input pipeline failed on {self.data_dir} [{self.split}]: "
                                 f"{one_line(exc)}") from None
            accounted += self._check(plan, batch)
            images = self.normalizer(batch["image"]) if normalise else batch["image"]
            self.data_wait_per_batch.append(time.perf_counter() - start)
            yield images, batch["label"], int(batch["label"].shape[0])

    def _check(self, plan: _Epoch, batch: dict) -> int:
        """Stop on what stops the PyTorch source; count (or refuse) the images TensorFlow dropped.
        Returns how many positions the batch accounts for (its images and the gaps they carry)."""
        for pos in batch["pos"].numpy()[batch["problem"].numpy()]:  # no image, no label, or one out of range
            sample = plan.sample(int(pos))
            raise UsageError(sample.error or f"{sample.where}: not an image with a label in 0..{self.num_classes - 1}")
        gaps = batch["gap_len"].numpy()
        for start, length in zip(batch["gap_start"].numpy()[gaps > 0], gaps[gaps > 0]):
            for pos in range(int(start), int(start + length)):
                self._dropped(plan.sample(pos))
        return int(batch["pos"].shape[0]) + int(gaps.sum())

    def _dropped(self, sample: Sample) -> None:
        error = sample.error or f"TensorFlow cannot decode image {sample.where} (torchvision can)"
        if sample.fatal:
            raise UsageError(error)
        if not self.skip_corrupt:
            raise UsageError(f"{error}; pass --skip-corrupt to skip undecodable images")
        self.corrupt_images += 1
        if len(self.corrupt_files) < 10:
            self.corrupt_files.append(sample.where)
