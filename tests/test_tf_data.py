"""The TensorFlow backend's input (cnnbench.backends.tensorflow.data) against the PyTorch pipeline it mirrors."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.core.config import DataConfig
from cnnbench.data import codec
from cnnbench.data.loader import RealDataSource as TorchSource
from cnnbench.data.normalization import NORMALIZATIONS
from cnnbench.data.preprocess import Preprocess, preprocess_for
from cnnbench.data.sample import image_example, write_sample_dataset
from cnnbench.data.synthetic import SyntheticSource as TorchSynthetic
from cnnbench.data.tfrecord import encode_example, write_examples, write_records
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import resolve_entry
from cnnbench.backends.tensorflow import require
from cnnbench.backends.tensorflow.data import Normalizer, RealDataSource, SyntheticSource, open_source

# Through require(): torchvision (and the Triton it loads) before TensorFlow, as the other order segfaults.
tf = require()

CROP = 32
SKIP_HINT = "; pass --skip-corrupt to skip undecodable images"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The digits at 40 px, 4 per class and split: a PNG folder and JPEG TFRecord shards (4 train, 3 validation),
    and a folder of non-square noisy PNGs (the resize's aspect arithmetic, and a kernel's worst case)."""
    root = tmp_path_factory.mktemp("tfdata")
    write_sample_dataset(root / "folder", image_size=40, max_per_class=4)
    write_sample_dataset(root / "tfrecord", tfrecord=True, image_size=40, max_per_class=4, validation_shards=3)
    generator = torch.Generator().manual_seed(0)
    for k, (h, w) in enumerate([(48, 80), (80, 48), (61, 97), (37, 50)]):
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=generator),
                                                 size=(h, w), mode="bilinear")
        image = (127.5 * smooth + 127.5 * torch.rand(1, 3, h, w, generator=generator)).round().to(torch.uint8)[0]
        for cls in ("a", "b"):
            path = root / "noise" / "val" / cls / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(codec.encode_png(image if cls == "a" else image.flip(2)))
    return {"folder": root / "folder", "tfrecord": root / "tfrecord", "noise": root / "noise"}


def _torch_epoch(source: TorchSource) -> tuple[np.ndarray, list[int]]:
    """One PyTorch epoch as NHWC float32 and labels."""
    batches = list(source.epoch_batches())
    return (torch.cat([b for b, _ in batches]).permute(0, 2, 3, 1).numpy(),
            torch.cat([l for _, l in batches]).tolist())


def _tf_epoch(source: RealDataSource) -> tuple[np.ndarray, list[int]]:
    """One TensorFlow epoch, the padding of the last batch left out."""
    batches = list(source.epoch_batches())
    return (np.concatenate([b.numpy()[:n] for b, _, n in batches]),
            [label for _, l, n in batches for label in l.numpy()[:n].tolist()])


def _grey_level(normalization: str) -> float:
    """One step of a uint8 pixel in normalised units, the largest over the channels."""
    normalize = Normalizer(normalization, "/CPU:0")
    ones, zeros = np.ones((1, 1, 1, 3), np.uint8), np.zeros((1, 1, 1, 3), np.uint8)
    return float(np.max(np.abs(normalize(ones).numpy() - normalize(zeros).numpy())))


# ---------------------------------------------------------------- real data against PyTorch


@pytest.mark.parametrize("fmt", ["folder", "tfrecord"])
def test_evaluation_batches_have_pytorchs_labels_in_its_order_nhwc_and_padded(data, fmt):
    preprocess = preprocess_for("resnet50", "imagenet", CROP)
    source = RealDataSource(data[fmt], "val", 16, preprocess)
    reference = TorchSource(data[fmt], "val", 16, preprocess, "cpu", workers=0)
    assert (source.images_per_epoch, source.num_classes, source.format) == (40, reference.num_classes, fmt)
    batches = list(source.epoch_batches())
    assert [n for _, _, n in batches] == [16, 16, 8]
    for images, labels, _ in batches:
        assert images.shape == (16, CROP, CROP, 3) and images.dtype == tf.float32 and labels.dtype == tf.int32
    last_images, last_labels, n = batches[-1]  # padded as evaluation.padded: the first image again, labels -1
    assert last_labels.numpy()[n:].tolist() == [-1] * 8
    assert all(np.array_equal(last_images[i].numpy(), last_images[0].numpy()) for i in range(n, 16))
    assert _tf_epoch(source)[1] == _torch_epoch(reference)[1]  # the same images in the same order
    assert source.epoch == 2 and source.corrupt_images == 0


@pytest.mark.parametrize("dataset", ["folder", "tfrecord", "noise"])
@pytest.mark.parametrize("preset, model", [("torchvision", "resnet50"), ("torchvision-v2", "resnet50"),
                                           ("aimatrix", "resnet50"), ("aimatrix", "densenet121")])
def test_evaluation_preprocessing_agrees_with_pytorch_within_one_grey_level(data, dataset, preset, model):
    """Measured on these images (PNG and JPEG, square and not): the two pipelines differ by at most one grey
    level, in 12-17% of the values, mean 0.12-0.16 grey levels (0.002-0.003 in ImageNet-normalised units).
    Decoding is identical (JPEG with the accurate IDCT, PNG lossless) and the sizes and crop offsets agree, so
    what is left is the rounding of the two antialiased bilinear kernels; a size or offset one pixel off, the
    fast IDCT or a resize without antialias each fail it."""
    preprocess = preprocess_for(model, "imagenet", CROP, preset)  # aimatrix: raw 0..255, or DenseNet's scaling
    ours, labels = _tf_epoch(RealDataSource(data[dataset], "val", 16, preprocess))
    theirs, torch_labels = _torch_epoch(TorchSource(data[dataset], "val", 16, preprocess, "cpu", workers=0))
    level = _grey_level(preprocess.normalization)
    difference = np.abs(ours - theirs) / level  # in grey levels
    assert labels == torch_labels and ours.shape == theirs.shape
    assert difference.max() <= 1.0 + 1e-3, difference.max()
    assert difference.mean() <= 0.25, difference.mean()


def test_host_batches_are_uint8_nhwc_and_normalise_to_the_batches(data):
    preprocess = preprocess_for("resnet50", "imagenet", CROP)
    source = RealDataSource(data["folder"], "val", 16, preprocess)
    host = np.concatenate([images.numpy() for images, _ in source.host_batches()])
    assert host.dtype == np.uint8 and host.shape == (40, CROP, CROP, 3)
    normalised, _ = _tf_epoch(source)
    np.testing.assert_array_equal(Normalizer("imagenet", "/CPU:0")(host).numpy(), normalised)


def test_data_wait_is_measured_per_batch_and_can_be_reset(data):
    source = RealDataSource(data["tfrecord"], "val", 8, preprocess_for("resnet50", "imagenet", CROP))
    assert len(list(source.epoch_batches())) == 5
    assert len(source.data_wait_per_batch) == 5 and all(w > 0 for w in source.data_wait_per_batch)
    assert source.data_wait_seconds == pytest.approx(sum(source.data_wait_per_batch))
    source.reset_data_wait()
    assert source.data_wait_seconds == 0


def test_too_few_images_for_one_training_batch_is_a_usage_error(data):
    source = RealDataSource(data["folder"], "val", 64, preprocess_for("resnet50", "imagenet", CROP, train=True))
    with pytest.raises(UsageError, match="fewer than one batch of 64; lower --batch-size"):
        next(source.batches())


def test_a_bad_folder_gets_the_pytorch_message(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.png").write_bytes(codec.encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8)))
    with pytest.raises(UsageError, match=r"has no val/ or validation/ folder for the val split"):
        RealDataSource(tmp_path, "val", 4, preprocess_for("resnet50", "imagenet", CROP))


# ---------------------------------------------------------------- training


def _train_source(root: Path, seed: int = 0, **augmentation):
    return open_source(DataConfig(data_dir=str(root), **augmentation), resolve_entry("resnet50"), 40, CROP,
                       seed=seed, train=True)


def _digests(images: np.ndarray) -> list[str]:
    return sorted(hashlib.sha256(image.tobytes()).hexdigest() for image in images)


def test_training_crops_and_flips_differ_each_epoch_and_are_seeded(data):
    source = _train_source(data["folder"])
    stream = source.batches()  # 40 images, batch 40: one batch per epoch
    (first, first_labels), (second, second_labels) = next(stream), next(stream)
    assert first.shape == second.shape == (40, CROP, CROP, 3) and first.dtype == tf.float32
    assert sorted(first_labels.numpy()) == sorted(second_labels.numpy())  # the same images...
    assert first_labels.numpy().tolist() != second_labels.numpy().tolist()  # ...in a new order
    assert not set(_digests(first.numpy())) & set(_digests(second.numpy()))  # ...each cropped anew
    again = next(_train_source(data["folder"]).batches())[0].numpy()
    other = next(_train_source(data["folder"], seed=1).batches())[0].numpy()
    np.testing.assert_array_equal(again, first.numpy())  # the same seed: the same crops
    assert not np.array_equal(other, first.numpy())


def test_whole_image_training_crops_are_the_resized_image_in_pytorchs_order(data):
    """min_crop_scale 1 on square images leaves RandomResizedCrop one choice, the whole image: with flip 0 only
    the order changes between epochs, and images and order agree with PyTorch's (within one grey level)."""
    source = _train_source(data["folder"], min_crop_scale=1.0, flip=0.0)
    stream = source.batches()
    (first, labels), (second, _) = next(stream), next(stream)
    assert _digests(first.numpy()) == _digests(second.numpy())
    preprocess = preprocess_for("resnet50", "imagenet", CROP, train=True, min_crop_scale=1.0, flip=0.0)
    reference = TorchSource(data["folder"], "train", 40, preprocess, "cpu", workers=0, seed=0)
    theirs, their_labels = next(reference.batches())
    assert labels.numpy().tolist() == their_labels.tolist()  # RankSampler's permutation for epoch 0
    difference = np.abs(first.numpy() - theirs.permute(0, 2, 3, 1).numpy()) / _grey_level("imagenet")
    assert difference.max() <= 1.0 + 1e-3 and difference.mean() <= 0.25
    flipped = next(_train_source(data["folder"], min_crop_scale=1.0, flip=1.0).batches())[0].numpy()
    np.testing.assert_array_equal(flipped, first.numpy()[:, :, ::-1, :])


def test_tfrecord_training_shuffles_across_shards_and_keeps_every_image(data):
    source = _train_source(data["tfrecord"])
    labels = [next(source.batches())[1].numpy().tolist() for _ in range(2)]
    assert sorted(labels[0]) == sorted(labels[1]) == sorted(list(range(10)) * 4)
    assert labels[0] != labels[1]


def test_the_crop_follows_the_preset_not_the_source_size(data):
    """A 97x61 image, random crops of any area and ratio: always crop x crop."""
    preprocess = Preprocess(crop=24, train=True, scale=(0.08, 1.0), flip=0.5)
    source = RealDataSource(data["noise"], "val", 8, preprocess, train=True)
    assert {tuple(images.shape) for images, _ in itertools.islice(source.batches(), 3)} == {(8, 24, 24, 3)}


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_synthetic_batch_is_pytorchs_in_nhwc(normalization):
    ours = SyntheticSource(64, 20, normalization, num_classes=10, seed=3)
    theirs = TorchSynthetic(64, 20, normalization, torch.device("cpu"), num_classes=10, seed=3)
    images, labels = next(ours.batches())
    assert images.shape == (64, 20, 20, 3) and images.dtype == tf.float32 and labels.dtype == tf.int32
    np.testing.assert_array_equal(images.numpy(), theirs.images.permute(0, 2, 3, 1).numpy())
    assert labels.numpy().tolist() == theirs.labels.tolist()
    assert 0 <= labels.numpy().min() and labels.numpy().max() < 10 and len(set(labels.numpy())) > 1


def test_synthetic_source_is_seeded_and_reused():
    entry = resolve_entry("resnet50")
    source = open_source(DataConfig(), entry, 8, 16, seed=0, train=True)
    stream = source.batches()
    first, second = next(stream), next(stream)
    assert first[0] is second[0] and first[1] is second[1]  # made once
    assert source.images_per_epoch == 1_281_167 and "synthetic (8 random images of 16x16" in source.describe()
    np.testing.assert_array_equal(open_source(DataConfig(), entry, 8, 16, seed=0, train=True).images.numpy(),
                                  first[0].numpy())
    assert not np.array_equal(open_source(DataConfig(), entry, 8, 16, seed=1, train=True).images.numpy(),
                              first[0].numpy())


# ---------------------------------------------------------------- ranks


def _image_digests(source: RealDataSource) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest() for images, _ in source.host_batches() for image in images.numpy()]


@pytest.mark.parametrize("fmt", ["folder", "tfrecord"])
def test_two_ranks_see_disjoint_images_that_cover_the_split(data, fmt):
    preprocess = preprocess_for("resnet50", "imagenet", CROP)
    everything = _image_digests(RealDataSource(data[fmt], "val", 8, preprocess))
    assert len(set(everything)) == 40
    ranks = [RealDataSource(data[fmt], "val", 8, preprocess, rank=r, world_size=2) for r in range(2)]
    seen = [_image_digests(source) for source in ranks]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == sorted(everything)
    for rank, source in enumerate(ranks):  # PyTorch's share: every other image, or every other shard
        reference = TorchSource(data[fmt], "val", 8, preprocess, "cpu", workers=0, rank=rank, world_size=2)
        assert source.images_per_epoch == reference.images_per_epoch == len(seen[rank]) > 0
        assert _tf_epoch(source)[1] == _torch_epoch(reference)[1]


# ---------------------------------------------------------------- corrupt input


@pytest.fixture
def broken_folder(tmp_path) -> Path:
    for k in range(3):
        path = tmp_path / "train" / "cat" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(codec.encode_png(torch.full((3, 8, 8), 50 * k, dtype=torch.uint8)))
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # the last image
    return tmp_path


def test_an_undecodable_image_stops_the_run_with_pytorchs_one_line(broken_folder):
    source = RealDataSource(broken_folder, "train", 4, preprocess_for("resnet50", "imagenet", 8), train=False)
    with pytest.raises(UsageError) as info:
        list(source.epoch_batches())
    message = str(info.value)
    assert message.startswith(f"cannot decode image {broken_folder / 'train' / 'cat' / 'broken.jpg'}: ")
    assert message.endswith(SKIP_HINT) and "\n" not in message


def test_an_undecodable_image_is_skipped_and_counted_with_skip_corrupt(broken_folder):
    source = RealDataSource(broken_folder, "train", 4, preprocess_for("resnet50", "imagenet", 8), train=False,
                            skip_corrupt=True)
    assert [n for _, _, n in source.epoch_batches()] == [3]
    assert source.corrupt_images == 1 and source.corrupt_files == [str(broken_folder / "train" / "cat" / "broken.jpg")]
    assert "skipping undecodable images (1 so far)" in source.describe()


def _shards_with_a_broken_record(root: Path) -> Path:
    jpeg = codec.encode_jpeg(torch.full((3, 12, 12), 90, dtype=torch.uint8))
    examples = [image_example(jpeg, 12, 12, k % 3, str(k % 3), f"{k}.jpg") for k in range(6)]
    examples[2]["image/encoded"] = b"\xff\xd8 not really a jpeg"
    write_examples(root / "train-00000-of-00002", examples)
    write_examples(root / "train-00001-of-00002", [examples[k] for k in (0, 1, 3, 4)])
    return root / "train-00000-of-00002"


def test_a_broken_tfrecord_image_is_named_by_shard_and_offset_or_skipped(tmp_path):
    shard = _shards_with_a_broken_record(tmp_path)
    preprocess = preprocess_for("resnet50", "imagenet", 8, train=True)
    with pytest.raises(UsageError, match=rf"^cannot decode image {shard} at byte offset \d+: .*{SKIP_HINT}$"):
        list(RealDataSource(tmp_path, "train", 4, preprocess, drop_last=False).epoch_batches())
    source = RealDataSource(tmp_path, "train", 4, preprocess, skip_corrupt=True)  # shuffled: the gap crosses the buffer
    for epoch in (1, 2):
        batches = list(source.epoch_batches())
        assert [n for _, _, n in batches] == [4, 4, 1]  # 10 records, 9 good
        assert sorted(l for _, labels, n in batches for l in labels.numpy()[:n]) == [0, 0, 0, 0, 1, 1, 1, 1, 2]
        assert source.corrupt_images == epoch
    assert source.corrupt_files[0] == source.corrupt_files[1] and source.corrupt_files[0].startswith(f"{shard} at byte offset ")


def test_damaged_shards_and_bad_labels_stop_the_run_even_with_skip_corrupt(tmp_path):
    shard = _shards_with_a_broken_record(tmp_path)
    preprocess = preprocess_for("resnet50", "imagenet", 8)
    source = RealDataSource(tmp_path, "train", 4, preprocess, skip_corrupt=True, label_offset=0, num_classes=2)
    with pytest.raises(UsageError, match=r"label 2 at byte offset \d+ is outside 0..1 after subtracting the label offset 0"):
        list(source.epoch_batches())
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    source = RealDataSource(tmp_path, "train", 4, preprocess, skip_corrupt=True)
    with pytest.raises(UsageError, match=rf"^{shard}: corrupt TFRecord at byte offset \d+ \((data|length) CRC mismatch\)"):
        list(source.epoch_batches())


@pytest.mark.parametrize("record, message", [
    ({"image/class/label": [1]}, "lacks image/encoded or image/class/label; the shards must follow"),
    (b"\xff\xfe\x07garbage", "is not a tf.train.Example"),
])
def test_records_outside_the_schema_stop_the_run_even_with_skip_corrupt(tmp_path, record, message):
    good = encode_example({"image/encoded": codec.encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)),
                           "image/class/label": [1]})
    shard = tmp_path / "validation-00000-of-00001"
    write_records(shard, [good, record if isinstance(record, bytes) else encode_example(record), good])
    source = RealDataSource(tmp_path, "val", 2, preprocess_for("resnet50", "imagenet", 8), skip_corrupt=True)
    with pytest.raises(UsageError, match=rf"^{shard}: record at byte offset \d+ {message}"):
        list(source.epoch_batches())


# ---------------------------------------------------------------- packaging


def test_cnnbench_imports_the_module_without_tensorflow():
    code = ("import sys, cnnbench.backends.tensorflow.data; "
            "assert 'tensorflow' not in sys.modules, 'imported tensorflow'")
    subprocess.run([sys.executable, "-c", code], check=True)
