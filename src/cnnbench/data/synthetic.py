"""Synthetic input: one batch of random images and labels, made once on the device and reused.

Producing input then never enters the accelerator figure, as in the original's synthetic mode.
"""

from __future__ import annotations

from typing import Iterator

import torch

from cnnbench.data.normalization import normalize

# Size of the ImageNet-1k training set; only used to turn steps into the epoch column.
IMAGENET_TRAIN_IMAGES = 1_281_167


class SyntheticSource:
    def __init__(
        self,
        batch_size: int,
        image_size: int,
        normalization: str,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        num_classes: int = 1000,
        seed: int = 0,
    ):
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (batch_size, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
        self.images = normalize(pixels, normalization).to(device).contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
        self.images_per_epoch = IMAGENET_TRAIN_IMAGES
        self.batch_size = batch_size
        self._description = f"synthetic ({batch_size} random images of {image_size}x{image_size}, reused)"

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.images, self.labels

    def describe(self) -> str:
        return self._description
