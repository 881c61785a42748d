"""Accuracy on labelled data, counted exactly, shared by `cnnbench infer --data-dir` and `train --eval-at-end`."""

from __future__ import annotations

from typing import Callable, Iterator

import torch


def padded(batches: Iterator, batch: int, memory_format: torch.memory_format) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Static shapes for every engine: a partial last batch is padded by repeating its first image;
    the padding is never counted (labels -1, and the count of real images travels with the batch)."""
    for images, labels in batches:
        n = images.shape[0]
        if n < batch:
            images = torch.cat([images, images[:1].expand(batch - n, *images.shape[1:])]).contiguous(memory_format=memory_format)
            labels = torch.cat([labels, labels.new_full((batch - n,), -1)])
        yield images, labels, n


def real_batches(source, epochs: int | None) -> Iterator:
    done = 0
    while epochs is None or done < epochs:
        yield from source.epoch_batches()
        done += 1


def top5_classes(logits: torch.Tensor) -> torch.Tensor:
    """Each row's five highest-scoring classes (fewer when the model has fewer), best first."""
    return logits.float().topk(min(5, logits.shape[1]), dim=1).indices


class Accuracy:
    """Exact top-1/top-5 counts: correct / total over every real image (never a mean of batch means).

    Counts accumulate on the device; they are read once, at the end, so counting adds no host sync.
    """

    def __init__(self):
        self.top1 = self.top5 = None
        self.total = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, n: int) -> None:
        self.add_top5(top5_classes(logits[:n]), labels[:n])

    def add_top5(self, top5: torch.Tensor, labels: torch.Tensor) -> None:
        """Count from each image's five best classes, best first (`top5_classes`); LoadGen's accuracy
        log carries exactly these (loadgen.py), so both paths count alike."""
        n, labels = top5.shape[0], labels.to(top5.device)
        top1 = (top5[:, 0] == labels).sum()
        top5 = (top5 == labels[:, None]).any(dim=1).sum()
        self.top1 = top1 if self.top1 is None else self.top1 + top1
        self.top5 = top5 if self.top5 is None else self.top5 + top5
        self.total += n

    def result(self) -> tuple[float | None, float | None, int]:
        if not self.total:
            return None, None, 0
        return 100.0 * int(self.top1) / self.total, 100.0 * int(self.top5) / self.total, self.total


def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], source, batch: int, memory_format: torch.memory_format) -> tuple[float | None, float | None, int]:
    """One pass over `source` (every image once, the last partial batch included)."""
    accuracy = Accuracy()
    for images, labels, n in padded(source.epoch_batches(), batch, memory_format):
        accuracy.add(forward(images), labels, n)
    return accuracy.result()
