"""Power, energy, clocks, temperature and throttling while a benchmark's timed steps run (issue 12).

A background thread samples the device about 10 times a second (INTERVAL_SECONDS) from the start of the
measured loop to its end; the loop itself (timing.py) never waits for it and reads no sensor between its
clock reads. The run marks the moment its warm-up ends (`Sampler.mark_steady`), and every figure is taken
over the steady window only, the one images/s is computed over.

- CUDA: NVML (nvidia-ml-py, the `gpu` extra, imported here only): power, the total-energy counter where the
  GPU has one (Volta and later) else power integrated over the samples, SM and memory clocks,
  temperature, utilisation, and the clock-throttle reasons seen. The GPU is found by its UUID.
- CPU: package energy from RAPL (/sys/class/powercap/intel-rapl:N, the "package-N" zones) where this
  user may read it (root only on kernels since 5.10, after CVE-2020-8694), and each usable core's
  frequency (cpufreq's scaling_cur_freq, else /proc/cpuinfo's "cpu MHz"). What cannot be read is None,
  and `energy_source` says "unavailable: <why>".

The sampler's own cost is recorded (`telemetry_cpu_seconds`: the thread's CPU time, `telemetry_cpu_share`:
that over the steady window's wall time); benchmarks/efficiency.py measures its cost on throughput.
Record fields: `fields()` and docs/figures.md "Telemetry and efficiency".
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable

from cnnbench.core import environment

INTERVAL_SECONDS = 0.1  # 10 Hz: NVML refreshes power about every 100 ms on recent GPUs (nvmlDeviceGetPowerUsage)
SERIES_POINTS = 60  # the over-time series kept in a record: at most this many bins of the steady window

# nvmlClocksThrottleReasons / nvmlClocksEventReasons bits (nvml.h, NVML API reference "Clock Event Reasons").
THROTTLE_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                    0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
                    0x100: "display_clocks"}
POWERCAP = Path("/sys/class/powercap")
CPU_SYSFS = Path("/sys/devices/system/cpu")

# Values a sample may hold (None when the reader cannot tell), and what each becomes in the record.
SUMMARIES = {
    "power_w": (("power_w_mean", "mean"), ("power_w_max", "max")),
    "sm_clock_mhz": (("sm_clock_mhz_mean", "mean"), ("sm_clock_mhz_min", "min")),
    "mem_clock_mhz": (("mem_clock_mhz_mean", "mean"), ("mem_clock_mhz_min", "min")),
    "temperature_c": (("temperature_c_max", "max"),),
    "gpu_utilization_pct": (("gpu_utilization_pct_mean", "mean"),),
    "mem_utilization_pct": (("mem_utilization_pct_mean", "mean"),),
    "cpu_freq_mhz": (("cpu_freq_mhz_mean", "mean"), ("cpu_freq_mhz_min", "min"), ("cpu_freq_mhz_max", "max")),
}
SERIES = ("power_w", "sm_clock_mhz", "temperature_c", "cpu_freq_mhz")


class NvmlReader:
    """One GPU through NVML. `pynvml` is the module (nvidia-ml-py), passed in so a test can hand a fake."""

    source = "nvml"

    def __init__(self, pynvml, handle):
        self.nvml, self.handle = pynvml, handle
        self.has_energy_counter = self._energy_mj() is not None
        # NVML 11.5 renamed throttle reasons "clock event reasons"; older bindings have the old name only.
        self._reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)

    def _energy_mj(self) -> float | None:
        try:  # millijoules since the driver loaded; Volta and later (NVML: nvmlDeviceGetTotalEnergyConsumption)
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def energy_joules(self) -> float | None:
        mj = self._energy_mj() if self.has_energy_counter else None
        return None if mj is None else mj / 1000

    def read(self) -> dict[str, float | None]:
        n, h = self.nvml, self.handle
        values = {"power_w": self._try(lambda: n.nvmlDeviceGetPowerUsage(h) / 1000),  # milliwatts
                  "sm_clock_mhz": self._try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                  "mem_clock_mhz": self._try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
                  "temperature_c": self._try(lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                  "throttle_mask": self._try(lambda: self._reasons(h)) if self._reasons else None}
        rates = self._try(lambda: n.nvmlDeviceGetUtilizationRates(h))
        values["gpu_utilization_pct"] = None if rates is None else rates.gpu
        values["mem_utilization_pct"] = None if rates is None else rates.memory
        return values

    def _try(self, read: Callable[[], object]):
        try:
            return read()
        except self.nvml.NVMLError:  # a sensor this GPU lacks (NotSupported): that value is None
            return None

    def close(self) -> None:
        self.nvml.nvmlShutdown()


class CpuReader:
    """RAPL package energy (where readable) and per-core frequencies of the cores this process may use."""

    source = "cpu"

    def __init__(self, powercap: Path = POWERCAP, cpu_sysfs: Path = CPU_SYSFS, cpuinfo: Path = Path("/proc/cpuinfo")):
        self.zones, self.energy_note = rapl_zones(powercap)
        self._last: dict[Path, int] = {}
        self._total_uj = 0.0
        self._lock = threading.Lock()  # the run's thread (mark_steady) and the sampler's both read energy
        cores = sorted(_usable_core_ids())
        self._freq_files = [f for f in (cpu_sysfs / f"cpu{c}" / "cpufreq" / "scaling_cur_freq" for c in cores) if f.exists()]
        self._cpuinfo = cpuinfo
        self.has_energy_counter = bool(self.zones)

    def energy_joules(self) -> float | None:
        """Joules since this reader started, every package summed; each counter's wrap at its
        max_energy_range_uj undone (RAPL wraps in minutes at a few hundred watts, so each sample reads it)."""
        if not self.zones:
            return None
        with self._lock:
            for energy_file, wrap in self.zones:
                now = int(energy_file.read_text())
                before = self._last.get(energy_file, now)
                self._total_uj += (now - before) % wrap if wrap else now - before
                self._last[energy_file] = now
            return self._total_uj / 1e6

    def read(self) -> dict[str, float | None]:
        self.energy_joules()  # keeps the wrap count current between marks
        return {"cpu_freq_mhz": self._frequency_mhz()}

    def _frequency_mhz(self) -> float | None:
        try:
            if self._freq_files:
                khz = [int(f.read_text()) for f in self._freq_files]
                return sum(khz) / len(khz) / 1000
            mhz = [float(line.split(":")[1]) for line in self._cpuinfo.read_text().splitlines() if line.startswith("cpu MHz")]
            return sum(mhz) / len(mhz) if mhz else None
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        pass


def _usable_core_ids() -> set[int]:
    import os

    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def rapl_zones(powercap: Path = POWERCAP) -> tuple[list[tuple[Path, int]], str | None]:
    """([(energy_uj file, max_energy_range_uj)] of each CPU package, None), or ([], why not)."""
    if not powercap.is_dir():
        return [], f"no RAPL here ({powercap} does not exist: not Linux on x86, or a virtual machine that hides it)"
    zones, unreadable = [], []
    for zone in sorted(powercap.glob("intel-rapl:*")):
        name = zone / "name"
        if ":" in zone.name.split("intel-rapl:", 1)[1] or not name.exists() or not name.read_text().startswith("package"):
            continue  # subzones (core, uncore, dram) are inside their package's count
        try:
            int((zone / "energy_uj").read_text())
            wrap = int((zone / "max_energy_range_uj").read_text()) if (zone / "max_energy_range_uj").exists() else 0
            zones.append((zone / "energy_uj", wrap))
        except (OSError, ValueError) as exc:
            unreadable.append(f"{zone / 'energy_uj'}: {type(exc).__name__}")
    if zones:
        return zones, None
    if unreadable:
        return [], (f"RAPL is not readable by this user ({'; '.join(unreadable)}; root only since Linux 5.10, "
                    "CVE-2020-8694): run as root or make energy_uj readable")
    return [], f"no RAPL package zone under {powercap}"


def open_reader(device) -> tuple[object | None, str | None]:
    """The reader for `device` (a torch.device): (reader, None), or (None, why there is none)."""
    if device.type != "cuda":
        return CpuReader(), None
    pynvml, handle, note = environment.open_nvml(device)
    return (None, note) if handle is None else (NvmlReader(pynvml, handle), None)


class Sampler:
    """Samples `reader` every `interval` seconds in a daemon thread from start() to stop().

    `mark_steady()` (called by the run when its warm-up ends, outside the timed region) opens the window
    the record's figures cover; the energy counter is read there and at stop(). A reader of None makes an
    inert sampler whose fields say why (`note`): telemetry off, or no NVML.
    """

    def __init__(self, reader, interval: float = INTERVAL_SECONDS, note: str | None = None,
                 clock: Callable[[], float] = time.perf_counter, state: str = "on"):
        self.reader, self.interval, self.note, self.clock = reader, interval, note, clock
        self.state = state if reader is not None else ("off" if state == "off" else "unavailable")
        self.samples: list[tuple[float, dict]] = []
        self.started_at = self.steady_at = self.stopped_at = None
        self.energy_start = self.energy_end = None
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.started_at = self.clock()
        if self.reader is not None:
            self._thread = threading.Thread(target=self._run, name="cnnbench-telemetry", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        begin = time.thread_time()  # this thread's own CPU time: the sampler's cost
        try:
            while True:
                self.samples.append((self.clock(), self.reader.read()))
                if self._stop.wait(self.interval):
                    break
        except Exception as exc:  # a sensor failing mid-run must not take the benchmark down
            self.note = f"sampling stopped early: {type(exc).__name__}: {exc}"
        finally:
            self.cpu_seconds = time.thread_time() - begin

    def mark_steady(self) -> None:
        if self.steady_at is None:
            self.steady_at = self.clock()
            self.energy_start = self._energy()
            self._sample_now()  # a window shorter than the interval still has its two ends

    def stop(self) -> None:
        if self.stopped_at is not None:
            return
        if self.steady_at is not None:
            self._sample_now()
        self.stopped_at = self.clock()
        self.energy_end = self._energy() if self.steady_at is not None else None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        if self.reader is not None:
            self.reader.close()

    def _sample_now(self) -> None:
        """One sample from the run's own thread, at a moment outside the timed steps (the window's ends)."""
        if self.reader is not None and self._thread is not None and self._thread.is_alive():
            try:
                self.samples.append((self.clock(), self.reader.read()))
            except Exception:  # the thread's own sampling reports a failing sensor
                pass

    def _energy(self) -> float | None:
        if self.reader is None or not self.reader.has_energy_counter:
            return None
        try:
            return self.reader.energy_joules()
        except Exception:  # the counter vanished mid-run: integrated power, or no energy, instead
            return None

    def window(self) -> list[dict]:
        """The samples of the steady window."""
        if self.steady_at is None:
            return []
        end = self.stopped_at if self.stopped_at is not None else math.inf
        return [values for t, values in self.samples if self.steady_at <= t <= end]

    def fields(self, images: int) -> dict:
        """The record's telemetry fields for `images` processed by this process in the steady window."""
        out = empty_fields(self.state, self.note)
        if self.reader is None:
            return out
        window, seconds = self.window(), (self.stopped_at or self.clock()) - (self.steady_at or self.clock())
        life = (self.stopped_at or self.clock()) - self.started_at
        out.update(telemetry_source=self.reader.source, telemetry_samples=len(window), telemetry_interval_s=self.interval,
                   telemetry_cpu_seconds=self.cpu_seconds, telemetry_cpu_share=self.cpu_seconds / life if life > 0 else None)
        for key, summaries in SUMMARIES.items():
            values = [v[key] for v in window if v.get(key) is not None]
            for name, how in summaries:
                out[name] = None if not values else {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}[how]
        masks = [v["throttle_mask"] for v in window if v.get("throttle_mask") is not None]
        if masks:
            seen = 0
            for mask in masks:
                seen |= int(mask)
            out["throttle_reasons"] = ",".join(name for bit, name in THROTTLE_REASONS.items() if seen & bit)
        out.update(self._energy_fields(images, seconds, out["power_w_mean"]))
        out.update(series(self.samples, self.steady_at, self.stopped_at))
        return out

    def _energy_fields(self, images: int, seconds: float, power_mean: float | None) -> dict:
        if self.energy_start is not None and self.energy_end is not None:
            joules, source = self.energy_end - self.energy_start, "rapl" if self.reader.source == "cpu" else "nvml_energy_counter"
        elif self.reader.source == "nvml" and power_mean is not None and seconds > 0:
            # No counter (before Volta): mean sampled power x the window's length, i.e. power integrated over time.
            joules, source = power_mean * seconds, "nvml_power_integrated"
        else:
            why = getattr(self.reader, "energy_note", None) or "no energy counter and no power samples in the steady window"
            return {"energy_source": f"unavailable: {why}"}
        return {"energy_j": joules, "energy_source": source,
                "images_per_joule": images / joules if joules > 0 else None}


FIELD_NAMES = ("telemetry", "telemetry_source", "telemetry_note", "telemetry_samples", "telemetry_interval_s",
               "telemetry_cpu_seconds", "telemetry_cpu_share", "energy_j", "energy_source", "images_per_joule",
               *[name for summaries in SUMMARIES.values() for name, _ in summaries], "throttle_reasons",
               "telemetry_series_t", *[f"telemetry_series_{key}" for key in SERIES])


def empty_fields(state: str, note: str | None) -> dict:
    """Every telemetry field, None, with the state (on, off, unavailable) and why."""
    out = dict.fromkeys(FIELD_NAMES)
    out.update(telemetry=state, telemetry_note=note)
    if state != "on":
        out["energy_source"] = f"unavailable: {note}"
    return out


def series(samples: list[tuple[float, dict]], start: float | None, end: float | None, points: int = SERIES_POINTS) -> dict:
    """Power, SM clock, temperature and CPU frequency over the steady window, averaged into at most `points`
    equal bins: `telemetry_series_t` holds each bin's middle, seconds after the window opened."""
    window = [(t, v) for t, v in samples if start is not None and end is not None and start <= t <= end]
    out = {"telemetry_series_t": None, **{f"telemetry_series_{key}": None for key in SERIES}}
    if not window or end <= start:
        return out
    bins = min(points, len(window))
    width = (end - start) / bins
    grouped: list[list[dict]] = [[] for _ in range(bins)]
    for t, values in window:
        grouped[min(bins - 1, int((t - start) / width))].append(values)
    keep = [k for k, group in enumerate(grouped) if group]
    out["telemetry_series_t"] = [round((k + 0.5) * width, 3) for k in keep]
    for key in SERIES:
        means = []
        for k in keep:
            values = [v[key] for v in grouped[k] if v.get(key) is not None]
            means.append(round(sum(values) / len(values), 2) if values else None)
        out[f"telemetry_series_{key}"] = means if any(m is not None for m in means) else None
    return out


def sampler_for(device, enabled: bool, interval: float = INTERVAL_SECONDS) -> Sampler:
    """The sampler of a run on `device`: inert when --no-telemetry or when the device has no reader."""
    if not enabled:
        return Sampler(None, interval, note="--no-telemetry", state="off")
    reader, note = open_reader(device)
    return Sampler(reader, interval, note=note)


def marking(after_step: Callable, sampler: Sampler, warmup: int) -> Callable:
    """`after_step` for the measured loop, that also opens the sampler's steady window when the last
    warm-up step's callback has run (outside the timed region; with no warm-up, at once)."""
    if warmup == 0:
        sampler.mark_steady()

    def call(index: int, steady: bool, output, seconds: float) -> None:
        after_step(index, steady, output, seconds)
        if not steady and index == warmup - 1:
            sampler.mark_steady()

    return call


def describe(record: dict) -> str | None:
    """One line for a run's final lines: power, energy, images per joule, clocks and throttling."""
    if record.get("telemetry") != "on":
        return f"Telemetry: {record.get('telemetry')} ({record.get('telemetry_note')})" if record.get("telemetry") else None
    parts = []
    if record.get("power_w_mean") is not None:
        parts.append(f"power {record['power_w_mean']:.0f} W mean, {record['power_w_max']:.0f} W max")
    if record.get("energy_j") is not None:
        per = f", {record['images_per_joule']:.2f} images/J" if record.get("images_per_joule") else ""
        parts.append(f"energy {record['energy_j']:.1f} J ({record['energy_source']}){per}")
    else:
        parts.append(f"energy {record.get('energy_source')}")
    if record.get("sm_clock_mhz_mean") is not None:
        parts.append(f"SM clock {record['sm_clock_mhz_mean']:.0f} MHz mean, {record['sm_clock_mhz_min']:.0f} min")
    if record.get("temperature_c_max") is not None:
        parts.append(f"{record['temperature_c_max']:.0f} C max")
    if record.get("cpu_freq_mhz_mean") is not None:
        parts.append(f"CPU {record['cpu_freq_mhz_mean']:.0f} MHz mean ({record['cpu_freq_mhz_min']:.0f}-{record['cpu_freq_mhz_max']:.0f})")
    if record.get("throttle_reasons"):
        parts.append(f"throttle reasons seen: {record['throttle_reasons']}")
    return f"Telemetry: {'; '.join(parts)} ({record['telemetry_samples']} samples)"
