"""Statistics of per-step times, with the AI Matrix original's definitions so figures compare.

nvcnn.py (the original) reports `Images/sec: M +/- U (jitter = J)` where, over the steady steps,
U = std(per-step images/s) / sqrt(n) and J = 1.4826 * median absolute deviation of per-step images/s
(1.4826 makes the MAD a consistent estimator of the standard deviation for normal data).
M is the mean of per-step images/s. `images_per_sec_from_mean_time` (batch / mean step time) is
recorded beside it: the two differ when step times vary, and the second is what a wall clock sees.

`figures` turns a run's per-step times into the record's measured fields (those statistics, latency
percentiles, system images/s over the whole command); `real_data_fields` and `data_wait` add a real-data
run's input waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Throughput:
    steps: int
    mean: float
    stderr: float
    jitter: float
    from_mean_time: float

    def line(self) -> str:
        return f"Images/sec: {self.mean:.1f} +/- {self.stderr:.1f} (jitter = {self.jitter:.1f})"


def throughput(images_per_step: int, step_seconds: list[float]) -> Throughput:
    if not step_seconds:
        nan = math.nan
        return Throughput(0, nan, nan, nan, nan)
    times = np.asarray(step_seconds, dtype=np.float64)
    speeds = images_per_step / times
    # np.std with ddof=0, as the original; its standard error is std / sqrt(n).
    stderr = float(np.std(speeds) / math.sqrt(len(speeds)))
    jitter = float(1.4826 * np.median(np.abs(speeds - np.median(speeds))))
    return Throughput(
        steps=len(speeds),
        mean=float(np.mean(speeds)),
        stderr=stderr,
        jitter=jitter,
        from_mean_time=float(images_per_step / np.mean(times)),
    )


def relative_stderr(step_seconds: list[float]) -> float:
    """`throughput`'s standard error over its mean (both of per-step images/s, so the batch cancels); inf
    below two steps. What a time-bounded window stops on (timing.enough, --stop-at-stderr)."""
    if len(step_seconds) < 2:
        return math.inf
    speeds = 1.0 / np.asarray(step_seconds, dtype=np.float64)
    return float(np.std(speeds) / math.sqrt(len(speeds)) / np.mean(speeds))


LATENCY_PERCENTILES = (50, 90, 99)


def latency_ms(step_seconds: list[float]) -> dict[str, float]:
    """min/mean/p50/p90/p99/max in milliseconds. Percentiles use numpy's default linear interpolation."""
    keys = ["min", "mean", *[f"p{p}" for p in LATENCY_PERCENTILES], "max"]
    if not step_seconds:
        return {f"latency_ms_{k}": math.nan for k in keys}
    ms = np.asarray(step_seconds, dtype=np.float64) * 1000.0
    values = [ms.min(), ms.mean(), *np.percentile(ms, LATENCY_PERCENTILES), ms.max()]
    return {f"latency_ms_{k}": float(v) for k, v in zip(keys, values)}


def figures(images_per_step: int, times, wall_seconds: float) -> dict:
    """The measured figures of a run, from its per-step times and its whole-command wall time.

    System performance counts every image the command pushed through, warm-up included, over the
    wall time from process start to the end of the run (the original timed the whole script).
    """
    tp = throughput(images_per_step, times.steady_seconds)
    images = images_per_step * (len(times.warmup_seconds) + len(times.steady_seconds))
    return {
        "images_per_sec": tp.mean,
        "images_per_sec_stderr": tp.stderr,
        "images_per_sec_jitter": tp.jitter,
        "images_per_sec_from_mean_time": tp.from_mean_time,
        **latency_ms(times.steady_seconds),
        "system_images_per_sec": images / wall_seconds if wall_seconds > 0 else math.nan,
        "images_processed": images,
        "wall_seconds": wall_seconds,
        "warmup_steps": len(times.warmup_seconds),
        "steady_steps": len(times.steady_seconds),
        "window_ended_by": times.ended_by,
        "warmup_seconds": list(times.warmup_seconds),
        "steady_seconds": list(times.steady_seconds),
    }


def real_data_fields(source, times) -> dict:
    """A real-data run's input fields: its waits (data_wait), the corrupt images met and the epoch's size."""
    return {**data_wait(source.data_wait_seconds, times), "corrupt_images": source.corrupt_images,
            "images_per_epoch": source.images_per_epoch}


def data_wait(wait_seconds: float, times) -> dict:
    """How much of the run's step time (warm-up included) went to waiting for real input."""
    busy = sum(times.warmup_seconds) + sum(times.steady_seconds)
    return {"data_wait_seconds": wait_seconds, "data_wait_share": wait_seconds / busy if busy else None}
