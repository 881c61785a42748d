import math

import numpy as np
import pytest

from cnnbench.core.stats import latency_ms, relative_stderr, throughput
from cnnbench.core.timing import enough, measure


def test_throughput_against_hand_computed_values():
    # batch 10; per-step images/s = 10/0.5, 10/0.25, 10/0.2, 10/0.1 = 20, 40, 50, 100
    t = throughput(10, [0.5, 0.25, 0.2, 0.1])
    assert t.steps == 4
    assert t.mean == pytest.approx(52.5)
    # population std of [20, 40, 50, 100] = sqrt((32.5^2 + 12.5^2 + 2.5^2 + 47.5^2) / 4) = sqrt(868.75)
    assert t.stderr == pytest.approx(math.sqrt(868.75) / 2)
    # median 45; |deviations| 25, 5, 5, 55 -> median 15; jitter = 1.4826 * 15
    assert t.jitter == pytest.approx(22.239)
    assert t.from_mean_time == pytest.approx(10 / 0.2625)
    assert t.line() == "Images/sec: 52.5 +/- 14.7 (jitter = 22.2)"


def test_throughput_of_no_steps_is_nan():
    assert math.isnan(throughput(4, []).mean)


def test_latency_percentiles_against_hand_computed_values():
    seconds = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    lat = latency_ms(seconds)
    assert lat["latency_ms_min"] == pytest.approx(1)
    assert lat["latency_ms_max"] == pytest.approx(10)
    assert lat["latency_ms_mean"] == pytest.approx(5.5)
    # linear interpolation: position p/100 * (n-1) in the sorted list
    assert lat["latency_ms_p50"] == pytest.approx(5.5)
    assert lat["latency_ms_p90"] == pytest.approx(9.1)
    assert lat["latency_ms_p99"] == pytest.approx(9.91)


class _Clockwork:
    def __init__(self):
        self.steps = 0
        self.syncs = 0

    def step(self):
        self.steps += 1
        return self.steps

    def sync(self):
        self.syncs += 1


def test_measure_counts_warmup_and_steady_steps_and_syncs_each():
    c = _Clockwork()
    seen = []
    times = measure(c.step, c.sync, warmup=2, max_steps=5, after_step=lambda i, steady, out, s: seen.append((i, steady, out)))
    assert len(times.warmup_seconds) == 2 and len(times.steady_seconds) == 5
    assert c.steps == 7 and c.syncs == 15  # one before warm-up, then after every step and after its callback
    assert seen[:3] == [(0, False, 1), (1, False, 2), (0, True, 3)]
    assert not times.interrupted


def test_measure_stops_on_duration_but_not_before_min_steps(monkeypatch):
    clock = iter(np.arange(0, 1000, 1.0))  # every perf_counter() call advances one second
    monkeypatch.setattr("cnnbench.core.timing.time.perf_counter", lambda: next(clock))
    c = _Clockwork()
    times = measure(c.step, c.sync, warmup=0, max_steps=100, duration=0.5, min_steps=4)
    assert len(times.steady_seconds) == 4
    times = measure(c.step, c.sync, warmup=0, max_steps=100, duration=6.5, min_steps=1)
    assert len(times.steady_seconds) == 7


def test_measure_keeps_completed_steps_on_ctrl_c():
    c = _Clockwork()

    def step():
        if c.steps == 4:
            raise KeyboardInterrupt
        return c.step()

    times = measure(step, c.sync, warmup=1, max_steps=10)
    assert times.interrupted and len(times.steady_seconds) == 3


def test_relative_stderr_is_the_result_line_s_plus_minus_over_its_mean():
    times = [0.5, 0.25, 0.5, 0.25]  # 2 and 4 images/s per image
    tp = throughput(8, times)
    assert relative_stderr(times) == pytest.approx(tp.stderr / tp.mean)
    assert relative_stderr(times) == pytest.approx(1 / 3 / 2)  # std 1 of speeds 2..4, / sqrt(4), / mean 3
    assert relative_stderr([0.1]) == math.inf


def test_a_window_stops_on_its_duration_or_once_its_figure_is_known():
    steady = [0.1] * 10  # no spread
    assert not enough(steady, 1.0, 10.0, 11, 0.005, 0.0)       # fewer than the least steps
    assert enough(steady, 1.0, 1.0, 3, None, 0.0) == "duration"       # the duration
    assert enough(steady, 1.0, 10.0, 3, 0.005, 0.9) == "stderr"       # known, past the floor
    assert not enough(steady, 1.0, 10.0, 3, 0.005, 2.0)        # known, but under the floor
    assert not enough(steady, 1.0, 10.0, 3, None, 0.0)         # no target: the whole duration
    assert not enough(steady[:9], 0.9, 10.0, 3, 0.005, 0.0)    # too few steps to trust a spread
    noisy = [0.1, 0.2] * 5
    assert not enough(noisy, 1.5, 10.0, 3, 0.005, 0.0)         # a 11% standard error is not known to 0.5%


def test_measure_stops_early_once_the_standard_error_is_small(monkeypatch):
    ticks = [0.0]

    def clock():  # each step takes 0.1 s, except every tenth, 0.2 s: a spread that shrinks as steps add up
        return ticks[0]

    def step():
        ticks[0] += 0.2 if (len(seen) + 1) % 10 == 0 else 0.1
        seen.append(1)

    seen: list = []
    monkeypatch.setattr("cnnbench.core.timing.time.perf_counter", clock)
    times = measure(step, lambda: None, warmup=0, max_steps=10_000, duration=100.0, min_steps=3,
                    stderr_target=0.01, min_duration=1.0)
    n = len(times.steady_seconds)
    assert relative_stderr(times.steady_seconds) <= 0.01 < relative_stderr(times.steady_seconds[:-1])
    assert times.ended_by == "stderr"
    assert 10 < n < 1000 and sum(times.steady_seconds) < 100.0
    seen.clear()
    ticks[0] = 0.0
    whole = measure(step, lambda: None, warmup=0, max_steps=10_000, duration=20.0, min_steps=3)
    assert sum(whole.steady_seconds) >= 20.0 > sum(whole.steady_seconds[:-1])  # no target: the duration
    assert whole.ended_by == "duration"
    assert measure(step, lambda: None, warmup=0, max_steps=5).ended_by == "steps"
