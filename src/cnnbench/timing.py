"""The measured loop: warm up, synchronise, then time every step with the device synchronised.

This is the only place where benchmark clocks are read for per-step figures. A reviewer should be
able to check it in a minute: nothing else (logging, loss reads) happens between the two clock reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class StepTimes:
    warmup_seconds: list[float] = field(default_factory=list)
    steady_seconds: list[float] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C arrived; the lists hold the steps that completed


def measure(
    step: Callable[[], object],
    synchronize: Callable[[], None],
    *,
    warmup: int,
    max_steps: int,
    duration: float | None = None,
    min_steps: int = 1,
    after_step: Callable[[int, bool, object, float], None] = lambda index, steady, output, seconds: None,
) -> StepTimes:
    """Run `warmup` untimed-for-statistics steps, then steady steps until `max_steps`, or until
    `duration` seconds of steady time once at least `min_steps` steps are done.

    `after_step(index, steady, output, seconds)` runs outside the timed region (display, progress).
    """
    times = StepTimes()
    try:
        synchronize()  # host sync: nothing queued before the benchmark may leak into its first step
        for index in range(warmup):
            start = time.perf_counter()
            output = step()
            synchronize()  # host sync: warm-up times are recorded too (compilation shows here)
            elapsed = time.perf_counter() - start
            times.warmup_seconds.append(elapsed)
            after_step(index, False, output, elapsed)
        steady_total = 0.0
        while len(times.steady_seconds) < max_steps:
            if duration is not None and steady_total >= duration and len(times.steady_seconds) >= min_steps:
                break
            start = time.perf_counter()
            output = step()
            synchronize()  # host sync: a step has ended only when the device has finished it
            elapsed = time.perf_counter() - start
            times.steady_seconds.append(elapsed)
            steady_total += elapsed
            after_step(len(times.steady_seconds) - 1, True, output, elapsed)
    except KeyboardInterrupt:
        times.interrupted = True
    return times
