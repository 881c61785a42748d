"""What a number was measured on: the CPU's vector ISA and the header's environment lines."""

import sys
import types

import pytest
import torch

from cnnbench.core import environment
from cnnbench.core.environment import cpu_isa

# Two logical processors of a Sapphire Rapids as /proc/cpuinfo lists them (flags abridged); the kernel
# also prints a "vmx flags" line, which must not be mistaken for the CPU's flags.
SAPPHIRE_RAPIDS = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer
bugs\t\t: spectre_v1

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
"""


@pytest.mark.parametrize("cpuinfo, capability, expected", [
    (SAPPHIRE_RAPIDS, "AVX512",
     "amx (avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16); torch AVX512"),
    # Cascade Lake under an older kernel, which spells VNNI without the underscore
    ("flags : avx avx2 avx512f avx512bw avx512vnni\n", "AVX512", "avx512 (avx2 avx512f avx512_vnni); torch AVX512"),
    # Haswell; and PyTorch held below the CPU by ATEN_CPU_CAPABILITY
    ("flags : sse4_2 avx avx2 fma\n", "AVX2", "avx2 (avx2); torch AVX2"),
    ("flags : avx avx2 avx512f\n", "DEFAULT", "avx512 (avx2 avx512f); torch DEFAULT"),
    # an Arm CPU: a Features line, none of the x86 flags
    ("processor : 0\nFeatures : fp asimd sve sve2 bf16 i8mm\n", "SVE256", "baseline; torch SVE256"),
    ("flags : fpu sse sse2\n", "DEFAULT", "baseline; torch DEFAULT"),
    # no /proc/cpuinfo (not Linux) and no capability given
    ("", None, "unknown; torch unknown"),
])
def test_cpu_isa_from_cpuinfo_text(cpuinfo, capability, expected):
    assert cpu_isa(cpuinfo, capability) == expected


def test_the_vmx_flags_line_is_not_the_cpu_flags():
    text = "vmx flags : avx512f amx_tile\nflags : avx avx2\n"
    assert cpu_isa(text, "AVX2") == "avx2 (avx2); torch AVX2"


def test_every_record_carries_this_machine_s_isa():
    env = environment.collect()
    assert env["env.cpu_isa"].endswith(f"; torch {torch.backends.cpu.get_cpu_capability()}")
    assert env["env.cpu_isa"].split()[0] in {"amx", "avx512", "avx2", "baseline", "unknown"}


def test_header_lines_are_four_short_lines_with_the_isa():
    env = environment.collect()
    lines = environment.header_lines(env)
    assert [line.split(" = ")[0] for line in lines] == ["host", "cpu", "gpu", "versions"]
    assert lines[1].endswith(f"; isa = {env['env.cpu_isa']}")
    assert f"torch {env['env.torch']}" in lines[3] and f"cnnbench {env['env.cnnbench']}" in lines[3]


class _FakeNVML(types.ModuleType):
    """pynvml as nvidia-ml-py provides it, for the calls environment.device_memory_used makes."""

    class NVMLError(Exception):
        pass

    def __init__(self, used_by_uuid: dict[str, int], start_fails: bool = False):
        super().__init__("pynvml")
        self.used_by_uuid, self.start_fails, self.calls = used_by_uuid, start_fails, []

    def nvmlInit(self):
        self.calls.append("init")
        if self.start_fails:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.used_by_uuid:
            raise self.NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=self.used_by_uuid[handle], total=141 * 2**30)

    def nvmlShutdown(self):
        self.calls.append("shutdown")


CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def gpu_uuid(monkeypatch):
    """cuda:0 is the GPU whose UUID is set (what CUDA reports, without NVML's GPU- prefix)."""
    def set_uuid(uuid: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(uuid=uuid))
    return set_uuid


def test_device_memory_is_nvml_s_for_the_run_s_gpu_found_by_uuid(monkeypatch, gpu_uuid):
    # Two GPUs; CUDA_VISIBLE_DEVICES made the second one cuda:0, so NVML's index 0 would be the wrong one.
    nvml = _FakeNVML({"GPU-aaaa": 3 * 2**30, "GPU-bbbb": 1536 * 2**20})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu_uuid("bbbb")
    assert environment.device_memory_used(CUDA0) == (1536.0, None)
    assert nvml.calls == ["init", "shutdown"]
    nvml.used_by_uuid["MIG-cccc"] = 2**30  # a MIG instance: its own UUID
    gpu_uuid("cccc")
    assert environment.device_memory_used(CUDA0) == (1024.0, None)


def test_device_memory_says_why_when_nvml_cannot_tell(monkeypatch, gpu_uuid):
    gpu_uuid("dddd")
    nvml = _FakeNVML({"GPU-aaaa": 2**30})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    used, note = environment.device_memory_used(CUDA0)
    assert used is None and "NVML knows no device with the UUID of cuda:0 (dddd)" in note
    assert nvml.calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNVML({}, start_fails=True))
    assert environment.device_memory_used(CUDA0) == (None, "NVML did not start (Driver Not Loaded)")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace())
    used, note = environment.device_memory_used(CUDA0)  # no UUID: no figure, and the run goes on
    assert used is None and note.startswith("PyTorch did not give the UUID of cuda:0")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert environment.device_memory_used(CUDA0) == (None, "nvidia-ml-py is not installed: pip install -e '.[gpu]'")


def test_device_memory_is_not_asked_off_cuda(monkeypatch):
    nvml = _FakeNVML({})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert environment.device_memory_used(torch.device("cpu")) == (None, None) and nvml.calls == []
