"""Image folders, per-model preprocessing, the real-data source, the sample dataset and `cnnbench data`."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.data import codec, normalization
from cnnbench.data.bench import bench_pipeline
from cnnbench.data.commands import add_data_commands, parse_workers
from cnnbench.data.folder import ImageFolder
from cnnbench.data.loader import RealDataSource, detect_format, open_dataset
from cnnbench.data.sample import write_sample_dataset
from cnnbench.data.sources import open_source
from cnnbench.data.preprocess import Preprocess, normalize_preset, preprocess_for
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import resolve_entry
from conftest import TINY_SPEC


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """10 classes x 4 training and 4 validation PNGs of 16x16."""
    root = tmp_path_factory.mktemp("digits") / "folder"
    write_sample_dataset(root, image_size=16, max_per_class=4)
    return root


def _png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(codec.encode_png(image))


# ---------------------------------------------------------------- layouts


def test_detect_format(digits, tmp_path):
    assert detect_format(digits) == "folder"
    (tmp_path / "validation-00000-of-00001").write_bytes(b"")
    assert detect_format(tmp_path) == "tfrecord"


def test_missing_and_empty_dirs_say_which_layouts_are_accepted(tmp_path):
    layouts = ("train/<class>/*.jpg and val/<class>/*.jpg (val/ may be validation/; PNG too), "
               "or TFRecord shards named train-00000-of-01024 and validation-00000-of-00128")
    with pytest.raises(UsageError) as info:
        detect_format(tmp_path / "nope")
    assert str(info.value) == f"--data-dir {tmp_path / 'nope'} does not exist; give a directory holding {layouts}"
    with pytest.raises(UsageError) as info:
        detect_format(tmp_path)
    assert str(info.value) == f"--data-dir {tmp_path} is empty; put {layouts} in it"


def test_dir_with_neither_layout_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "train").mkdir()  # a train/ without class folders is not an image folder
    with pytest.raises(UsageError, match=r"holds neither accepted layout; expected train/<class>/\*\.jpg .* TFRecord shards"):
        detect_format(tmp_path)


def test_folder_classes_are_sorted_and_validation_alias_is_found(tmp_path):
    for split in ("train", "validation"):
        for name in ("zebra", "ant", "moth"):
            _png(tmp_path / split / name / "a.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
    dataset = ImageFolder(tmp_path, "val")
    assert dataset.classes == ["ant", "moth", "zebra"]
    assert [(p.parent.name, label) for p, label in dataset.samples] == [("ant", 0), ("moth", 1), ("zebra", 2)]
    with pytest.raises(UsageError, match="has 3 class folders but the model has 2 outputs"):
        open_dataset(tmp_path, "train", num_classes=2)


# ---------------------------------------------------------------- image codecs


def _test_images() -> dict[str, bytes]:
    """JPEG and PNG, RGB, grey and CMYK (some ImageNet JPEGs are), odd sizes (chroma subsampling edges)."""
    from PIL import Image  # torchvision's own dependency; neither codec writes CMYK

    rgb = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(rgb[None].float(), size=(64, 48), mode="bilinear")[0].to(torch.uint8)
    cmyk = io.BytesIO()
    Image.fromarray(rgb.permute(1, 2, 0).numpy()).convert("CMYK").save(cmyk, "JPEG", quality=95)
    return {"rgb.jpg": codec.encode_jpeg(rgb, quality=90), "smooth.jpg": codec.encode_jpeg(smooth),
            "grey.jpg": codec.encode_jpeg(rgb[:1]), "cmyk.jpg": cmyk.getvalue(),
            "rgb.png": codec.encode_png(rgb), "grey.png": codec.encode_png(rgb[:1])}


@pytest.mark.parametrize("name", sorted(_test_images()))
def test_torchcodec_and_torchvision_decode_identical_pixels(name):
    if codec.torchcodec_problem():  # not installed (the GPU machines' images), or built for another torch
        pytest.skip(codec.torchcodec_problem())
    data = _test_images()[name]
    theirs = codec.decode_with_torchvision(data)
    ours = codec.decode_with_torchcodec(data)
    assert ours.dtype == torch.uint8 and ours.shape[0] == 3 and torch.equal(ours, theirs)


def test_decoder_is_torchcodec_when_it_loads_and_named_in_the_description(digits):
    expected = codec.TORCHVISION if codec.torchcodec_problem() else codec.TORCHCODEC
    assert codec.backend() == expected and codec.describe().startswith(expected)
    source = RealDataSource(digits, "val", 8, preprocess_for("resnet50", "imagenet", 16), "cpu", workers=0)
    assert f"0 loader workers decoding with {codec.describe()}; " in source.describe()


def test_torchvision_fallback_keeps_its_deprecation_warning_to_itself(monkeypatch):
    monkeypatch.setattr(codec, "backend", lambda: codec.TORCHVISION)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png, jpeg = codec.encode_png(image), codec.encode_jpeg(image)
        assert torch.equal(codec.decode_rgb(png, "x.png")[0], image)
        assert codec.decode_rgb(jpeg, "x.jpg")[0].shape == (3, 8, 8)
        assert codec.decode_rgb(b"\xff\xd8 not really a jpeg", "x.jpg")[1].startswith("cannot decode image x.jpg: ")
    assert [str(w.message) for w in caught] == []
    # and no process-wide filter hides it from other callers (pytest's configured filters included)
    assert not any(message and "TorchVision are deprecated" in message.pattern for _, message, *_ in warnings.filters)


# ---------------------------------------------------------------- preprocessing


def test_torchvision_preset_sizes():
    assert (preprocess_for("resnet50", "imagenet", 224).resize, preprocess_for("resnet50", "imagenet", 224).crop) == (256, 224)
    assert preprocess_for("resnet50", "imagenet", 299).resize == 342  # round(299 * 256 / 224)
    assert preprocess_for("resnet50", "imagenet", 224, preset="torchvision-v2").resize == 232
    assert preprocess_for("resnet50", "imagenet", 224, resize_size=232).resize == 232
    p = preprocess_for("synNet", "minus_one_to_one", 224)
    assert (p.normalization, p.keep_aspect) == ("minus_one_to_one", True)
    assert p.describe() == "torchvision: resize shorter side 256, centre crop 224, normalise minus_one_to_one on the device"
    with pytest.raises(UsageError, match="unknown preprocessing preset 'caffe'; known: torchvision, torchvision-v2, aimatrix"):
        preprocess_for("resnet50", "imagenet", 224, preset="caffe")


def test_centre_crop_takes_the_middle_when_no_resize_is_needed():
    # 256 x 300: the shorter side is already 256, so only the crop acts: rows 16..239, cols 38..261.
    rows, cols = np.meshgrid(np.arange(256), np.arange(300), indexing="ij")
    image = np.stack([rows % 256, cols % 256, (rows + cols) % 256]).astype(np.uint8)
    out = preprocess_for("resnet50", "imagenet", 224)(torch.from_numpy(image))
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 224, 224)
    assert np.array_equal(out.numpy(), image[:, 16:240, 38:262])


def test_resize_keeps_aspect_for_torchvision_but_not_for_aimatrix():
    # 100 x 400, left quarter dark (10), the rest bright (200).
    image = torch.full((3, 100, 400), 200, dtype=torch.uint8)
    image[:, :, :100] = 10
    # torchvision: 100x400 -> 256x1024, crop columns 400..623 of 1024 = original 156..244: all bright.
    kept = preprocess_for("resnet50", "imagenet", 224)(image)
    assert tuple(kept.shape) == (3, 224, 224) and (kept == 200).all()
    # aimatrix: 100x400 -> 256x256 (dark edge at column 64), crop from column 16: dark edge at 48.
    squashed = preprocess_for("resnet50", "imagenet", 224, preset="aimatrix")(image)
    assert tuple(squashed.shape) == (3, 224, 224)
    assert (squashed[:, :, :46] == 10).all() and (squashed[:, :, 50:] == 200).all()


RGB = (10, 128, 250)


def _constant(h: int, w: int) -> torch.Tensor:
    return torch.tensor(RGB, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()


@pytest.mark.parametrize("model, normalization, preset, expected", [
    # torchvision weights: (x / 255 - mean) / std with the ImageNet mean/std
    ("resnet50", "imagenet", None, [(10 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (250 / 255 - 0.406) / 0.225]),
    # synNet: x / 127.5 - 1
    ("synNet", "minus_one_to_one", None, [10 / 127.5 - 1, 128 / 127.5 - 1, 250 / 127.5 - 1]),
    # AI Matrix: GoogLeNet and the ResNets see raw 0..255
    ("googlenet", "imagenet", "aimatrix", [10.0, 128.0, 250.0]),
    ("resnet152", "imagenet", "aimatrix", [10.0, 128.0, 250.0]),
    # AI Matrix DenseNet-121: (x - (123.68, 116.78, 103.94)) * 0.017
    ("densenet121", "imagenet", "aimatrix", [-1.93256, 0.19074, 2.48302]),
])
def test_per_model_normalised_values(model, normalization, preset, expected):
    preprocess = preprocess_for(model, normalization, 32, preset=preset)
    crops = torch.stack([preprocess(_constant(40, 50)), preprocess(_constant(37, 37))])
    assert tuple(crops.shape) == (2, 3, 32, 32) and (crops == torch.tensor(RGB).view(1, 3, 1, 1)).all()
    out = normalize_preset(crops, preprocess)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(np.array(expected, np.float32).reshape(1, 3, 1, 1), out.shape), rtol=1e-5, atol=1e-5)


def test_aimatrix_table():
    for model in ("googlenet", "resnet50", "resnet152"):
        p = preprocess_for(model, "imagenet", 224, preset="aimatrix")
        assert (p.resize, p.crop, p.keep_aspect, p.normalization) == (256, 224, False, "aimatrix_raw")
    p = preprocess_for("densenet121", "imagenet", 224, preset="aimatrix")
    assert p.normalization == "aimatrix_densenet"
    assert p.describe() == "aimatrix: resize 256x256, centre crop 224, normalise aimatrix_densenet on the device"
    assert preprocess_for("synNet", "minus_one_to_one", 224, preset="aimatrix").normalization == "minus_one_to_one"


def test_training_transform_is_random_resized_crop_and_flip():
    preprocess = preprocess_for("resnet50", "imagenet", 24, train=True)
    assert (preprocess.resize, preprocess.scale, preprocess.flip) == (None, (0.08, 1.0), 0.5)
    image = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 60)
    torch.manual_seed(0)
    a = [preprocess(image) for _ in range(4)]
    torch.manual_seed(0)
    b = [preprocess(image) for _ in range(4)]
    assert all(x.shape == (3, 24, 24) and x.dtype == torch.uint8 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # seeded: reproducible
    assert not torch.equal(a[0], a[1])  # but a different crop each call
    # The whole image kept (scale 1, ratio 1.5 = its own): the only freedom left is the flip.
    whole = Preprocess(crop=24, train=True, scale=(1.0, 1.0), ratio=(1.5, 1.5), flip=1.0)
    import torchvision.transforms.v2.functional as F
    assert torch.equal(whole(image), F.horizontal_flip(F.resize(image, [24, 24], antialias=True)))


# ---------------------------------------------------------------- the source


def test_source_batches_are_the_preprocessed_files_in_order(digits):
    preprocess = preprocess_for("resnet50", "imagenet", 16)
    source = RealDataSource(digits, "val", 16, preprocess, "cpu", workers=0)
    assert (source.images_per_epoch, source.num_classes, source.format) == (40, 10, "folder")
    batches = list(source.epoch_batches())
    assert [len(labels) for _, labels in batches] == [16, 16, 8]  # the last partial batch is kept
    files = sorted((digits / "val").glob("*/*.png"))
    images = torch.cat([b for b, _ in batches])
    labels = torch.cat([l for _, l in batches]).tolist()
    assert labels == [int(p.parent.name) for p in files]
    expected = normalize_preset(torch.stack([preprocess(codec.decode_rgb(p.read_bytes(), str(p))[0]) for p in files]), preprocess)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_endless_batches_drop_partial_batches_and_reshuffle(digits):
    preprocess = preprocess_for("resnet50", "imagenet", 16, train=True)
    source = RealDataSource(digits, "train", 16, preprocess, "cpu", workers=0, seed=1)
    stream = source.batches()
    epoch_labels = [[next(stream)[1] for _ in range(2)] for _ in range(2)]  # 40 images: 2 full batches per epoch
    assert all(len(labels) == 16 for epoch in epoch_labels for labels in epoch)
    first, second = (torch.cat(e).tolist() for e in epoch_labels)
    assert first != second  # a new order each epoch
    assert source.epoch == 2


def test_data_wait_is_reported_per_batch(digits):
    source = RealDataSource(digits, "train", 8, preprocess_for("resnet50", "imagenet", 16), "cpu", workers=0, train=False)
    start = time.perf_counter()
    steps = 0
    for images, _ in source.epoch_batches():
        images.sum()  # the "step"
        steps += 1
    total = time.perf_counter() - start
    assert len(source.data_wait_per_batch) == steps == 5
    assert all(w > 0 for w in source.data_wait_per_batch)
    assert 0 < source.data_wait_seconds <= total
    assert source.data_wait_seconds == pytest.approx(sum(source.data_wait_per_batch))
    source.reset_data_wait()
    assert source.data_wait_seconds == 0 and source.data_wait_per_batch == []



class _CountingTorch:
    """torch, as seen by normalization.py, counting the tensors it makes from Python numbers."""

    def __init__(self):
        self.made = []

    def tensor(self, data, *args, **kwargs):
        self.made.append(tuple(data))
        return torch.tensor(data, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(torch, name)


def test_normalisation_constants_are_made_once_per_source(digits, monkeypatch):
    # On CUDA each such tensor is a blocking host-to-device copy; the source made two per batch (issue 10).
    spy = _CountingTorch()
    monkeypatch.setattr(normalization, "torch", spy)
    preprocess = preprocess_for("resnet50", "imagenet", 16)
    source = RealDataSource(digits, "val", 8, preprocess, "cpu", workers=0)
    batches = list(source.epoch_batches()) + list(source.epoch_batches())
    assert len(batches) == 10
    assert spy.made == [normalization.IMAGENET_MEAN, normalization.IMAGENET_STD]


class _FakeSideStream:
    """Stands in for the loader's CUDA side stream on the CPU: logs each batch's event and what the
    consumer waits for, in order."""

    def __init__(self):
        self.log, self.handed, self.queued, self.inside = [], [], 0, False

    @contextlib.contextmanager
    def queue(self):
        self.inside = True
        yield
        self.inside = False

    def mark(self):
        assert self.inside  # recorded on the side stream, after the batch's copy and normalisation
        self.log.append(("mark", self.queued))
        self.queued += 1
        return self.queued - 1

    def hand_over(self, ready, tensors):
        self.log.append(("wait", ready))
        self.handed.append(tensors)


def test_each_step_waits_for_its_own_batch_while_the_next_one_is_copied(digits):
    preprocess = preprocess_for("resnet50", "imagenet", 16)
    plain = list(RealDataSource(digits, "val", 8, preprocess, "cpu", workers=0).epoch_batches())
    source = RealDataSource(digits, "val", 8, preprocess, "cpu", workers=0)
    fake = source.side_stream = _FakeSideStream()
    for k, (images, labels) in enumerate(source.epoch_batches()):
        assert fake.log[-1] == ("wait", k)  # batch k's event, not the one of batch k + 1 queued behind it
        assert fake.handed[-1][0] is images and fake.handed[-1][1] is labels
        if k + 1 < len(plain):  # the next batch was queued before the step waits: its copy overlaps the step
            assert fake.log.index(("mark", k + 1)) < fake.log.index(("wait", k))
        torch.testing.assert_close(images, plain[k][0], rtol=0, atol=0)
        assert torch.equal(labels, plain[k][1])
    assert [entry for entry in fake.log if entry[0] == "wait"] == [("wait", k) for k in range(len(plain))] and len(plain) == 5

@pytest.fixture
def with_broken_image(tmp_path) -> Path:
    for k in range(3):
        _png(tmp_path / "train" / "cat" / f"{k}.png", torch.full((3, 8, 8), 50 * k, dtype=torch.uint8))
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return tmp_path


def test_undecodable_image_stops_the_run_without_skip_corrupt(with_broken_image):
    source = RealDataSource(with_broken_image, "train", 4, preprocess_for("resnet50", "imagenet", 8), "cpu", workers=0, train=False)
    with pytest.raises(UsageError) as info:
        list(source.epoch_batches())
    message = str(info.value)
    assert message.startswith(f"cannot decode image {with_broken_image / 'train' / 'cat' / 'broken.jpg'}: ")
    assert message.endswith("; pass --skip-corrupt to skip undecodable images") and "\n" not in message


def test_undecodable_image_is_counted_and_skipped_with_skip_corrupt(with_broken_image):
    source = RealDataSource(with_broken_image, "train", 4, preprocess_for("resnet50", "imagenet", 8), "cpu",
                            workers=0, train=False, skip_corrupt=True)
    batches = list(source.epoch_batches())
    assert [len(labels) for _, labels in batches] == [3]
    assert source.corrupt_images == 1 and source.corrupt_files == [str(with_broken_image / "train" / "cat" / "broken.jpg")]
    assert "skipping undecodable images (1 so far)" in source.describe()


def test_too_few_images_for_one_batch_is_a_usage_error(digits):
    source = RealDataSource(digits, "val", 64, preprocess_for("resnet50", "imagenet", 16, train=True), "cpu", workers=0)
    with pytest.raises(UsageError, match="fewer than one batch of 64; lower --batch-size"):
        next(source.batches())


def test_folder_ranks_partition_the_images(digits):
    preprocess = preprocess_for("resnet50", "imagenet", 16)
    seen = []
    for rank in range(3):
        source = RealDataSource(digits, "val", 8, preprocess, "cpu", workers=0, rank=rank, world_size=3)
        seen.append(sum(len(l) for _, l in source.epoch_batches()))
        assert source.images_per_epoch == seen[-1]
    assert seen == [14, 13, 13]  # 40 images, each on exactly one rank


# ---------------------------------------------------------------- synthetic input


@pytest.mark.parametrize("train", [True, False])
def test_synthetic_labels_stay_below_the_models_class_count(tmp_path, train):
    # A spec network with 10 outputs: labels drawn from 0..999 crash the loss ("Target 884 is out of bounds").
    from cnnbench.core.config import DataConfig

    spec = tmp_path / "ten.json"
    spec.write_text(json.dumps({**TINY_SPEC, "head": {"fully_connected": {"outputs": 10}}}))
    entry = resolve_entry(str(spec))
    assert entry.num_classes == 10
    source = open_source(DataConfig(), entry, 256, 16, torch.device("cpu"), torch.contiguous_format, seed=0, train=train)
    images, labels = next(source.batches())
    assert images.shape == (256, 3, 16, 16) and 0 <= int(labels.min()) and int(labels.max()) < 10


def test_real_data_is_checked_against_the_models_class_count(tmp_path, digits):
    from cnnbench.core.config import DataConfig

    spec = tmp_path / "five.json"
    spec.write_text(json.dumps({**TINY_SPEC, "head": {"fully_connected": {"outputs": 5}}}))
    with pytest.raises(UsageError, match="has 10 class folders but the model has 5 outputs"):
        open_source(DataConfig(data_dir=str(digits), workers=0), resolve_entry(str(spec)), 8, 16,
                    torch.device("cpu"), torch.contiguous_format, seed=0, train=False)


# ---------------------------------------------------------------- sample dataset, bench, commands


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_sample_dataset_is_deterministic_with_ten_classes(tmp_path):
    a = write_sample_dataset(tmp_path / "a", image_size=16)
    b = write_sample_dataset(tmp_path / "b", image_size=16)
    assert a == b == {"train": 1437, "val": 360}  # 1797 digits, 80/20
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    for split in ("train", "val"):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == [str(d) for d in range(10)]
    # stratified: every class keeps about a fifth of its images for validation
    for d in range(10):
        n_train, n_val = (len(list((tmp_path / "a" / s / str(d)).iterdir())) for s in ("train", "val"))
        assert abs(n_val / (n_train + n_val) - 0.2) < 0.02
    with pytest.raises(UsageError, match="already exists and is not an empty directory"):
        write_sample_dataset(tmp_path / "a")


def test_sample_tfrecord_shards_use_the_imagenet_schema(tmp_path):
    from cnnbench.data.tfrecord import iter_records, parse_example

    counts = write_sample_dataset(tmp_path, tfrecord=True, image_size=16, max_per_class=2, train_shards=2, validation_shards=1)
    assert counts == {"train": 20, "val": 20}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001"]
    labels = sorted(parse_example(r)["image/class/label"][0] for _, r in iter_records(tmp_path / "validation-00000-of-00001"))
    assert labels == sorted(list(range(1, 11)) * 2)  # 1-based
    source = RealDataSource(tmp_path, "val", 32, preprocess_for("resnet50", "imagenet", 16), "cpu", workers=0)
    assert sorted(torch.cat([l for _, l in source.epoch_batches()]).tolist()) == sorted(list(range(10)) * 2)


def test_bench_pipeline_counts_images(digits):
    records = bench_pipeline(digits, "train", workers_list=[0], batch_size=8, image_size=16, num_batches=3, warmup_batches=1)
    assert len(records) == 1
    r = records[0]
    assert (r["workers"], r["images"], r["format"], r["split"]) == (0, 24, "folder", "train")
    assert r["images_per_sec"] == pytest.approx(24 / r["seconds"]) and r["images_per_sec_per_worker"] == r["images_per_sec"]


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnbench")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_data_commands(tmp_path, capsys):
    args = _cli().parse_args(["data", "sample", str(tmp_path / "s"), "--image-size", "16", "--max-per-class", "1"])
    assert args.func(args) == 0
    assert "wrote 10 training and 10 validation images (10 classes, 16x16)" in capsys.readouterr().out
    args = _cli().parse_args(["data", "convert", str(tmp_path / "s"), str(tmp_path / "t"), "--shards", "2"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001"]
    args = _cli().parse_args(["data", "bench", "--data-dir", str(tmp_path / "t"), "--workers", "0", "--batch-size", "2",
                              "--image-size", "16", "--num-batches", "2"])
    assert args.func(args) == 0
    assert "decode + preprocess throughput" in capsys.readouterr().out
    assert parse_workers("1,2, 4") == [1, 2, 4]
    with pytest.raises(UsageError, match="--workers must be comma-separated whole numbers"):
        parse_workers("two")
