"""Per-model preprocessing, a property of the weights: resize and crop on the host, normalise on the device.

The host part (`Preprocess.__call__`) works on uint8 CHW tensors with torchvision.transforms.v2's
functional ops, so a batch crosses to the device as uint8 (4x fewer bytes than float32) and
`normalize_preset` turns it into floats there.

Presets (evaluation):
  torchvision     resize the shorter side to 256, centre crop 224, bilinear with antialias: the
                  transforms of torchvision's V1 weights (torchvision/transforms/_presets.py,
                  ImageClassification(crop_size=224, resize_size=256)). Other crop sizes keep the
                  ratio: resize = round(crop * 256 / 224). Normalisation: what the registry says the
                  model's weights expect ("imagenet" mean/std, or synNet's "minus_one_to_one").
  torchvision-v2  the same with resize 232 (torchvision's IMAGENET1K_V2 weights, e.g. ResNet50_Weights.IMAGENET1K_V2).
  aimatrix        the AI Matrix TensorFlow original: resize both sides to 256x256 (aspect ratio not
                  kept), centre crop 224x224, RGB order; GoogLeNet and the ResNets take raw 0..255
                  floats (scale 1, no mean subtraction), DenseNet-121 subtracts the RGB means
                  (123.68, 116.78, 103.94) and multiplies by 0.017 (the DenseNet Caffe/TF ports'
                  convention, e.g. pudae/tensorflow-densenet's densenet_preprocessing.py).
Training (any preset): torchvision's standard recipe (references/classification/presets.py),
RandomResizedCrop(crop, scale=(0.08, 1), ratio=(3/4, 4/3)) then a horizontal flip with p = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import RandomResizedCrop

from cnnbench.data.normalization import normalize
from cnnbench.core.errors import UsageError

PRESETS = ("torchvision", "torchvision-v2", "aimatrix")
# The aimatrix preset's normalisations (defined with the others in normalization.py).
AIMATRIX_RAW = "aimatrix_raw"  # float(x), 0..255
AIMATRIX_DENSENET = "aimatrix_densenet"  # (x - RGB mean) * 0.017


@dataclass(frozen=True)
class Preprocess:
    """Resize, crop and normalisation for one model; calling it transforms one uint8 CHW image."""

    crop: int
    resize: int | None = None  # evaluation: target of the resize (None in training)
    keep_aspect: bool = True  # True: `resize` is the shorter side; False: both sides become `resize`
    normalization: str = "imagenet"
    train: bool = False
    preset: str = "torchvision"
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (training)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range (training)
    flip: float = 0.5  # horizontal flip probability (training)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.train:
            top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
            image = F.resized_crop(image, top, left, height, width, [self.crop, self.crop], antialias=True)
            if self.flip > 0 and torch.rand(()) < self.flip:
                image = F.horizontal_flip(image)
            return image
        size = [self.resize] if self.keep_aspect else [self.resize, self.resize]
        image = F.resize(image, size, antialias=True)  # bilinear, as torchvision's presets
        return F.center_crop(image, [self.crop, self.crop])

    def describe(self) -> str:
        if self.train:
            geometry = (f"random resized crop {self.crop} (scale {self.scale[0]:g}-{self.scale[1]:g}), "
                        f"horizontal flip p={self.flip:g}")
        elif self.keep_aspect:
            geometry = f"resize shorter side {self.resize}, centre crop {self.crop}"
        else:
            geometry = f"resize {self.resize}x{self.resize}, centre crop {self.crop}"
        return f"{self.preset}: {geometry}, normalise {self.normalization} on the device"


def preprocess_for(
    model_name: str,
    normalization: str,
    image_size: int,
    preset: str | None = None,
    train: bool = False,
    resize_size: int | None = None,
    min_crop_scale: float = 0.08,
    flip: float = 0.5,
) -> Preprocess:
    """The preprocessing for `model_name` (its registry normalisation and input size) under a preset.

    `resize_size` overrides the evaluation resize (e.g. 232 for torchvision's V2 weights at 224).
    """
    preset = preset or "torchvision"
    if preset not in PRESETS:
        raise UsageError(f"unknown preprocessing preset {preset!r}; known: {', '.join(PRESETS)}")
    if image_size < 1:
        raise UsageError(f"--image-size must be at least 1, got {image_size}")
    base_resize = 232 if preset == "torchvision-v2" else 256
    resize = resize_size or round(image_size * base_resize / 224)
    if resize < image_size:
        raise UsageError(f"resize {resize} is smaller than the crop {image_size}; give a resize size of at least {image_size}")
    if preset == "aimatrix":
        key = model_name.lower()
        if key == "densenet121":
            normalization = AIMATRIX_DENSENET
        elif key == "googlenet" or key.startswith("resnet"):
            normalization = AIMATRIX_RAW
        # other models (synNet, spec files) keep their own normalisation
    return Preprocess(
        crop=image_size,
        resize=None if train else resize,
        keep_aspect=preset != "aimatrix",
        normalization=normalization,
        train=train,
        preset=preset,
        scale=(min_crop_scale, 1.0),
        flip=flip,
    )


def normalize_preset(images_uint8: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NCHW batch (on the device) -> float32 as `preprocess.normalization` says."""
    return normalize(images_uint8, preprocess.normalization)
