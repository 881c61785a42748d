"""bf16 in the default CPU inference set where the CPU has it natively (issue 26): the engine table's
conditional `sweep` pair, the CPU flags it reads (core/environment.py) and what the sweep says about it."""

from __future__ import annotations

import torch

from cnnbench.core import config, environment
from cnnbench.engines import table
from cnnbench.recipes import sweep

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"
CPU = torch.device("cpu")
TODAY = [("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
WITH_BF16 = [*TODAY, ("openvino", "bf16")]  # the measured bf16 engine (engines/table.py): last, in table order


def test_native_bf16_is_read_from_the_cpu_flags():
    assert environment.cpu_flags(ZEN4) >= {"avx512_vnni", "avx512_bf16"}  # the alias folded
    assert environment.native_bf16(environment.cpu_flags(ZEN4))
    assert environment.native_bf16(environment.cpu_flags(SAPPHIRE_RAPIDS))
    assert not environment.native_bf16(environment.cpu_flags(AVX2_ONLY))
    assert environment.cpu_flags("") == frozenset() and not environment.native_bf16(frozenset())
    assert set(table.NATIVE_BF16) == set(environment.NATIVE_BF16_FLAGS)  # the table's copy (it imports no torch)


def test_the_table_adds_the_measured_bf16_engine_only_where_bf16_is_native():
    said = []
    assert table.default_pairs("pytorch", "cpu", environment.cpu_flags(AVX2_ONLY), said.append) == TODAY
    assert said == ["Default openvino/bf16 left out: this CPU has none of avx512_bf16, amx_bf16, so its bf16 is emulated, "
                    "slower than fp32"]
    said.clear()
    pairs = table.default_pairs("pytorch", "cpu", environment.cpu_flags(SAPPHIRE_RAPIDS), said.append)
    assert pairs == WITH_BF16
    assert said[0].startswith("Default openvino/bf16 added: this CPU has amx_bf16 (native bf16); OpenVINO was the "
                              "fastest guarded bf16 engine measured")
    assert table.default_pairs("pytorch", "cpu") == TODAY  # no flags given: nothing conditional
    assert ("openvino", "bf16") not in table.default_pairs("pytorch", "cuda", environment.cpu_flags(ZEN4))
    assert "openvino bf16 where the CPU has avx512_bf16 or amx_bf16" in table.default_pairs_help()


def test_infer_all_s_defaults_follow_the_machine_s_cpu(monkeypatch, capsys):
    settings = config.build(config.InferSweepConfig, {})
    avx2 = environment.cpu_flags(AVX2_ONLY)
    monkeypatch.setattr(environment, "cpu_flags", lambda: avx2)
    assert sweep.engine_pairs(settings, CPU) == TODAY
    assert "Default openvino/bf16 left out: this CPU has none of" in capsys.readouterr().out
    monkeypatch.setattr(environment, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert sweep.engine_pairs(settings, CPU) == WITH_BF16
    assert "Default openvino/bf16 added: this CPU has avx512_bf16" in capsys.readouterr().out
    # an explicit --precisions is the user's: no CPU rule adds to it or takes from it
    chosen = config.build(config.InferSweepConfig, {"engines": "eager", "precisions": "fp32"})
    assert sweep.engine_pairs(chosen, CPU) == [("eager", "fp32")]
