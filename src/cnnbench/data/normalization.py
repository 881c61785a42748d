"""Normalisation by name: what the model's weights expect, applied on the device to uint8 images."""

from __future__ import annotations

import torch

# ImageNet statistics used by torchvision's published weights (torchvision.transforms._presets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The AI Matrix original's table (its preprocessing for checkpoints trained its way): googlenet and
# the ResNets take raw 0..255 floats; densenet121 subtracts the RGB means and scales by 0.017.
AIMATRIX_RGB_MEAN = (123.68, 116.78, 103.94)
AIMATRIX_DENSENET_SCALE = 0.017

NORMALIZATIONS = ("imagenet", "minus_one_to_one", "aimatrix_raw", "aimatrix_densenet")


class Normalizer:
    """`normalize` for one name and device, its per-channel constants made once, here.

    A tensor made from Python numbers on a CUDA device is a host-to-device copy that blocks the host
    (PyTorch synchronises the stream after a copy that is not non_blocking); made at every batch, it
    stalled the real-data loader between its asynchronous copies (issue 10). A data source keeps one
    Normalizer for its device.
    """

    def __init__(self, name: str, device: torch.device | str):
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {name!r}; known: {', '.join(NORMALIZATIONS)}")
        self.name, self.device = name, torch.device(device)
        self.mean = self.std = None
        if name == "aimatrix_densenet":
            self.mean = torch.tensor(AIMATRIX_RGB_MEAN, device=self.device).view(1, 3, 1, 1)
        elif name == "imagenet":
            self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
            self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW in [0, 255] on this device -> float32, normalised as the weights expect."""
        return normalized(images_uint8.float(), self.name, self.mean, self.std)


def normalized(x, name: str, mean, std):
    """The arithmetic of each normalisation on float pixels in [0, 255], written with operators only, so that
    PyTorch's and TensorFlow's tensors (tfbackend/data.py) go through the same lines; mean and std are the
    name's per-channel constants in x's framework and layout (None where the name has none)."""
    if name == "minus_one_to_one":
        # synNet's input: [0, 255] mapped linearly onto [-1, 1].
        return x / 127.5 - 1.0
    if name == "aimatrix_raw":
        return x
    if name == "aimatrix_densenet":
        return (x - mean) * AIMATRIX_DENSENET_SCALE
    return (x - mean) / std


def normalize(images_uint8: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float32, normalised as the weights named `name` expect (a one-off:
    repeated calls on a device should keep a `Normalizer`)."""
    return Normalizer(name, images_uint8.device)(images_uint8)
