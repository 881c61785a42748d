"""Image-folder datasets: `train/<class>/*.jpg` and `val/<class>/*.jpg` (or `validation/<class>/...`).

The layout of torchvision.datasets.ImageFolder and of most ImageNet copies on disk. Classes are the
sub-folder names sorted, so class i is the i-th name; the validation split takes the training split's
class list when there is one, so the same name gets the same index in both. Images are decoded with
torchvision.io (libjpeg-turbo / libpng) straight into uint8 CHW tensors, never through PIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from cnnbench.data.codec import decode_rgb
from cnnbench.data.tfrecord import Sample
from cnnbench.core.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Split name -> folder names tried in order.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "validation": ("validation", "val")}


def split_dir(root: str | Path, split: str) -> Path | None:
    """The folder holding `split`'s class folders, or None if there is none."""
    if split not in SPLIT_FOLDERS:
        raise UsageError(f"unknown split {split!r}; use train or val")
    for name in SPLIT_FOLDERS[split]:
        candidate = Path(root) / name
        if candidate.is_dir():
            return candidate
    return None


def class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder(Dataset):
    """Map-style dataset of `Sample`s: (uint8 CHW image after `transform`, class index, path)."""

    def __init__(self, root: str | Path, split: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        folder = split_dir(root, split)
        if folder is None:
            tried = " or ".join(f"{name}/" for name in SPLIT_FOLDERS[split])
            raise UsageError(f"{root} has no {tried} folder for the {split} split; add one with a sub-folder per class")
        self.folder = folder
        self.classes = self._reference_classes(Path(root), folder)
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in class_names(folder):
            if name not in index:
                raise UsageError(
                    f"class folder {folder / name} has no counterpart in {Path(root) / 'train'}; "
                    "the validation classes must be a subset of the training classes"
                )
            self.samples.extend((path, index[name]) for path in image_files(folder / name))
        if not self.samples:
            raise UsageError(f"{folder} holds no .jpg, .jpeg or .png files in its class folders; put images in {folder}/<class>/")
        self.transform = transform

    @staticmethod
    def _reference_classes(root: Path, folder: Path) -> list[str]:
        train = root / "train"
        names = class_names(train) if train.is_dir() else class_names(folder)
        if not names:
            raise UsageError(f"{folder} has no class sub-folders; put images in {folder}/<class>/")
        return names

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        path, label = self.samples[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            return Sample(None, label, str(path), f"cannot read image {path}: {exc.strerror}")
        image, error = decode_rgb(data, str(path))
        if image is None:
            return Sample(None, label, str(path), error)
        if self.transform is not None:
            image = self.transform(image)
        return Sample(image, label, str(path))
