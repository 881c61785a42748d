"""A small real labelled dataset, and conversion of image folders to ImageNet-style TFRecord shards.

The sample is scikit-learn's bundled handwritten digits (sklearn.datasets.load_digits: 1797 8x8
grey images of 0-9 from the UCI "Optical Recognition of Handwritten Digits" set, shipped inside
scikit-learn, so nothing is downloaded), scaled up to `image_size` and written as RGB files, split
80/20 stratified with a fixed seed. It exercises every real-data path end to end (decode, resize,
labels, accuracy) in seconds; it is not a benchmark of image content.

TFRecord shards follow the Inception ImageNet build script's schema
(tensorflow/models research/inception/inception/data/build_imagenet_data.py, `_convert_to_example`):
image/encoded (JPEG bytes), image/format "JPEG", image/colorspace "RGB", image/channels 3,
image/height, image/width, image/filename, image/class/label (1-based: 0 is "background"),
image/class/synset and image/class/text (here both the class folder name). Files are shuffled with
a fixed seed before sharding, as that script does, so every shard holds a mix of classes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import torch

from cnnbench.data.folder import class_names, image_files, split_dir
from cnnbench.data.codec import decode_rgb, encode_jpeg, encode_png
from cnnbench.data.tfrecord import write_examples
from cnnbench.core.errors import UsageError
from cnnbench.core.files import ensure_writable

JPEG_QUALITY = 95  # re-encoding quality (the ImageNet build script's PNG->JPEG conversion uses 100; 95 is smaller and visually the same)
SHUFFLE_SEED = 12345  # the build script's random.seed(12345)

# A small network of synNet's form that the digits sample trains to 95-99% top-1 in seconds at 32 px
# (tests/test_real_data.py's convergence check, benchmarks/guard_bounds.py's real-image network).
DIGIT_NET = {
    "name": "digitNet",
    "input": {"height": 32, "width": 32, "channels": 3},
    "groups": [
        {"name": "g1", "layers": [{"type": "conv", "filters": 16, "kernel": [3, 3]}, {"type": "maxpool"}]},
        {"name": "g2", "layers": [{"type": "conv", "filters": 32, "kernel": [3, 3]}, {"type": "maxpool"}]},
        {"name": "g3", "layers": [{"type": "conv", "filters": 64, "kernel": [3, 3]}, {"type": "maxpool"}]},
    ],
    "head": {"fully_connected": {"outputs": 1000}},
    "training": {"learning_rate": 0.05},
}


def _digits(image_size: int, seed: int, max_per_class: int | None) -> dict[str, list[tuple[torch.Tensor, int, int]]]:
    """{"train": [...], "val": [...]} of (uint8 3xSxS image, label, index in load_digits)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UsageError("cnnbench data sample digits needs scikit-learn, whose bundled digits are the images: "
                         "pip install -e '.[sample]' (./setup.sh --test installs it too)") from None

    digits = load_digits()
    indices = list(range(len(digits.target)))
    train_idx, val_idx = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=seed)
    # load_digits pixels are counts 0..16 of ink in 4x4 blocks of the original 32x32 bitmaps.
    grey = torch.from_numpy(digits.images).float().mul(255.0 / 16.0)  # N x 8 x 8, 0..255
    big = torch.nn.functional.interpolate(grey[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    rgb = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    splits = {}
    for name, idx in (("train", train_idx), ("val", val_idx)):
        per_class: dict[int, int] = {}
        items = []
        for i in sorted(idx):
            label = int(digits.target[i])
            if max_per_class is not None and per_class.get(label, 0) >= max_per_class:
                continue
            per_class[label] = per_class.get(label, 0) + 1
            items.append((rgb[i], label, i))
        splits[name] = items
    return splits


def _encode(image: torch.Tensor, image_format: str) -> bytes:
    return encode_jpeg(image, quality=JPEG_QUALITY) if image_format == "jpeg" else encode_png(image)


def write_sample_dataset(
    dst: str | Path,
    tfrecord: bool = False,
    image_size: int = 64,
    image_format: str = "png",
    train_shards: int = 4,
    validation_shards: int = 2,
    seed: int = 0,
    max_per_class: int | None = None,
) -> dict[str, int]:
    """Write the digits as `dst/train/<digit>/NNNN.png` and `dst/val/<digit>/NNNN.png`.

    With `tfrecord`, write `dst/train-0000i-of-0000N` and `dst/validation-...` shards instead
    (always JPEG, as the schema says; labels stored 1-based). Returns the image count per split.
    """
    if image_format not in ("png", "jpeg"):
        raise UsageError(f"unknown image format {image_format!r}; use png or jpeg")
    if image_size < 8:
        raise UsageError(f"--image-size must be at least 8 (the digits are 8x8), got {image_size}")
    if max_per_class is not None and max_per_class < 1:  # 0 would write a dataset of empty folders
        raise UsageError(f"--max-per-class must be at least 1, got {max_per_class}; leave it out for every image")
    ensure_writable(Path(dst), "DST")  # before the digits are rendered: no work for a folder that cannot take it
    splits = _digits(image_size, seed, max_per_class)  # first: a missing scikit-learn leaves no empty folder behind
    dst = _empty_destination(dst)
    counts = {}
    for split, items in splits.items():
        if tfrecord:
            examples = [
                image_example(_encode(image, "jpeg"), image_size, image_size, label, str(label), f"{i:04d}.jpg")
                for image, label, i in items
            ]
            prefix = "train" if split == "train" else "validation"
            write_shards(dst, prefix, examples, train_shards if split == "train" else validation_shards)
        else:
            suffix = "png" if image_format == "png" else "jpg"
            for image, label, i in items:
                folder = dst / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:04d}.{suffix}").write_bytes(_encode(image, image_format))
        counts[split] = len(items)
    return counts


def _empty_destination(dst: str | Path) -> Path:
    """Create `dst`; refuse one that holds files, so two datasets never mix."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(f"{dst} already exists and is not an empty directory; give a new destination")
    dst.mkdir(parents=True, exist_ok=True)
    return dst


def image_example(jpeg: bytes, height: int, width: int, label: int, class_name: str, filename: str,
                  label_offset: int = 1) -> dict:
    """One Example in the ImageNet build script's schema; `label` is 0-based, stored + label_offset."""
    return {
        "image/height": [height],
        "image/width": [width],
        "image/colorspace": b"RGB",
        "image/channels": [3],
        "image/class/label": [label + label_offset],
        "image/class/synset": class_name.encode(),
        "image/class/text": class_name.encode(),
        "image/format": b"JPEG",
        "image/filename": filename.encode(),
        "image/encoded": jpeg,
    }


def write_shards(dst: Path, prefix: str, examples: list[dict], shards: int) -> list[Path]:
    """Split examples into `shards` nearly equal consecutive runs named prefix-0000i-of-0000N."""
    shards = max(1, min(shards, len(examples)))
    paths = []
    for s in range(shards):
        lo, hi = s * len(examples) // shards, (s + 1) * len(examples) // shards
        path = dst / f"{prefix}-{s:05d}-of-{shards:05d}"
        write_examples(path, examples[lo:hi])
        paths.append(path)
    return paths


def convert_folder_to_tfrecord(
    src: str | Path,
    dst: str | Path,
    shards: int = 8,
    validation_shards: int | None = None,
    label_offset: int = 1,
    skip_corrupt: bool = False,
) -> dict[str, int]:
    """Convert `src/train/<class>/*` and `src/val/<class>/*` to shards in `dst`.

    Labels are the sorted class-folder index + `label_offset` (1: the ImageNet convention), text and
    synset the folder name. JPEG files are copied byte for byte (no generation loss); PNG files are
    decoded and re-encoded as JPEG at quality 95. Validation gets `validation_shards` shards (default
    shards // 8, at least 1: ImageNet's 1024 / 128). Returns counts per split plus "reencoded" and "skipped".
    """
    src, dst = Path(src), Path(dst)
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, got {shards}")
    if not src.is_dir():
        raise UsageError(f"{src} {'does not exist' if not src.exists() else 'is not a folder'}; "
                         "give the folder holding train/ and/or val/")
    ensure_writable(dst, "DST")  # before any image is read
    train = split_dir(src, "train")
    val = split_dir(src, "val")
    if train is None and val is None:
        raise UsageError(f"{src} has no train/ or val/ (validation/) folder of class sub-folders; nothing to convert")
    classes = class_names(train if train is not None else val)
    index = {name: i for i, name in enumerate(classes)}
    _empty_destination(dst)
    summary = {"train": 0, "validation": 0, "reencoded": 0, "skipped": 0, "classes": len(classes)}
    for prefix, folder, count in (("train", train, shards), ("validation", val, validation_shards or max(1, shards // 8))):
        if folder is None:
            continue
        files = [(path, name) for name in class_names(folder) for path in image_files(folder / name)]
        for path, name in files:
            if name not in index:
                raise UsageError(f"class folder {folder / name} has no counterpart in {train}; "
                                 "the validation classes must be a subset of the training classes")
        random.Random(SHUFFLE_SEED).shuffle(files)
        examples = list(_examples(files, index, label_offset, skip_corrupt, summary))
        if not examples:
            raise UsageError(f"{folder} holds no readable .jpg, .jpeg or .png images; nothing to convert")
        write_shards(dst, prefix, examples, count)
        summary[prefix] = len(examples)
    return summary


def _examples(files: list[tuple[Path, str]], index: dict[str, int], label_offset: int, skip_corrupt: bool,
              summary: dict[str, int]) -> Iterable[dict]:
    for path, name in files:
        data = path.read_bytes()
        image, error = decode_rgb(data, str(path))  # also gives height/width, and rejects damaged files now
        if image is None:
            if skip_corrupt:
                summary["skipped"] += 1
                continue
            raise UsageError(f"{error}; fix or remove it, or pass --skip-corrupt")
        if not data.startswith(b"\xff\xd8"):  # not JPEG (the SOI marker): re-encode
            data = encode_jpeg(image, quality=JPEG_QUALITY)
            summary["reencoded"] += 1
        yield image_example(data, image.shape[1], image.shape[2], index[name], name, path.name, label_offset)
