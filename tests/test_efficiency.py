"""efficiency.py: achieved TFLOP/s and MFU against hand-computed values, the datasheet table's matching,
and the measured peak's cache."""

from __future__ import annotations

import json

import pytest
import torch

from cnnbench.core import efficiency
from cnnbench.models.registry import forward_flops, resolve_entry
from helpers import read_jsonl


def test_mfu_arithmetic_against_hand_computed_values():
    # ResNet-50 training at 2,000 img/s: 3 x 8.18 GFLOPs x 2,000 = 49.08 TFLOP/s; on one H100 SXM at bf16
    # (989.5 dense) that is 4.96%; the same figure over 2 GPUs is half.
    achieved = efficiency.achieved_tflops(8.18e9, "train", 2000)
    assert achieved == pytest.approx(49.08)
    assert efficiency.mfu(achieved, 989.5) == pytest.approx(0.049601, abs=1e-6)
    assert efficiency.mfu(achieved, 989.5, devices=2) == pytest.approx(0.0248, abs=1e-4)
    # Inference counts one forward: 8.18 GFLOPs x 10,000 img/s = 81.8 TFLOP/s, 26.2% of an A100's 312.
    assert efficiency.achieved_tflops(8.18e9, "infer", 10_000) == pytest.approx(81.8)
    assert efficiency.mfu(81.8, 312.0) == pytest.approx(0.26218, abs=1e-5)
    assert efficiency.mfu(81.8, None) is None and efficiency.mfu(None, 312.0) is None


@pytest.mark.parametrize("name, precision, label, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", "NVIDIA H100 SXM", 989.5),
    ("NVIDIA H100 PCIe", "fp16", "NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "tf32", "NVIDIA H100 NVL", 417.5),
    ("NVIDIA H200", "fp32", "NVIDIA H200 SXM", 67.0),
    ("NVIDIA H200 NVL", "int8", "NVIDIA H200 NVL", 1670.5),
    ("NVIDIA A100-SXM4-80GB", "tf32", "NVIDIA A100", 156.0),
    ("NVIDIA L40S", "bf16", "NVIDIA L40S", 362.05),
    ("NVIDIA L4", "bf16", "NVIDIA L4", 121.0),
    ("NVIDIA B200", "bf16", "NVIDIA B200 (HGX)", 2250.0),
])
def test_datasheet_peaks_match_the_gpu_s_name(name, precision, label, tflops):
    found = efficiency.datasheet_peak(name, precision)
    assert found == efficiency.Peak(tflops, f"datasheet: {label} dense {precision}")


def test_a_gpu_outside_the_table_or_a_precision_it_lacks():
    assert efficiency.datasheet_peak("NVIDIA GeForce RTX 4090", "bf16") is None  # measured instead
    lacking = efficiency.datasheet_peak("Tesla V100-SXM2-32GB", "bf16")
    assert lacking.tflops is None and lacking.source == "unavailable: the NVIDIA V100 SXM2 datasheet gives no bf16 figure"


QUIET, BUSY = (0.1, 0.1, 2), (3.9, 3.0, 2)  # machine_load(): (load average, other processes' part, cores)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty peak cache, no peak measured yet in this process, and a quiet machine."""
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(efficiency, "_THIS_PROCESS", {})
    monkeypatch.setattr(efficiency, "machine_load", lambda: QUIET)
    return tmp_path / "cache" / "peaks.json"


def test_a_cpu_peak_is_measured_once_then_read_from_the_cache(fresh_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(efficiency, "measure_peak", lambda device, precision: calls.append(precision) or (1.25, "fake product"))
    cpu = torch.device("cpu")
    first = efficiency.peak(cpu, "bf16")
    assert first.tflops == 1.25 and first.source == "measured: fake product (load average 0.10)" and calls == ["bf16"]
    assert first.cached and first.load_average == 0.1 and first.measured_at is not None
    again = efficiency.peak(cpu, "bf16")
    assert again.tflops == 1.25 and again.source.startswith("measured: fake product (cached ") and calls == ["bf16"]
    assert "load average 0.10" in again.source and again.measured_at == pytest.approx(first.measured_at)
    saved = json.loads(fresh_cache.read_text())
    assert list(saved) == [efficiency.machine_key(cpu, "bf16")]
    assert torch.__version__ in list(saved)[0] and "threads" in list(saved)[0]
    assert saved[list(saved)[0]]["load_average"] == 0.1 and saved[list(saved)[0]]["measured_at_unix"] > 0
    efficiency.peak(cpu, "fp32")  # another precision is another measurement
    assert calls == ["bf16", "fp32"]
    fresh_cache.write_text("{not json")  # a damaged cache is measured again, not an error
    assert efficiency.peak(cpu, "bf16").source.startswith("measured: fake product") and calls == ["bf16", "fp32", "bf16"]
    assert efficiency.peak(cpu, "int8", measure=False).tflops is None


def test_a_probe_taken_on_a_busy_machine_is_used_once_never_cached(fresh_cache, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(efficiency, "measure_peak", lambda device, precision: calls.append(precision) or (0.08, "fake product"))
    monkeypatch.setattr(efficiency, "machine_load", lambda: BUSY)
    cpu = torch.device("cpu")
    found = efficiency.peak(cpu, "fp32")
    assert found.tflops == 0.08 and not found.cached and found.load_average == 3.9
    assert "NOT cached: measured while the machine was busy (load average 3.90" in found.source
    assert "cnnbench models --remeasure-peaks" in found.source
    said = capsys.readouterr().out.strip().splitlines()
    assert said == ["Peak fp32: measured while the machine was busy (load average 3.90 on 2 cores); 0.08 used for this "
                    "run only, not cached"]
    assert not fresh_cache.exists()
    assert efficiency.peak(cpu, "fp32") is found and calls == ["fp32"]  # once per process
    monkeypatch.setattr(efficiency, "machine_load", lambda: QUIET)  # quiet again: --remeasure-peaks caches it
    assert efficiency.peak(cpu, "fp32", remeasure=True).cached and calls == ["fp32", "fp32"]
    assert efficiency.machine_key(cpu, "fp32") in json.loads(fresh_cache.read_text())


def test_a_sweep_s_configurations_share_a_peak_measured_under_load_but_never_cache_it(fresh_cache, monkeypatch, tmp_path):
    """recipes/sweep.py gives its children a file of their own: the first measures under load, the next reuse it
    (the load they see is mostly their finished siblings'); the cache stays empty."""
    calls = []
    monkeypatch.setattr(efficiency, "measure_peak", lambda device, precision: calls.append(precision) or (0.08, "fake product"))
    monkeypatch.setattr(efficiency, "machine_load", lambda: BUSY)
    monkeypatch.setenv(efficiency.SWEEP_PEAKS_VARIABLE, str(tmp_path / "sweep" / "peaks.json"))
    (tmp_path / "sweep").mkdir()
    cpu = torch.device("cpu")
    first = efficiency.peak(cpu, "fp32")
    monkeypatch.setattr(efficiency, "_THIS_PROCESS", {})  # the next configuration: another process
    again = efficiency.peak(cpu, "fp32")
    assert calls == ["fp32"] and again.tflops == first.tflops and not again.cached
    assert again.source.endswith("(measured by an earlier configuration of this sweep)") and "NOT cached" in again.source
    assert not fresh_cache.exists()
    assert efficiency.peak(cpu, "fp32", remeasure=True) and calls == ["fp32", "fp32"]  # --remeasure-peaks measures


def test_the_machine_is_busy_when_other_processes_load_a_quarter_of_its_cores():
    assert not efficiency.busy(0.5, 2) and efficiency.busy(0.6, 2)
    assert not efficiency.busy(15.0, 64) and efficiency.busy(17.0, 64)


def test_this_process_s_own_load_is_not_counted_as_other_work(monkeypatch):
    # A process 60 s old that used 2 cores all along adds 2 x (1 - 1/e) = 1.26 to the load average.
    monkeypatch.setattr(efficiency.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.setattr(efficiency.environment, "usable_cores", lambda: 2)
    monkeypatch.setattr(efficiency.environment, "process_start_time", lambda: efficiency.time.time() - 60)
    monkeypatch.setattr(efficiency.os, "times", lambda: efficiency.os.times_result((100.0, 20.0, 0, 0, 0)))
    load, others, cores = efficiency.machine_load()
    assert load == 1.5 and cores == 2 and others == pytest.approx(1.5 - 2 * (1 - 2.718281828 ** -1), abs=1e-3)


def test_an_old_cached_peak_and_remeasure_peaks_measure_again(fresh_cache, monkeypatch, cli):
    calls = []
    monkeypatch.setattr(efficiency, "measure_peak", lambda device, precision: calls.append(precision) or (0.2, "fake product"))
    cpu = torch.device("cpu")
    efficiency.remember(cpu, "fp32", 0.1, "old probe", 0.2, measured_at=efficiency.time.time() - efficiency.MAX_AGE_S - 1)
    assert efficiency.peak(cpu, "fp32").tflops == 0.2 and calls == ["fp32"]  # too old: measured again, replaced
    efficiency.remember(cpu, "fp32", 0.1, "young probe", 0.2, measured_at=efficiency.time.time() - 2 * 86400)
    assert efficiency.peak(cpu, "fp32").tflops == 0.1 and calls == ["fp32"]
    legacy = json.loads(fresh_cache.read_text())  # an older cnnbench's entry: no time, no load
    legacy[efficiency.machine_key(cpu, "fp32")] = {"tflops": 0.081, "method": "2048x2048", "measured_at": "2026-11-01T00:00:00"}
    fresh_cache.write_text(json.dumps(legacy))
    assert efficiency.peak(cpu, "fp32").tflops == 0.2 and calls == ["fp32", "fp32"]
    code, out, err = cli("models", "--remeasure-peaks")
    assert code == 0, err
    assert calls == ["fp32", "fp32", "fp32", "bf16", "int8"] and "  fp32: 0.2 TFLOP/s (measured: fake product (load average 0.10))" in out


def test_a_record_gives_its_peak_s_age_and_load(fresh_cache, monkeypatch):
    cpu = torch.device("cpu")
    efficiency.remember(cpu, "fp32", 0.5, "young probe", 0.3, measured_at=efficiency.time.time() - 3 * 3600)
    r = efficiency.fields(4e9, "infer", "fp32", cpu, 25.0)
    assert r["achieved_tflops"] == pytest.approx(0.1) and r["mfu"] == pytest.approx(0.2) and not r["peak_underestimated"]
    assert r["peak_age_s"] == pytest.approx(3 * 3600, abs=60) and r["peak_load_average"] == 0.3 and r["peak_cached"]
    assert efficiency.describe(r).endswith(", 3.0 h old)") and "MFU 20.0% of 0.5 TFLOP/s fp32 peak" in efficiency.describe(r)


def test_an_mfu_above_100_percent_is_flagged_not_printed(fresh_cache):
    cpu = torch.device("cpu")
    efficiency.remember(cpu, "fp32", 0.081, "a probe under load", 3.5)
    r = efficiency.fields(8.18e9, "infer", "fp32", cpu, 19.2)  # 0.157 TFLOP/s achieved: 194% of 0.081
    assert r["mfu"] is None and r["peak_underestimated"] is True and r["achieved_tflops"] == pytest.approx(0.157, abs=1e-3)
    line = efficiency.describe(r)
    assert "MFU not given" in line and "%" not in line and "peak is underestimated" in line
    assert "cnnbench models --remeasure-peaks" in line


def test_the_measured_peak_is_the_best_of_products_and_convolutions(monkeypatch):
    monkeypatch.setattr(efficiency, "CPU_SIDES", (128, 256))
    monkeypatch.setattr(efficiency, "CONV_SHAPES", ((16, 14),))
    tflops, method = efficiency.measure_peak(torch.device("cpu"), "fp32")
    assert 1e-4 < tflops < 50 and "at fp32 on " in method and "the best of 3 probes (each the best of 5" in method
    for probe in ("128x128 matrix product", "256x256 matrix product", "3x3 convolution 16 ch 14x14 batch 16"):
        assert probe in method
    tflops, method = efficiency.measure_peak(torch.device("cpu"), "int8")
    assert 1e-4 < tflops < 100 and "torch.ao quantized Linear" in method and "the best of 2 sides" in method
    assert efficiency.measure_peak(torch.device("cpu"), "tf32") == (None, "tf32 exists on CUDA tensor cores only")


def test_a_slow_emulated_product_stops_growing_the_matrix(monkeypatch):
    monkeypatch.setattr(efficiency, "CPU_SIDES", (64, 128, 256))
    monkeypatch.setattr(efficiency, "SLOW_PRODUCT_SECONDS", 0.0)  # every product is "slow": only the first side runs
    probes = efficiency._product_probes(torch.float32, torch.device("cpu"))
    assert [name for name, _ in probes] == ["64x64 matrix product"]


def test_a_record_s_efficiency_fields_follow_from_its_own_figures(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(efficiency, "peak", lambda device, precision, **kw: efficiency.Peak(0.5, "measured: fake"))
    code, out, err = cli("infer", tiny_spec, "--random-weights", "--batch-size", "2", "--num-batches", "3", "--warmup", "1",
                         "--device", "cpu")
    assert code == 0, err
    (r,) = read_jsonl("results_infer/runs.jsonl")
    flops = forward_flops(resolve_entry(str(tiny_spec)), 16)
    assert r["forward_gflops_per_image"] == pytest.approx(flops / 1e9) and r["flop_passes"] == 1
    assert r["achieved_tflops"] == pytest.approx(flops * r["images_per_sec_from_mean_time"] / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.5) and r["peak_source"] == "measured: fake"
    assert f"MFU {100 * r['mfu']:.1f}% of 0.5 TFLOP/s fp32 peak (measured: fake)" in out


def test_models_shows_training_flops_and_this_machine_s_peaks(cli, monkeypatch):
    asked = []
    monkeypatch.setattr(efficiency, "peak", lambda device, precision, **kw: asked.append(precision)
                        or efficiency.Peak(0.25 if precision != "int8" else None, "measured: fake" if precision != "int8" else
                                           "unavailable: no int8 here"))
    code, out, err = cli("models")
    assert code == 0, err
    resnet50 = next(line for line in out.splitlines() if line.startswith("│ resnet50"))
    assert resnet50.split("│")[7].strip() == "24.54"  # 3 x 8.18
    assert asked == ["fp32", "bf16", "int8"]
    assert "  fp32: 0.25 TFLOP/s (measured: fake)" in out and "  int8: unavailable: no int8 here" in out
