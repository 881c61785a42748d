"""The machine and software a number was measured on, recorded with every result."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch
import torchvision

import cnnbench


def _cpu_model() -> str:
    for line in _read_cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# Flags that decide how fast convolutions and int8/bf16 kernels run, in the order they are printed.
# /proc/cpuinfo spells VNNI both ways across kernel versions; the first spelling is the one recorded.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_FLAG_ALIASES = {"avx512vnni": "avx512_vnni"}


def cpu_isa(cpuinfo: str, torch_capability: str | None) -> str:
    """The CPU's vector ISA as one compact, stable string, from /proc/cpuinfo's text and PyTorch's report.

    Format: ``LEVEL (FLAG FLAG ...); torch CAPABILITY``, e.g.
    ``avx512 (avx2 avx512f avx512_vnni avx512_bf16); torch AVX512``.

    - LEVEL: the widest vector ISA the CPU has: ``amx`` (amx_tile), ``avx512`` (avx512f), ``avx2``,
      ``baseline`` (none of these; e.g. an Arm CPU) or ``unknown`` (no flags line in the text).
    - FLAGs: those of ISA_FLAGS the CPU has, in ISA_FLAGS' order (``avx512vnni`` is written ``avx512_vnni``);
      the parentheses are left out when there are none.
    - CAPABILITY: ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``, ``DEFAULT``, ...):
      the kernels PyTorch dispatches to, which ATEN_CPU_CAPABILITY can lower below what the CPU has;
      ``unknown`` when not given.

    A pure function of its arguments so that it can be checked against any CPU's text.
    """
    flags_line = next((line for line in cpuinfo.splitlines() if line.split(":", 1)[0].strip() in ("flags", "Features")), None)
    if flags_line is None:
        level, present = "unknown", []
    else:
        have = {_FLAG_ALIASES.get(flag, flag) for flag in flags_line.split(":", 1)[1].split()}
        present = [flag for flag in ISA_FLAGS if flag in have]
        level = next((name for flag, name in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2")) if flag in have), "baseline")
    flags = f" ({' '.join(present)})" if present else ""
    return f"{level}{flags}; torch {torch_capability or 'unknown'}"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo's flags line, aliases folded: avx512vnni -> avx512_vnni); empty
    where there is none (not Linux, an Arm CPU's Features line has no x86 flags). `cpuinfo`: the text to read
    (tests pass a fake CPU's); default this machine's."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    line = next((line for line in text.splitlines() if line.split(":", 1)[0].strip() in ("flags", "Features")), "")
    return frozenset(_FLAG_ALIASES.get(flag, flag) for flag in line.partition(":")[2].split())


# Native bf16 arithmetic on a CPU: AVX512_BF16 (dot products of bf16 pairs, Cooper Lake, Zen 4 and later) or
# AMX's bf16 tiles (Sapphire Rapids and later). Without either, bf16 is converted to fp32 and back and runs no
# faster than fp32 (oneDNN's ISA table, https://uxlfoundation.github.io/oneDNN/dev_guide_data_types.html).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (NATIVE_BF16_FLAGS); `flags`: default this machine's."""
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: honours taskset and container CPU sets, unlike os.cpu_count().
    The one place the count is computed (environment record, loader workers, distributed processes)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _git_commit() -> str | None:
    here = Path(cnnbench.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, object]:
    env: dict[str, object] = {
        "env.host": socket.gethostname(),
        "env.os": platform.platform(),
        "env.python": platform.python_version(),
        "env.cpu_model": _cpu_model(),
        "env.cpu_isa": cpu_isa(_read_cpuinfo(), torch.backends.cpu.get_cpu_capability()),
        "env.cpu_cores": os.cpu_count(),
        "env.cpu_cores_usable": usable_cores(),
        "env.torch_threads": torch.get_num_threads(),
        "env.ram_gib": round(_ram_bytes() / 2**30, 1) if _ram_bytes() else None,
        "env.torch": torch.__version__,
        "env.torchvision": torchvision.__version__,
        "env.cnnbench": cnnbench.__version__,
        "env.git_commit": _git_commit(),
        "env.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # glibc reads its malloc settings at process start; they move CPU training by a third (docs/options.md)
        "env.glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "env.cuda": torch.version.cuda,
        "env.cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "env.gpu_count": 0,
        "env.gpu_name": None,
        "env.gpu_memory_gib": None,
        "env.gpu_driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            {
                "env.gpu_count": torch.cuda.device_count(),
                "env.gpu_name": props.name,
                "env.gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "env.gpu_driver": _nvidia_driver(),
            }
        )
    return env


def collect() -> dict[str, object]:
    return {**_static_environment(), "env.timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def header_lines(env: dict[str, object]) -> list[str]:
    """Four short lines for a run's header: host, CPU with its vector ISA, GPU, software versions."""
    gpu = f"{env['env.gpu_count']} x {env['env.gpu_name']} ({env['env.gpu_memory_gib']} GiB, driver {env['env.gpu_driver']})" if env["env.gpu_count"] else "none"
    return [
        f"host = {env['env.host']} ({env['env.os']}, python {env['env.python']})",
        f"cpu = {env['env.cpu_model']}, {env['env.cpu_cores_usable']} usable cores, {env['env.ram_gib']} GiB RAM; isa = {env['env.cpu_isa']}",
        f"gpu = {gpu}",
        f"versions = torch {env['env.torch']}, torchvision {env['env.torchvision']}, cuda {env['env.cuda']}, cudnn {env['env.cudnn']}, "
        f"cnnbench {env['env.cnnbench']} (commit {env['env.git_commit']})",
    ]


def process_start_time() -> float:
    """Wall-clock (time.time) moment this process started, from the OS where it tells; else cnnbench's import."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5), counted after the ')' that ends the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        boot = _dt.datetime.now().timestamp() - uptime
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME


_IMPORT_TIME = _dt.datetime.now().timestamp()


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory allocated by PyTorch on CUDA; on the CPU the process's peak resident set.

    On CUDA this is PyTorch's caching allocator alone: ONNX Runtime's and TensorRT's memory is not in
    it (see `device_memory_used`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


GPU_EXTRA_HINT = "nvidia-ml-py is not installed: pip install -e '.[gpu]'"


def device_memory_used(device: torch.device) -> tuple[float | None, str | None]:
    """NVML's memory in use on the device now, in MiB, all processes together; with why not when it
    cannot be read (None, None off CUDA).

    What PyTorch's allocator reports leaves out ONNX Runtime's arenas and TensorRT's engines, which
    allocate on their own (issue 10); NVML counts the device's whole memory in use (nvmlMemory_t.used:
    "sum of reserved and allocated device memory", NVML API reference), the driver's own reservation and
    other processes included. The device is found by its UUID, as CUDA_VISIBLE_DEVICES may renumber it;
    a MIG instance's UUID names the instance, whose own memory NVML then reports.
    """
    if device.type != "cuda":
        return None, None
    # opened after the measurement: a failure here must not lose the run's figures
    pynvml, handle, note = open_nvml(device)
    if handle is None:
        return None, note
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20, None
    except pynvml.NVMLError as exc:
        return None, f"NVML could not read the memory of {device} ({exc})"
    finally:
        pynvml.nvmlShutdown()


def open_nvml(device) -> tuple[object | None, object | None, str | None]:
    """(pynvml, the NVML handle of CUDA `device`, None) with NVML initialised (the caller shuts it down), or
    (pynvml or None, None, why not): the `gpu` extra missing, NVML not starting, the device not found."""
    try:
        import pynvml  # the nvidia-ml-py package, cnnbench's `gpu` extra
    except ImportError:
        return None, None, GPU_EXTRA_HINT
    names, note = nvml_names(device)
    if note:
        return pynvml, None, note
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return pynvml, None, f"NVML did not start ({exc})"
    handle, note = nvml_handle(pynvml, names, device)
    if handle is None:
        pynvml.nvmlShutdown()
    return pynvml, handle, note


def nvml_names(device: torch.device) -> tuple[list[str], str | None]:
    """The NVML UUIDs that may name `device` (CUDA_VISIBLE_DEVICES may renumber it, so never its index):
    ([names], None), or ([], why not) when PyTorch cannot give its UUID."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError, AssertionError) as exc:
        return [], f"PyTorch did not give the UUID of {device} ({exc})"
    return ([uuid] if uuid.startswith(("GPU-", "MIG-")) else [f"GPU-{uuid}", f"MIG-{uuid}"]), None


def nvml_handle(pynvml, names: list[str], device: torch.device):
    """(NVML's handle of the first of `names` it knows, None), or (None, why not); NVML initialised by the caller."""
    for name in names:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(name), None
        except pynvml.NVMLError:
            continue
    uuid = names[0].removeprefix("GPU-") if names else "?"
    return None, f"NVML knows no device with the UUID of {device} ({uuid})"
