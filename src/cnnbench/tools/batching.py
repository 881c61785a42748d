"""Dynamic batching: queries wait in one queue; worker threads take them in batches and run them.

What makes a server fast is batching (an accelerator runs 16 images in little more time than one), and
what keeps it within its latency bound is not waiting too long for a batch to fill. The rule, as in
NVIDIA Triton's dynamic batcher (max_batch_size, max_queue_delay_microseconds): a free worker takes
the oldest waiting query and dispatches a batch as soon as it holds `max_batch` queries or the oldest
has waited `max_wait` seconds since it arrived, whichever comes first. A query that already waited
that long while every worker was busy goes out at once, with whatever else is waiting.

One worker forms a batch at a time (the others wait their turn), so two workers never split one
batch between them. Offline uses the same queue with no wait: every query is there at once, so every
batch is full but the last. `drain` takes everything still waiting out of the queue at once (a run
stopped by a signal answers it without running it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class BatchTimes:
    """When a batch's oldest query arrived, when a worker took it, when the batch was dispatched, its size."""

    first_arrival: float
    taken: float
    dispatched: float
    size: int


class DynamicBatcher:
    """`submit(items)` queues items; `workers` threads call `run_batch(list of items)` on batches of at most
    `max_batch`. `batches` holds every batch's BatchTimes (perf_counter seconds). Use as a context
    manager: leaving it runs what is queued, then stops the workers."""

    def __init__(self, run_batch: Callable[[list], None], max_batch: int, max_wait: float, workers: int = 1,
                 worker_setup: Callable[[], None] | None = None):
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait
        self.batches: list[BatchTimes] = []
        self._pending: deque[tuple[float, object]] = deque()
        self._ready = threading.Condition()
        self._forming = threading.Lock()  # one worker forms a batch at a time
        self._closed = False
        self._setup = worker_setup
        self._threads = [threading.Thread(target=self._work, name=f"cnnbench-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, items: Sequence) -> None:
        """Queue the items, all at once (a worker never sees half of them), stamped with their arrival."""
        now = time.perf_counter()
        with self._ready:
            self._pending.extend((now, item) for item in items)
            self._ready.notify_all()

    def drain(self) -> list:
        """Everything still waiting, taken out of the queue: no worker will run it."""
        with self._ready:
            items = [item for _, item in self._pending]
            self._pending.clear()
            return items

    def close(self) -> None:
        """Run whatever is queued, then stop and join the workers."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        if self._setup is not None:
            self._setup()
        while (batch := self._next_batch()) is not None:
            self.run_batch(batch)

    def _next_batch(self) -> list | None:
        with self._forming, self._ready:
            while True:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return None  # closed and drained
                taken = time.perf_counter()
                first_arrival = self._pending[0][0]
                deadline = first_arrival + self.max_wait
                while 0 < len(self._pending) < self.max_batch and not self._closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                size = min(self.max_batch, len(self._pending))
                if size:  # none when `drain` emptied the queue during the wait: wait for the next arrival
                    items = [self._pending.popleft()[1] for _ in range(size)]
                    self.batches.append(BatchTimes(first_arrival, taken, time.perf_counter(), size))
                    return items
