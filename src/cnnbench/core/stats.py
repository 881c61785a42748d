"""Statistics of per-step times, with the AI Matrix original's definitions so figures compare.

nvcnn.py (the original) reports `Images/sec: M +/- U (jitter = J)` where, over the steady steps,
U = std(per-step images/s) / sqrt(n) and J = 1.4826 * median absolute deviation of per-step images/s
(1.4826 makes the MAD a consistent estimator of the standard deviation for normal data).
M is the mean of per-step images/s. `images_per_sec_from_mean_time` (batch / mean step time) is
recorded beside it: the two differ when step times vary, and the second is what a wall clock sees.
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


LATENCY_PERCENTILES = (50, 90, 99)


def latency_ms(step_seconds: list[float]) -> dict[str, float]:
    """min/mean/p50/p90/p99/max in milliseconds. Percentiles use numpy's default linear interpolation."""
    keys = ["min", "mean", *[f"p{p}" for p in LATENCY_PERCENTILES], "max"]
    if not step_seconds:
        return {f"latency_ms_{k}": math.nan for k in keys}
    ms = np.asarray(step_seconds, dtype=np.float64) * 1000.0
    values = [ms.min(), ms.mean(), *np.percentile(ms, LATENCY_PERCENTILES), ms.max()]
    return {f"latency_ms_{k}": float(v) for k, v in zip(keys, values)}
