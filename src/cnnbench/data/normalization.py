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


def normalize(images_uint8: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float32, normalised as the weights named `name` expect."""
    x = images_uint8.float()
    if name == "minus_one_to_one":
        # synNet's input: [0, 255] mapped linearly onto [-1, 1].
        return x / 127.5 - 1.0
    if name == "aimatrix_raw":
        return x
    if name == "aimatrix_densenet":
        return (x - torch.tensor(AIMATRIX_RGB_MEAN, device=x.device).view(1, 3, 1, 1)) * AIMATRIX_DENSENET_SCALE
    if name == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std
    raise ValueError(f"unknown normalisation {name!r}; known: {', '.join(NORMALIZATIONS)}")
