"""The input pipeline alone: read, decode, resize/crop and batch, with no model and no device.

Answers "how many loader workers does this model's step rate need?": a step of B images at S
images/s needs B/S seconds, so the pipeline must deliver at least S images/s or the accelerator
waits (the train/infer data-wait share shows the same from the other side).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import torch

from cnnbench.data.loader import RealDataSource
from cnnbench.data.preprocess import preprocess_for
from cnnbench.core.errors import UsageError


def _endless(source: RealDataSource) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        produced = False
        for batch in source.host_batches():
            produced = True
            yield batch
        if not produced:
            raise UsageError(f"{source.data_dir} [{source.split}] gave no images; check the dataset")


def bench_pipeline(
    data_dir: str | Path,
    split: str = "train",
    workers_list: list[int] | tuple[int, ...] = (1, 2),
    batch_size: int = 64,
    image_size: int = 224,
    num_batches: int = 20,
    warmup_batches: int = 2,
    preset: str | None = None,
    train: bool = False,
    label_offset: int = 1,
    skip_corrupt: bool = False,
    fmt: str | None = None,
) -> list[dict]:
    """Images/s of decode + preprocess for each worker count; one flat record per count.

    `warmup_batches` (which include starting the worker processes) are not timed. Epochs repeat
    when the split is smaller than warm-up + timed batches. `train` times the training transform
    (random resized crop + flip) instead of resize + centre crop.
    """
    if num_batches < 1:
        raise UsageError(f"--num-batches must be at least 1, got {num_batches}")
    preprocess = preprocess_for("resnet50", "imagenet", image_size, preset, train=train)
    records = []
    for workers in workers_list:
        source = RealDataSource(data_dir, split, batch_size, preprocess, "cpu", workers=workers, train=train,
                                label_offset=label_offset, skip_corrupt=skip_corrupt, fmt=fmt)
        try:
            batches = _endless(source)
            for _ in range(warmup_batches):
                next(batches)
            images, start = 0, time.perf_counter()
            for _ in range(num_batches):
                images += len(next(batches)[1])
            seconds = time.perf_counter() - start
        finally:
            source.close()
        rate = images / seconds
        records.append({
            "format": source.format,
            "split": split,
            "workers": workers,
            "batch_size": batch_size,
            "image_size": image_size,
            "preprocess": preprocess.describe(),
            "images": images,
            "seconds": seconds,
            "images_per_sec": rate,
            # workers=0 decodes in the main process: one core as well
            "images_per_sec_per_worker": rate / max(workers, 1),
            "corrupt_images": source.corrupt_images,
        })
    return records
