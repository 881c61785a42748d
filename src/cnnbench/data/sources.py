"""Pick the input of a run from its configuration: synthetic by default, real data with --data-dir."""

from __future__ import annotations

import torch

from cnnbench.core.config import DataConfig
from cnnbench.data.synthetic import SyntheticSource


def open_source(data: DataConfig, entry, batch: int, image_size: int, device: torch.device,
                memory_format: torch.memory_format, seed: int, train: bool, rank: int = 0, world_size: int = 1):
    # The model's class count bounds the labels: synthetic ones are drawn below it, real ones are checked against it.
    if data.data_dir is None:
        return SyntheticSource(batch, image_size, entry.preprocessing, device, memory_format,
                               num_classes=entry.num_classes, seed=seed)
    from cnnbench.data.loader import RealDataSource
    from cnnbench.data.preprocess import preprocess_for

    preprocess = preprocess_for(entry.name, entry.preprocessing, image_size, data.preprocess, train=train,
                                min_crop_scale=data.min_crop_scale, flip=data.flip)
    return RealDataSource(
        data.data_dir, data.split or ("train" if train else "validation"), batch, preprocess, device, memory_format,
        workers=data.workers, train=train, seed=seed, label_offset=data.label_offset, skip_corrupt=data.skip_corrupt,
        rank=rank, world_size=world_size, fmt=data.data_format, num_classes=entry.num_classes,
    )
