"""The measured loop: warm up, synchronise, then time every step with the device synchronised.

This is the only place where benchmark clocks are read for per-step figures. A reviewer should be
able to check it in a minute: nothing else (logging, loss reads) happens between the two clock reads,
and no device work is in flight when a step's clock starts: the step's own work is synchronised before
its clock stops, and whatever the after-step callback queued is synchronised before the next step's
clock starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from cnnbench.core.stats import relative_stderr


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler: the loop stops as on Ctrl-C and the run records status terminated."""


@dataclass
class StepTimes:
    warmup_seconds: list[float] = field(default_factory=list)
    steady_seconds: list[float] = field(default_factory=list)
    stopped_by: str | None = None  # "SIGINT" (Ctrl-C) or "SIGTERM"; the lists hold the steps that completed
    ended_by: str | None = None  # what ended the steady window: "steps", "duration" or "stderr" (None: stopped_by)

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None


def measure(
    step: Callable[[], object],
    synchronize: Callable[[], None],
    *,
    warmup: int,
    max_steps: int,
    duration: float | None = None,
    min_steps: int = 1,
    stderr_target: float | None = None,
    min_duration: float = 0.0,
    after_step: Callable[[int, bool, object, float], None] = lambda index, steady, output, seconds: None,
) -> StepTimes:
    """Run `warmup` untimed-for-statistics steps, then steady steps until `max_steps`, or until
    `duration` seconds of steady time once at least `min_steps` steps are done, or earlier, once the
    steady images/s is known well enough: its standard error at most `stderr_target` of its mean after
    at least `min_duration` seconds (`enough`).

    `after_step(index, steady, output, seconds)` runs outside the timed region (display, progress).
    It may queue device work (inference counts accuracy on the device): the loop synchronises after
    it, so that this work is neither timed in the next step nor left out of the wall time.
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
            synchronize()  # host sync: the callback's device work ends before the next clock read
        steady_total = 0.0
        while len(times.steady_seconds) < max_steps:
            if duration is not None:
                times.ended_by = enough(times.steady_seconds, steady_total, duration, min_steps, stderr_target,
                                        min_duration)
                if times.ended_by:
                    break
            start = time.perf_counter()
            output = step()
            synchronize()  # host sync: a step has ended only when the device has finished it
            elapsed = time.perf_counter() - start
            times.steady_seconds.append(elapsed)
            steady_total += elapsed
            after_step(len(times.steady_seconds) - 1, True, output, elapsed)
            # host sync: on CUDA the callback's kernels (inference's accuracy counts) would otherwise
            # run inside the next timed step, issue 10; with nothing queued it returns at once.
            synchronize()
        times.ended_by = times.ended_by or "steps"
    except KeyboardInterrupt as exc:
        times.stopped_by = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    return times


# The standard-error stop needs this many steps: the spread of fewer is itself too uncertain to stop on. The
# sample variance of n steps is chi-squared with n - 1 degrees of freedom: with 3 steps it is under a quarter
# of the true one 22% of the time (P[chi2_2 < 0.5]), with 10 steps 1.3% of the time (P[chi2_9 < 2.25]).
STDERR_MIN_STEPS = 10


def enough(steady: list[float], total: float, duration: float, min_steps: int, stderr_target: float | None,
           min_duration: float) -> str | None:
    """What ends a time-bounded window (--duration) now, None while it has not measured enough: "duration" once
    it has `min_steps` steps and `duration` seconds; "stderr", with a target, once it has `min_steps` and
    STDERR_MIN_STEPS steps, `min_duration` seconds and a standard error of the mean images/s (the result line's
    +/-) at most `stderr_target` of the mean."""
    if len(steady) < min_steps:
        return None
    if total >= duration:
        return "duration"
    if (stderr_target is not None and total >= min_duration and len(steady) >= STDERR_MIN_STEPS
            and relative_stderr(steady) <= stderr_target):
        return "stderr"
    return None


def measure_together(step, synchronize, *, warmup: int, max_steps: int, duration: float | None, min_steps: int,
                     after_step, slowest_elapsed: Callable[[float], float] | None = None,
                     stderr_target: float | None = None, min_duration: float = 0.0) -> StepTimes:
    """`measure`, with every rank of a data-parallel job running the same number of steps.

    Each step's gradient all-reduce pairs up the ranks' steps: a rank that stopped one step early would
    leave the others waiting in it. A step budget is the same everywhere; a time budget (--duration)
    is not, as each rank reads its own clock. So under a time budget the ranks run steps in chunks
    and, between chunks and outside the timed region, agree on the slowest rank's steady time so far
    (`slowest_elapsed`, a collective), sizing the next chunk from it. Without it, plain `measure`.
    """
    if slowest_elapsed is None or duration is None:
        return measure(step, synchronize, warmup=warmup, max_steps=max_steps, duration=duration,
                       min_steps=min_steps, after_step=after_step)
    times = measure(step, synchronize, warmup=warmup, max_steps=min(max(min_steps, 1), max_steps), after_step=after_step)
    while not times.interrupted and len(times.steady_seconds) < max_steps:
        done = len(times.steady_seconds)
        elapsed = slowest_elapsed(sum(times.steady_seconds))
        if elapsed >= duration and done >= min_steps:
            times.ended_by = "duration"
            break
        chunk = min(max_steps - done, max(1, math.ceil((duration - elapsed) / (elapsed / done))))
        more = measure(step, synchronize, warmup=0, max_steps=chunk, after_step=after_step)
        times.steady_seconds += more.steady_seconds
        times.stopped_by = more.stopped_by
    return times
