"""Real data: find the layout, open the dataset, and feed the device from a DataLoader.

`RealDataSource` has the interface of `SyntheticSource` (`batches()`, `images_per_epoch`, `describe()`)
plus `epoch_batches()` (exactly one epoch, last partial batch included, for accuracy) and the time
the consumer spent waiting for input (`data_wait_seconds`, `data_wait_per_batch`).

Where the time goes: DataLoader worker processes read, decode and resize/crop into uint8 tensors
(one image per core at a time); on CUDA the DataLoader's pin-memory thread puts each batch in
page-locked memory, and the source copies the *next* batch to the device with non_blocking=True on a
side CUDA stream and normalises it there while the model works on the current one (NVIDIA apex's
`data_prefetcher` pattern), so uint8 crosses PCIe and the float conversion runs on the accelerator.
Each batch's copy and normalisation ends with its own CUDA event, and the step waits on that event
alone (`SideStream`): waiting on the whole side stream would also wait for the next batch's copy,
queued just before, and the overlap would not happen (issue 10).
On the CPU the normalisation runs in the main process and counts as waiting for data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from cnnbench.data import codec
from cnnbench.data.folder import SPLIT_FOLDERS, ImageFolder, class_names
from cnnbench.data.normalization import Normalizer
from cnnbench.data.tfrecord import SHARD_PREFIX, Sample, TFRecordImages, find_shards
from cnnbench.data.preprocess import Preprocess
from cnnbench.core.environment import usable_cores
from cnnbench.core.errors import UsageError

FORMATS = ("tfrecord", "folder")
LAYOUTS = ("train/<class>/*.jpg and val/<class>/*.jpg (val/ may be validation/; PNG too), "
           "or TFRecord shards named train-00000-of-01024 and validation-00000-of-00128")


def detect_format(data_dir: str | Path) -> str:
    """"tfrecord" or "folder", judged from what `data_dir` holds; UsageError if neither layout."""
    root = Path(data_dir)
    if not root.exists():
        raise UsageError(f"--data-dir {root} does not exist; give a directory holding {LAYOUTS}")
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory; give a directory holding {LAYOUTS}")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise UsageError(f"--data-dir {root} is empty; put {LAYOUTS} in it")
    if any(p.is_file() and "-" in p.name and p.name.split("-")[0] in SHARD_PREFIX.values() for p in entries):
        return "tfrecord"
    folders = {name for names in SPLIT_FOLDERS.values() for name in names}
    if any(p.is_dir() and p.name in folders and class_names(p) for p in entries):
        return "folder"
    raise UsageError(f"--data-dir {root} holds neither accepted layout; expected {LAYOUTS}")


def open_dataset(
    data_dir: str | Path,
    split: str,
    fmt: str | None = None,
    transform: Preprocess | None = None,
    label_offset: int = 1,
    num_classes: int = 1000,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
) -> ImageFolder | TFRecordImages:
    """The split as a dataset of `Sample`s.

    TFRecord: an IterableDataset already restricted to this rank's shards; labels minus
    `label_offset` must fall in [0, num_classes). Folder: a map-style dataset of the whole split
    (`RankSampler` splits it across ranks); its class count must not exceed `num_classes`.
    """
    fmt = fmt or detect_format(data_dir)
    if fmt == "tfrecord":
        files = find_shards(data_dir, split)
        if not files:
            raise UsageError(f"{data_dir} has no {SHARD_PREFIX[split]}-* shards for the {split} split; "
                             f"name them like {SHARD_PREFIX[split]}-00000-of-00001")
        return TFRecordImages(files, transform, label_offset, num_classes, rank, world_size, shuffle, seed)
    if fmt == "folder":
        dataset = ImageFolder(data_dir, split, transform)
        if dataset.num_classes > num_classes:
            raise UsageError(f"{dataset.folder} has {dataset.num_classes} class folders but the model has "
                             f"{num_classes} outputs; use a dataset with at most {num_classes} classes")
        return dataset
    raise UsageError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")


class RankSampler(Sampler[int]):
    """Indices of a map-style dataset for one rank: every world_size-th of a (per-epoch) permutation.

    Unlike DistributedSampler it never pads with repeated images, so an evaluation counts each image
    once; ranks differ by at most one image.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 0):
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside 0..{world_size - 1}; check the distributed launch settings")
        self.size, self.rank, self.world_size, self.shuffle, self.seed = size, rank, world_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def collate(samples: list[Sample]) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, str, bool]]]:
    """Stack the decoded images; problems travel beside them so the main process can word the error.

    (An exception raised in a worker would reach the user wrapped in a traceback, not as one line.)
    """
    good = [s for s in samples if s.image is not None]
    problems = [(s.where, s.error or "", s.fatal) for s in samples if s.image is None]
    images = torch.stack([s.image for s in good]) if good else None
    labels = torch.tensor([s.label for s in good], dtype=torch.int64)
    return images, labels, problems


def loader_workers(batch_size: int, workers: int | None) -> int:
    """Check the batch size and worker count; no count given means one worker per usable core."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    workers = usable_cores() if workers is None else workers
    if workers < 0:
        raise UsageError(f"--workers must be 0 (load in the main process) or more, got {workers}")
    return workers


def rank_share(dataset: ImageFolder | TFRecordImages, rank: int, world_size: int, shuffle: bool, seed: int,
               what: str) -> tuple[RankSampler | None, int]:
    """This rank's sampler and images per epoch; UsageError if it gets none (more ranks than shards, say).

    A folder split is shared by a `RankSampler`; a TFRecord dataset already reads only this rank's
    shards, so it needs no sampler. `what` names the images for the message ("val images from DIR").
    """
    sampler = RankSampler(len(dataset), rank, world_size, shuffle, seed) if isinstance(dataset, ImageFolder) else None
    images = len(sampler) if sampler is not None else dataset.count()
    if images == 0:
        raise UsageError(f"rank {rank} of {world_size} gets no {what}; use fewer ranks or more shards")
    return sampler, images


def data_loader(dataset: ImageFolder | TFRecordImages, sampler: RankSampler | None, batch_size: int, workers: int,
                pin_memory: bool, prefetch_factor: int, seed: int) -> DataLoader:
    """Batches of `Sample`s collated in `workers` processes (none: in this one)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,  # page-locked host batches: the copy to the device can then be asynchronous
        persistent_workers=workers > 0,  # no process start-up at each epoch
        prefetch_factor=prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' augmentation RNGs
    )


class DataWaits:
    """The time a consumer waited inside a data source for its batches (`data_wait_per_batch`, appended by the
    source); both frameworks' real-data sources keep it so."""

    data_wait_per_batch: list[float]

    @property
    def data_wait_seconds(self) -> float:
        """Total time the consumer spent inside this source waiting for batches."""
        return sum(self.data_wait_per_batch)

    def reset_data_wait(self) -> None:
        """Forget the waits so far (e.g. after warm-up, whose first batch includes worker start-up)."""
        self.data_wait_per_batch = []


class RealDataSource(DataWaits):
    """Batches of (normalised images, labels) on `device` from an image folder or TFRecord shards."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        preprocess: Preprocess,
        device: torch.device | str,
        memory_format: torch.memory_format = torch.contiguous_format,
        workers: int | None = None,
        train: bool | None = None,
        seed: int = 0,
        label_offset: int = 1,
        skip_corrupt: bool = False,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        fmt: str | None = None,
        num_classes: int = 1000,
        prefetch_factor: int = 2,
    ):
        self.workers = loader_workers(batch_size, workers)
        self.train = preprocess.train if train is None else train  # shuffle (and by default drop_last)
        self.drop_last = self.train if drop_last is None else drop_last
        self.batch_size, self.preprocess, self.skip_corrupt = batch_size, preprocess, skip_corrupt
        self.data_dir, self.split, self.rank, self.world_size = Path(data_dir), split, rank, world_size
        self.format = fmt or detect_format(data_dir)
        self.dataset = open_dataset(data_dir, split, self.format, preprocess, label_offset, num_classes,
                                    rank, world_size, shuffle=self.train, seed=seed)
        self.num_classes = self.dataset.num_classes  # a folder's own count; TFRecord: `num_classes`
        self.sampler, self.images_per_epoch = rank_share(self.dataset, rank, world_size, self.train, seed,
                                                         f"{split} images from {data_dir}")
        self.device, self.memory_format = torch.device(device), memory_format
        cuda = self.device.type == "cuda"
        self.loader = data_loader(self.dataset, self.sampler, batch_size, self.workers, cuda, prefetch_factor, seed)
        # The next batch's copy and normalisation run on it (None on the CPU); a stand-in with the same
        # three methods may replace it (the tests check the event-per-batch order on the CPU that way).
        self.side_stream = SideStream(self.device) if cuda else None
        self.normalizer = Normalizer(preprocess.normalization, self.device)  # its constants made once, not per batch
        self.epoch = 0
        self.corrupt_images = 0
        self.corrupt_files: list[str] = []  # the first few, for the report
        self.data_wait_per_batch: list[float] = []

    # ---------------------------------------------------------------- what the caller reads

    def describe(self) -> str:
        ranks = f" for rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
        skip = f", skipping undecodable images ({self.corrupt_images} so far)" if self.skip_corrupt else ""
        return (f"{self.format} {self.data_dir} [{self.split}]: {self.images_per_epoch} images{ranks}, "
                f"{self.num_classes} classes, {self.workers} loader workers decoding with {codec.describe()}; "
                f"{self.preprocess.describe()}{skip}")

    def close(self) -> None:
        """Stop the persistent worker processes now rather than when the source is garbage-collected."""
        iterator = getattr(self.loader, "_iterator", None)  # DataLoader keeps it for persistent workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    # ---------------------------------------------------------------- iteration

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless: epoch after epoch. With drop_last, batches smaller than batch_size are left out."""
        while True:
            produced = False
            for images, labels in self._epoch(keep_partial=not self.drop_last):
                produced = True
                yield images, labels
            if not produced:
                raise UsageError(f"{self.data_dir} [{self.split}] has {self.images_per_epoch} images for this rank, "
                                 f"fewer than one batch of {self.batch_size}; lower --batch-size")

    def epoch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Exactly one epoch, every image once, partial batches included (for accuracy)."""
        yield from self._epoch(keep_partial=True)

    def host_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of uint8 (images, labels) on the host, not normalised: the input pipeline alone."""
        self._start_epoch()
        for images, labels, problems in self.loader:
            self._check(problems)
            if images is not None:
                yield images, labels

    def _start_epoch(self) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        else:
            self.dataset.set_epoch(self.epoch)
        self.epoch += 1

    def _check(self, problems: list[tuple[str, str, bool]]) -> None:
        for where, error, fatal in problems:
            if fatal:
                raise UsageError(error)
            if not self.skip_corrupt:
                raise UsageError(f"{error}; pass --skip-corrupt to skip undecodable images")
            self.corrupt_images += 1
            if len(self.corrupt_files) < 10:
                self.corrupt_files.append(where)

    def _epoch(self, keep_partial: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        host = (b for b in self.host_batches() if keep_partial or len(b[1]) == self.batch_size)
        start = time.perf_counter()
        ready = self._send(next(host, None))
        while ready is not None:
            current = ready
            ready = self._send(next(host, None))  # the next batch's copy overlaps the current step
            current = self._hand_over(current)
            self.data_wait_per_batch.append(time.perf_counter() - start)
            yield current
            start = time.perf_counter()

    def _send(self, batch: tuple[torch.Tensor, torch.Tensor] | None) -> tuple | None:
        """The batch on the device, normalised: at once on the CPU; on CUDA queued on the side stream,
        with the event that marks its end as a third element (for `_hand_over`)."""
        if batch is None:
            return None
        images, labels = batch
        if self.side_stream is None:
            return self._normalise(images), labels.to(self.device)
        with self.side_stream.queue():
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            images = self._normalise(images)
            return images, labels, self.side_stream.mark()

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        return self.normalizer(images).contiguous(memory_format=self.memory_format)

    def _hand_over(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        if self.side_stream is None:
            return batch
        images, labels, ready = batch
        self.side_stream.hand_over(ready, (images, labels))  # this batch's event only, not the next batch's
        return images, labels


class SideStream:
    """The CUDA stream on which the source copies and normalises the next batch, and one event per batch.

    The pattern of NVIDIA apex's `data_prefetcher` (examples/imagenet/main_amp.py), with an event per
    batch in place of `wait_stream`: the consumer's step must wait for its own batch, not for the next
    one queued behind it on the same stream. CUDA Runtime API: cudaEventRecord "captures in event the
    contents of stream at the time of this call", and cudaStreamWaitEvent makes later work "wait for all
    work captured in event", so work queued after the record is not waited for (PyTorch's
    `Event.record` and `Stream.wait_event` call them).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def queue(self):
        """The context in which a batch's copy and normalisation are queued on the side stream."""
        return torch.cuda.stream(self.stream)

    def mark(self) -> torch.cuda.Event:
        """An event recorded after the work queued so far: the end of this batch's copy and normalisation."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def hand_over(self, ready: torch.cuda.Event, tensors: tuple[torch.Tensor, ...]) -> None:
        """Make the consumer's stream wait for `ready` (without blocking the host), and tell the caching
        allocator that tensors made on the side stream are used on the consumer's."""
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(ready)
        for tensor in tensors:
            tensor.record_stream(consumer)  # memory made on the side stream, used on the consumer's
