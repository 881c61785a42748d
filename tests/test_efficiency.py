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


def test_a_cpu_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(efficiency, "measure_peak", lambda device, precision: calls.append(precision) or (1.25, "fake product"))
    cpu = torch.device("cpu")
    first = efficiency.peak(cpu, "bf16")
    assert first == efficiency.Peak(1.25, "measured: fake product") and calls == ["bf16"]
    again = efficiency.peak(cpu, "bf16")
    assert again.tflops == 1.25 and again.source.startswith("measured: fake product (cached ") and calls == ["bf16"]
    saved = json.loads((tmp_path / "cache" / "peaks.json").read_text())
    assert list(saved) == [efficiency.machine_key(cpu, "bf16")]
    assert torch.__version__ in list(saved)[0] and "threads" in list(saved)[0]
    efficiency.peak(cpu, "fp32")  # another precision is another measurement
    assert calls == ["bf16", "fp32"]
    (tmp_path / "cache" / "peaks.json").write_text("{not json")  # a damaged cache is measured again, not an error
    assert efficiency.peak(cpu, "bf16").source == "measured: fake product" and calls == ["bf16", "fp32", "bf16"]
    assert efficiency.peak(cpu, "int8", measure=False).tflops is None


def test_the_measured_matrix_product_gives_a_plausible_figure(monkeypatch):
    monkeypatch.setattr(efficiency, "CPU_MAX_SIDE", 256)
    tflops, method = efficiency.measure_peak(torch.device("cpu"), "fp32")
    assert 1e-4 < tflops < 50 and method.startswith("256x256 fp32 matrix product on ")
    tflops, method = efficiency.measure_peak(torch.device("cpu"), "int8")
    assert 1e-4 < tflops < 100 and "torch.ao quantized Linear" in method
    assert efficiency.measure_peak(torch.device("cpu"), "tf32") == (None, "tf32 exists on CUDA tensor cores only")


def test_a_record_s_efficiency_fields_follow_from_its_own_figures(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(efficiency, "peak", lambda device, precision, measure=True: efficiency.Peak(0.5, "measured: fake"))
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
    monkeypatch.setattr(efficiency, "peak", lambda device, precision, measure=True: asked.append(precision)
                        or efficiency.Peak(0.25 if precision != "int8" else None, "measured: fake" if precision != "int8" else
                                           "unavailable: no int8 here"))
    code, out, err = cli("models")
    assert code == 0, err
    resnet50 = next(line for line in out.splitlines() if line.startswith("│ resnet50"))
    assert resnet50.split("│")[7].strip() == "24.54"  # 3 x 8.18
    assert asked == ["fp32", "bf16", "int8"]
    assert "  fp32: 0.25 TFLOP/s (measured: fake)" in out and "  int8: unavailable: no int8 here" in out
