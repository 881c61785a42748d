"""telemetry.py: the sampler thread with a stand-in NVML, RAPL's counters and their wrap, what a record
says when nothing can be read, --no-telemetry end to end, and the sampler's own cost."""

from __future__ import annotations

import sys
import threading
import time
import types

import pytest
import torch

from cnnbench.core import telemetry
from helpers import read_jsonl


class FakeNVML(types.ModuleType):
    """pynvml as nvidia-ml-py provides it, for the calls telemetry.NvmlReader makes. Power rises by 1 W a
    read; the energy counter (mJ) advances 250 J a read, unless the GPU has none (before Volta)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self, energy_counter: bool = True, throttle: int = 0x4 | 0x40, uuids=("GPU-aaaa",)):
        super().__init__("pynvml")
        self.energy_counter, self.throttle, self.uuids = energy_counter, throttle, uuids
        self.reads, self.energy_mj, self.calls = 0, 1_000_000.0, []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.uuids:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetPowerUsage(self, handle):
        self.reads += 1
        return 300_000 + 1000 * (self.reads % 5)  # milliwatts: 300..304 W

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_counter:
            raise self.NVMLError("Not Supported")
        self.energy_mj += 250_000
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return {self.NVML_CLOCK_SM: 1980 - 10 * (self.reads % 3), self.NVML_CLOCK_MEM: 2619}[kind]

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 60 + self.reads % 7

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self.throttle


def run_sampler(reader, steady_after=0.05, seconds=0.4, interval=0.01):
    sampler = telemetry.Sampler(reader, interval=interval)
    with sampler:
        time.sleep(steady_after)
        sampler.mark_steady()
        time.sleep(seconds)
    return sampler


def test_the_sampler_thread_starts_samples_the_steady_window_and_stops():
    nvml = FakeNVML()
    sampler = run_sampler(telemetry.NvmlReader(nvml, "GPU-aaaa"))
    assert not sampler._thread.is_alive() and nvml.calls == ["shutdown"]
    f = sampler.fields(images=1000)
    assert f["telemetry"] == "on" and f["telemetry_source"] == "nvml"
    assert 15 <= f["telemetry_samples"] <= 45  # 0.4 s at 100 Hz, allowing a busy machine
    assert len(sampler.samples) > f["telemetry_samples"]  # the warm-up's samples are left out
    assert 300 <= f["power_w_mean"] <= 304 and f["power_w_max"] <= 304
    assert f["sm_clock_mhz_min"] in (1960, 1970) and 1960 <= f["sm_clock_mhz_mean"] <= 1980
    assert f["mem_clock_mhz_mean"] == 2619 and f["gpu_utilization_pct_mean"] == 97
    assert 60 <= f["temperature_c_max"] <= 66
    assert f["throttle_reasons"] == "sw_power_cap,hw_thermal"
    # The counter was read at mark_steady and at stop only (250 J a read in between: none).
    assert f["energy_source"] == "nvml_energy_counter" and f["energy_j"] == 250.0
    assert f["images_per_joule"] == 1000 / 250.0
    assert f["telemetry_series_t"] == sorted(f["telemetry_series_t"]) and len(f["telemetry_series_t"]) <= telemetry.SERIES_POINTS
    assert all(300 <= p <= 304 for p in f["telemetry_series_power_w"])


def test_without_an_energy_counter_power_is_integrated_over_the_window():
    sampler = run_sampler(telemetry.NvmlReader(FakeNVML(energy_counter=False), "GPU-aaaa"), seconds=0.3)
    f = sampler.fields(images=600)
    seconds = sampler.stopped_at - sampler.steady_at
    assert f["energy_source"] == "nvml_power_integrated"
    assert f["energy_j"] == pytest.approx(f["power_w_mean"] * seconds)
    assert f["images_per_joule"] == pytest.approx(600 / f["energy_j"])


def test_a_gpu_is_found_by_uuid_and_without_nvml_the_record_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(uuid="bbbb"))
    nvml = FakeNVML(uuids=("GPU-aaaa", "GPU-bbbb"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = telemetry.sampler_for(torch.device("cuda", 0), enabled=True)
    assert isinstance(sampler.reader, telemetry.NvmlReader) and sampler.reader.handle == "GPU-bbbb"
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    f = telemetry.sampler_for(torch.device("cuda", 0), enabled=True).fields(10)
    assert f["telemetry"] == "unavailable" and "pip install -e '.[gpu]'" in f["telemetry_note"]
    assert f["energy_source"].startswith("unavailable: nvidia-ml-py is not installed") and f["power_w_mean"] is None
    off = telemetry.sampler_for(torch.device("cpu"), enabled=False).fields(10)
    assert off["telemetry"] == "off" and off["energy_source"] == "unavailable: --no-telemetry"
    assert set(off) == set(f) == set(telemetry.FIELD_NAMES)  # every record has every field


def _powercap(tmp_path, energy: int, wrap: int = 1000):
    zone = tmp_path / "powercap" / "intel-rapl:0"
    (zone / "intel-rapl:0:0").mkdir(parents=True)  # a subzone (core), already inside the package's count
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
    (zone / "intel-rapl:0:0" / "name").write_text("core\n")
    return zone


def test_rapl_package_energy_is_counted_across_the_counter_s_wrap(tmp_path):
    zone = _powercap(tmp_path, energy=900)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("cpu MHz\t\t: 2000.0\ncpu MHz\t\t: 3000.0\n")
    reader = telemetry.CpuReader(tmp_path / "powercap", tmp_path / "nocpufreq", cpuinfo)
    assert reader.energy_joules() == 0.0
    (zone / "energy_uj").write_text("100\n")  # wrapped at 1000 uJ: 200 uJ later
    assert reader.energy_joules() == pytest.approx(200e-6)
    (zone / "energy_uj").write_text("400\n")
    assert reader.energy_joules() == pytest.approx(500e-6)
    assert reader.read() == {"cpu_freq_mhz": 2500.0}


def test_unreadable_or_absent_rapl_makes_energy_unavailable_with_the_reason(tmp_path):
    zones, note = telemetry.rapl_zones(tmp_path / "absent")
    assert zones == [] and note.startswith("no RAPL here")
    zone = _powercap(tmp_path, energy=5)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # reading it fails as a root-only file would for a user
    zones, note = telemetry.rapl_zones(tmp_path / "powercap")
    assert zones == [] and note.startswith("RAPL is not readable by this user") and "CVE-2020-8694" in note
    reader = telemetry.CpuReader(tmp_path / "powercap", tmp_path, tmp_path / "nocpuinfo")
    f = run_sampler(reader, seconds=0.1).fields(100)
    assert f["energy_j"] is None and f["energy_source"] == f"unavailable: {note}"
    assert f["cpu_freq_mhz_mean"] is None and f["telemetry"] == "on"


def test_the_steady_window_opens_after_the_last_warm_up_step():
    sampler = telemetry.Sampler(None)
    seen = []
    call = telemetry.marking(lambda *args: seen.append(args[:2]), sampler, warmup=2)
    call(0, False, None, 0.1)
    assert sampler.steady_at is None
    call(1, False, None, 0.1)
    assert sampler.steady_at is not None and seen == [(0, False), (1, False)]
    no_warmup = telemetry.Sampler(None)
    telemetry.marking(lambda *args: None, no_warmup, warmup=0)
    assert no_warmup.steady_at is not None


def test_the_sampler_costs_under_one_percent_of_a_core():
    """At 10 Hz on this CPU's own reader (/proc/cpuinfo, RAPL where present): the thread's CPU time over
    the wall time. A busy machine slows the thread's reads, not its count of CPU seconds."""
    busy = threading.Event()
    sampler = telemetry.Sampler(telemetry.CpuReader())
    with sampler:
        sampler.mark_steady()
        busy.wait(1.5)
    f = sampler.fields(1)
    assert 10 <= f["telemetry_samples"] <= 17
    assert f["telemetry_cpu_share"] < 0.01, f


def test_train_records_telemetry_and_no_telemetry_turns_it_off(cli, tiny_spec):
    common = [tiny_spec, "--batch-size", "2", "--num-batches", "3", "--warmup", "1", "--display-every", "1", "--device", "cpu"]
    code, out, err = cli("train", *common)
    assert code == 0, err
    assert "Telemetry: " in out and "Efficiency: " in out and "MFU " in out
    code, out, err = cli("train", *common, "--no-telemetry", "--log-dir", "other")
    assert code == 0, err
    on, off = read_jsonl("results_train/runs.jsonl")
    assert on["telemetry"] == "on" and on["telemetry_source"] == "cpu" and on["telemetry_samples"] >= 1
    assert on["energy_source"] == "rapl" or on["energy_source"].startswith("unavailable: ")
    assert off["telemetry"] == "off" and off["telemetry_samples"] is None and off["config.measure.no_telemetry"] is True
    assert "Telemetry: off (--no-telemetry)" in out
