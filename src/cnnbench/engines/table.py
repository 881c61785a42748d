"""The engine table: one record per inference engine of either framework, and the functions that read it.

Everything that knows about engines reads it here, and nothing else: the options' help text and their
validation (core/config.py), the check before a run (`check`), the sweeps' default pairs and
`--engines optimized` (recipes/sweep.py), the time estimate (recipes/estimate.py, by `EngineSpec.estimate`),
the memory format `auto` picks (core/placement.py, by `EngineSpec.layout`) and nvcnn.py's --use_trt.
Adding an engine is one record below and one class (named by `engine_class`, imported only when needed).

This module imports nothing heavy (no torch, no runtime): the configuration reads it at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from cnnbench.core.errors import UsageError

FRAMEWORK_TITLES = {"pytorch": "PyTorch", "tensorflow": "TensorFlow"}
DEFAULT_FRAMEWORK = "pytorch"
DEVICE_WORDS = {"cpu": "a CPU", "cuda": "a CUDA device"}
DEVICE_TITLES = {"cpu": "the CPU", "cuda": "CUDA"}
# Input layouts: the exported graph of an ONNX engine fixes NCHW; TensorFlow's models take NHWC; "any": the
# engine runs the PyTorch module itself, which takes either memory format (core/placement.py picks).
LAYOUTS = ("NCHW", "NHWC", "any")
ONNX_INSTALL = "pip install 'cnnbench[onnx]' (or .venv/bin/pip install -e '.[onnx]')"
TENSORFLOW_INSTALL = "pip install 'cnnbench[tensorflow]' (in this repository: .venv/bin/pip install tensorflow-cpu)"
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")
# CPU flags of native bf16 arithmetic: AVX512_BF16 (Cooper Lake, Zen 4 and later) or AMX's bf16 tiles (Sapphire
# Rapids and later); without either, oneDNN converts bf16 to fp32 and back, slower than fp32 itself. The same
# list as core/environment.NATIVE_BF16_FLAGS (this module imports nothing heavy; tests/test_sweep checks both).
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class EngineSpec:
    name: str                                  # the --engine value
    framework: str                             # "pytorch" | "tensorflow"
    precisions: dict[str, tuple[str, ...]]     # device type ("cpu", "cuda") -> precisions it runs
    layout: str                                # input layout the engine takes: "NCHW" | "NHWC" | "any" (LAYOUTS)
    optimized_on: tuple[str, ...]              # device types where it is "the device's optimized engine"
                                               #   (--use_trt, --engines optimized); order of preference = table order
    sweep: dict[str, tuple[str, ...]]          # device type -> precisions in the default infer-all set
    estimate: str                              # what the time estimate needs: a kind of recipes/estimate.ESTIMATES
    install: str | None                        # the line that installs what is missing (None: always there)
    requires: tuple[str, ...]                  # importable modules it needs
    refused: dict[tuple[str, str], str]        # (precision, device type) -> why it is refused although it would run
    engine_class: str                          # "module.path:ClassName", imported lazily
    title: str = field(default="")             # its name in sentences ("TensorRT"); default: `name`
    sweep_needs: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
                                               # (device type, precision) of `sweep` -> CPU flags, any one of which
                                               #   the pair needs to join the default set (e.g. native bf16)
    shares_builds_on: tuple[str, ...] = ()     # device types where one build serves every batch size and precision:
                                               #   a dynamic-batch export (and one int8 calibration) per model, fixed
                                               #   to the run's batch when loaded; elsewhere a build per configuration

    @property
    def label(self) -> str:
        return self.title or self.name

    def runs(self, precision: str, device_type: str) -> bool:
        """The pair runs as its name says: listed, and not refused."""
        return precision in self.precisions.get(device_type, ()) and (precision, device_type) not in self.refused


# ONNX Runtime's CUDA provider has no int8 convolution: its CUDA build implements QuantizeLinear,
# DequantizeLinear and MatMulInteger only (FAQ "Do the GPU builds support quantized models?",
# https://github.com/microsoft/onnxruntime/blob/main/docs/FAQ.md), so a QDQ model's convolutions run in
# float between quantise/dequantise pairs; "ORT leverage TRT EP for quantization on GPU"
# (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#quantization-on-gpu).
ORT_CUDA_INT8 = ("ONNX Runtime's CUDA provider has no int8 convolution kernels: it dequantises QDQ models to float; "
                 "use --engine tensorrt --precision int8")

# PyTorch's records come first, eager first (the reference every other engine is guarded against); then the
# order of preference for --engines optimized: TensorRT where installed, else ONNX Runtime, else torch.compile.
# Default sweep: the framework baseline and the machine's best, at fp32 and at reduced precision: on a CPU
# ONNX Runtime beats eager and compile at fp32 (2.07x eager on the dev EPYC, 1.7x on AVX2; docs/engines.md
# table) and its int8 is the fastest (6.7x, 3.0x); on CUDA compile at bf16 and fp16, TensorRT where installed.
# On a CPU with native bf16 (NATIVE_BF16) the default set adds the fastest guarded bf16 engine (issue 26), measured
# by benchmarks/bf16_default.py on the 2-core AMD EPYC (AVX-512 with VNNI and BF16), ResNet-50 batch 16, 224 px,
# on a quiet machine (load average 1.0-1.6), benchmarks/results/bf16_default-20261207T195823Z.txt: OpenVINO bf16
# 111.2 img/s (2.28x ONNX Runtime fp32's 48.8), torch.compile bf16 90.6, eager bf16 66.9, each guarded, all ok.
# (An earlier run on a loaded machine, bf16_default-20261207T184418Z, had put eager first: load hurts compile
# and OpenVINO most.) ./setup.sh installs the openvino extra on CPU machines for it; where OpenVINO is missing
# the sweep leaves the pair out with its install line. An AVX2-only CPU keeps the fp32/int8 set: its bf16 is
# emulated.
ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        name="eager", framework="pytorch", title="PyTorch eager",
        precisions={"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
        layout="any", optimized_on=(), sweep={"cpu": ("fp32",), "cuda": ("fp32",)}, estimate="eager",
        install=None, requires=(), refused={}, engine_class="cnnbench.engines.eager:EagerEngine"),
    EngineSpec(
        name="tensorrt", framework="pytorch", title="TensorRT",
        precisions={"cuda": ("fp32", "fp16", "int8")},
        layout="NCHW", optimized_on=("cuda",), sweep={"cuda": ("fp16", "int8")}, estimate="tensorrt",
        install=ONNX_INSTALL, requires=ONNX_MODULES, refused={},
        engine_class="cnnbench.engines.tensorrt:TensorRTEngine"),
    EngineSpec(
        name="onnxruntime", framework="pytorch", title="ONNX Runtime",
        # The CPU provider has no fp16 convolution kernels; fp16 is for the CUDA provider.
        precisions={"cpu": ("fp32", "int8"), "cuda": ("fp32", "fp16")},
        layout="NCHW", optimized_on=("cpu", "cuda"), sweep={"cpu": ("fp32", "int8")}, estimate="export",
        shares_builds_on=("cpu",),  # CUDA keeps static shapes: TensorRT and CUDA graphs plan for them
        install=ONNX_INSTALL, requires=ONNX_MODULES, refused={("int8", "cuda"): ORT_CUDA_INT8},
        engine_class="cnnbench.engines.onnxruntime:OnnxRuntimeEngine"),
    EngineSpec(
        name="compile", framework="pytorch", title="torch.compile",
        precisions={"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
        layout="any", optimized_on=("cpu", "cuda"), sweep={"cuda": ("bf16", "fp16")}, estimate="compile",
        install=None, requires=(), refused={}, engine_class="cnnbench.engines.eager:CompiledEngine"),
    # OpenVINO, Intel's CPU runtime: bf16 where the CPU has it natively (the class refuses it elsewhere), and then
    # the default sweep's bf16 engine (measured above). Not the optimized engine, nor in the fp32/int8 defaults,
    # until measured against ONNX Runtime across CPUs (issue 26).
    EngineSpec(
        name="openvino", framework="pytorch", title="OpenVINO",
        precisions={"cpu": ("fp32", "int8", "bf16")},
        layout="NCHW", optimized_on=(), sweep={"cpu": ("bf16",)}, sweep_needs={("cpu", "bf16"): NATIVE_BF16},
        estimate="export", shares_builds_on=("cpu",),
        install="pip install 'cnnbench[openvino]' (or .venv/bin/pip install -e '.[openvino]')",
        requires=("openvino", "nncf"), refused={}, engine_class="cnnbench.engines.openvino:OpenVINOEngine"),
    # TensorFlow's: its graph (eager: a tf.function), XLA (compile) and, on a CPU, TensorFlow Lite's
    # full-integer int8. Optimized: XLA on CUDA (this TensorFlow has no TensorRT), TensorFlow Lite on a CPU.
    EngineSpec(
        name="eager", framework="tensorflow", title="a tf.function",
        precisions={"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
        layout="NHWC", optimized_on=(), sweep={"cpu": ("fp32",), "cuda": ("fp32",)}, estimate="eager",
        install=TENSORFLOW_INSTALL, requires=("tensorflow",), refused={},
        engine_class="cnnbench.backends.tensorflow.engines:FunctionEngine"),
    EngineSpec(
        name="compile", framework="tensorflow", title="XLA, TensorFlow's compiler",
        precisions={"cpu": ("fp32", "fp16", "bf16"), "cuda": ("fp32", "tf32", "fp16", "bf16")},
        layout="NHWC", optimized_on=("cuda",), sweep={"cpu": ("fp32",), "cuda": ("bf16", "fp16")}, estimate="compile",
        install=TENSORFLOW_INSTALL, requires=("tensorflow",), refused={},
        engine_class="cnnbench.backends.tensorflow.engines:FunctionEngine"),
    EngineSpec(
        name="tflite", framework="tensorflow", title="TensorFlow Lite",
        precisions={"cpu": ("fp32", "int8")},
        layout="NHWC", optimized_on=("cpu",), sweep={"cpu": ("int8",)}, estimate="convert",
        install=TENSORFLOW_INSTALL, requires=("tensorflow",), refused={},
        engine_class="cnnbench.backends.tensorflow.engines:TFLiteEngine"),
)


def specs(framework: str) -> tuple[EngineSpec, ...]:
    return tuple(spec for spec in ENGINES if spec.framework == framework)


def names(framework: str) -> tuple[str, ...]:
    return tuple(spec.name for spec in specs(framework))


def find(framework: str, name: str) -> EngineSpec:
    """The record of `name` in `framework`; a UsageError naming the framework's engines if there is none."""
    for spec in specs(framework):
        if spec.name == name:
            return spec
    others = [spec.framework for spec in ENGINES if spec.name == name]
    if others and framework == DEFAULT_FRAMEWORK:  # the framework was not chosen: say which one to choose
        raise UsageError(f"--engine {name} is {FRAMEWORK_TITLES[others[0]]}'s; add --framework {others[0]}")
    if others:
        raise UsageError(f"--engine {name} runs {FRAMEWORK_TITLES[others[0]]} models; with --framework {framework} use "
                         f"{', '.join(names(framework))}")
    raise UsageError(f"unknown --engine {name!r}; use one of: {', '.join(names(framework))}")


def shares_builds(framework: str, engine: str, device_type: str) -> bool:
    """One build of `engine` serves every batch size and precision on `device_type` (EngineSpec.shares_builds_on)."""
    return device_type in find(framework, engine).shares_builds_on


def engine_class(spec: EngineSpec) -> type:
    """The class that builds the engine (imported now: it may import its runtime's Python package)."""
    module, _, name = spec.engine_class.partition(":")
    return getattr(importlib.import_module(module), name)


def unavailable(spec: EngineSpec, device_type: str, offered: list[str] | None = None) -> str | None:
    """Why the engine cannot run on this machine (its modules missing, or what its class finds missing, e.g.
    ONNX Runtime's execution provider for the device), with the line that installs it; None if it can.
    `offered`: what the machine offers the class (ONNX Runtime's providers); None: the class asks the machine."""
    missing = [module for module in spec.requires if importlib.util.find_spec(module) is None]
    if missing:
        return f"--engine {spec.name} needs {', '.join(missing)}: {spec.install}"
    check = getattr(engine_class(spec), "unavailable", None)
    return check(device_type, offered) if check is not None else None


def supported_pairs(framework: str, device_type: str) -> str:
    """The engine/precision pairs that run on the device, for help text and errors."""
    return "; ".join(f"{spec.name}: {', '.join(spec.precisions[device_type])}"
                     for spec in specs(framework) if device_type in spec.precisions)


def check(framework: str, engine: str, precision: str, device_type: str) -> None:
    """Fail early, with the pairs that do work (or the refusal's reason, or the install line), before any
    model is built."""
    spec = find(framework, engine)
    if (precision, device_type) in spec.refused:
        raise UsageError(f"--engine {engine} --precision {precision} on {device_type}: {spec.refused[precision, device_type]}")
    why = unavailable(spec, device_type)
    if why is not None:
        raise UsageError(why)
    if device_type not in spec.precisions:
        devices = " or ".join(DEVICE_WORDS.get(d, d) for d in spec.precisions)
        raise UsageError(f"--engine {engine} needs {devices}; on {device_type} the pairs that work are: "
                         f"{supported_pairs(framework, device_type)}")
    if precision not in spec.precisions[device_type]:
        raise UsageError(f"--engine {engine} cannot run --precision {precision} on {device_type}; pairs that work: "
                         f"{supported_pairs(framework, device_type)}")


def default_pairs(framework: str, device_type: str, cpu_flags: frozenset[str] | set[str] = frozenset(),
                  say=None) -> list[tuple[str, str]]:
    """The default infer-all pairs of the device, in table order (whether installed is the caller's check).
    A pair with `sweep_needs` joins only where `cpu_flags` (core/environment.cpu_flags()) has one of its flags;
    `say`, when given, gets one line per such pair: added or left out, and why."""
    pairs = []
    for spec in specs(framework):
        for precision in spec.sweep.get(device_type, ()):
            needs = spec.sweep_needs.get((device_type, precision))
            if needs is None:
                pairs.append((spec.name, precision))
                continue
            have = [flag for flag in needs if flag in cpu_flags]
            if have:
                pairs.append((spec.name, precision))
            if say is not None:
                say(f"Default {spec.name}/{precision} " + (
                    f"added: this CPU has {', '.join(have)} (native {precision}); {spec.label} was the fastest guarded "
                    f"{precision} engine measured (engines/table.py, benchmarks/bf16_default.py)" if have else
                    f"left out: this CPU has none of {', '.join(needs)}, so its {precision} is emulated, slower than fp32"))
    return pairs


def optimized(framework: str, device_type: str, offered: list[str] | None = None) -> tuple[str, str]:
    """The device's optimized engine, as the original's --use_trt meant it (nvcnn.py, `infer-all --engines
    optimized`): the first record, in table order, optimized on the device that can run here; and why.
    `offered`: as in `unavailable` (nvcnn.py passes ONNX Runtime's providers)."""
    candidates = [spec for spec in specs(framework) if spec.optimized_on]
    if not candidates:
        raise UsageError(f"--framework {framework} has no optimized engine")
    top, here = candidates[0], [spec for spec in candidates if device_type in spec.optimized_on]
    for spec in here:
        if unavailable(spec, device_type, offered) is None:
            if spec is top:
                return spec.name, f"{spec.label} is installed"
            missed = []
            if device_type not in top.precisions:  # the framework's first choice does not run on this device
                missed.append(f"{top.label} is not available on {DEVICE_TITLES.get(device_type, device_type)}")
            if spec is not here[0]:  # the device's first choice cannot run here
                missed.append(f"{here[0].label} is not installed")
            return spec.name, "; ".join([*missed, f"{spec.label} is the fastest engine available on {device_type}"])
    raise UsageError(f"no optimized engine of --framework {framework} runs on {device_type} here")


# Help text (core/config.py builds the command line from these, so that `--help` lists what the table holds).

def engine_help() -> str:
    """--engine: PyTorch's engines, then each other framework's, with what runs them."""
    other = [f"with --framework {framework}: " + " | ".join(f"{spec.name} ({spec.label})" for spec in specs(framework))
             for framework in FRAMEWORK_TITLES if framework != DEFAULT_FRAMEWORK and specs(framework)]
    return "; ".join([" | ".join(names(DEFAULT_FRAMEWORK)), *other])


def int8_help() -> str:
    """The engines that run int8, for --precision's help."""
    return ", ".join(f"{spec.name}" + ("" if spec.framework == DEFAULT_FRAMEWORK else f" ({spec.framework})")
                     for spec in ENGINES if any("int8" in p for p in spec.precisions.values()))


def _devices(framework: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(device for spec in specs(framework) for device in spec.precisions))


def optimized_help(framework: str = DEFAULT_FRAMEWORK) -> str:
    """--engines optimized: per device, the engines in order of preference."""
    return "; ".join(f"{device}: " + ", else ".join(spec.name for spec in specs(framework) if device in spec.optimized_on)
                     for device in _devices(framework))


def default_pairs_help(framework: str = DEFAULT_FRAMEWORK) -> str:
    """The default infer-all pairs per device (a conditional pair says what it needs)."""
    def pair(spec: EngineSpec, device: str) -> str:
        plain = [p for p in spec.sweep[device] if (device, p) not in spec.sweep_needs]
        needing = [f"{p} where the CPU has {' or '.join(spec.sweep_needs[device, p])}" for p in spec.sweep[device]
                   if (device, p) in spec.sweep_needs]
        if not plain:  # only conditional pairs: "openvino bf16 where the CPU has ..."
            return f"{spec.name} " + " and ".join(needing)
        return f"{spec.name} {'/'.join(plain)}" + "".join(f" (+{n})" for n in needing)

    return "; ".join(f"{device}: " + ", ".join(pair(spec, device) for spec in specs(framework) if device in spec.sweep)
                     for device in _devices(framework))
