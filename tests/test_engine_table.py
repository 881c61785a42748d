"""The engine table (engines/table.py): every record consistent, every record's class importable; and every
consumer reads the table, shown by registering one fake record and finding it in the help text, the
validation, the sweep's defaults, --engines optimized and --use_trt, the estimate, the memory format and
build_engine. Adding an engine is one record plus one class."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys

import pytest
import torch

from cnnbench import backends
from cnnbench.core import config
from cnnbench.core.errors import UsageError
from cnnbench.core.placement import PRECISIONS, Placement, resolve_memory_format
from cnnbench.engines import build_engine, table
from cnnbench.engines.base import Engine
from cnnbench.recipes import estimate, sweep
from helpers import REPO

CPU = torch.device("cpu")


class FakeEngine(Engine):
    """The fake record's class: `missing` is what it says is missing on this machine (None: nothing)."""

    name = "fake"
    missing: str | None = None

    def __init__(self, inputs):
        super().__init__()
        self.inputs = inputs

    @classmethod
    def build(cls, inputs):
        return cls(inputs)

    @classmethod
    def unavailable(cls, device_type, offered=None):
        return cls.missing

    def __call__(self, images):
        return images.flatten(1)[:, :10]


FAKE = table.EngineSpec(
    name="fake", framework="pytorch", title="Fake Runtime",
    precisions={"cpu": ("fp32", "int8"), "cuda": ("fp32",)}, layout="NCHW", optimized_on=("cpu",),
    sweep={"cpu": ("int8",)}, estimate="tensorrt", install="pip install fake-runtime", requires=(),
    refused={("fp16", "cuda"): "the fake runtime's fp16 is a stand-in"}, engine_class=f"{__name__}:FakeEngine")


def fake(monkeypatch) -> table.EngineSpec:
    """FAKE registered first: the preferred optimized engine on the CPU."""
    monkeypatch.setattr(table, "ENGINES", (FAKE, *table.ENGINES))
    monkeypatch.setattr(FakeEngine, "missing", None)
    return FAKE


@pytest.fixture(name="fake")
def fake_fixture(monkeypatch):
    return fake(monkeypatch)


def _replace(monkeypatch, **changes):
    monkeypatch.setattr(table, "ENGINES", tuple(dataclasses.replace(s, **changes) if s.name == "fake" else s
                                                for s in table.ENGINES))


@pytest.mark.parametrize("spec", table.ENGINES, ids=lambda s: f"{s.framework}-{s.name}")
def test_every_record_is_consistent_and_its_class_imports(spec):
    assert spec.framework in table.FRAMEWORK_TITLES and spec.layout in table.LAYOUTS
    assert spec.estimate in estimate.ESTIMATES
    assert spec.precisions and all(precisions and set(precisions) <= set(PRECISIONS) for precisions in spec.precisions.values())
    assert set(spec.precisions) <= set(table.DEVICE_WORDS)
    for device, precisions in spec.sweep.items():  # the default sweep runs only pairs that run
        assert set(precisions) <= set(spec.precisions[device])
    assert set(spec.optimized_on) <= set(spec.precisions)
    for precision, device in spec.refused:  # refused pairs are not listed as running, so help and errors agree
        assert precision in PRECISIONS and device in table.DEVICE_WORDS
        assert precision not in spec.precisions.get(device, ())
    assert (spec.install is None) == (not spec.requires)
    for module in spec.requires:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed here")
    cls = table.engine_class(spec)
    assert isinstance(cls, type) and callable(getattr(cls, "build", None))
    if spec.framework == "pytorch":
        assert issubclass(cls, Engine)


def test_each_engine_is_one_record_of_its_framework():
    keys = [(spec.framework, spec.name) for spec in table.ENGINES]
    assert len(keys) == len(set(keys))
    assert table.names("pytorch")[0] == "eager" and table.names("tensorflow")[0] == "eager"  # the guard's reference
    assert table.find("tensorflow", "eager") is not table.find("pytorch", "eager")


def test_an_engine_of_another_framework_or_none_is_one_line_naming_the_engines():
    with pytest.raises(UsageError, match=r"^--engine tflite is TensorFlow's; add --framework tensorflow$"):
        table.find("pytorch", "tflite")
    with pytest.raises(UsageError, match=r"^--engine onnxruntime runs PyTorch models; with --framework tensorflow use eager"):
        table.find("tensorflow", "onnxruntime")
    with pytest.raises(UsageError, match=r"^unknown --engine 'tvm'; use one of: eager, "):
        table.find("pytorch", "tvm")


def test_a_new_record_is_in_the_help_text():
    """The help is generated when the configuration is imported: a child process registers the record first."""
    code = ("import dataclasses; from cnnbench.engines import table; "
            "table.ENGINES = (dataclasses.replace(table.find('pytorch', 'onnxruntime'), name='fake', "
            "sweep={'cpu': ('int8',)}, optimized_on=('cpu',)),) + table.ENGINES; "
            "from cnnbench.cli import build_parser\n"
            "for argv in (['infer', '--help'], ['infer-all', '--help']):\n"
            "    try: build_parser().parse_args(argv)\n"
            "    except SystemExit: pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert "--engine ENGINE fake | eager | tensorrt | onnxruntime | compile" in help_text
    assert "int8 for inference: fake, tensorrt, onnxruntime" in help_text
    assert "the first installed of (cpu: fake, else onnxruntime" in help_text and "(cpu: fake int8, eager fp32" in help_text


def test_a_new_record_is_validated_from_the_table(fake, monkeypatch):
    table.check("pytorch", "fake", "int8", "cpu")
    run = config.build(config.InferConfig, {"model": "resnet50", "engine": "fake"})
    run.validate_framework()  # a PyTorch engine now
    with pytest.raises(UsageError, match="--engine fake runs PyTorch models; with --framework tensorflow use"):
        dataclasses.replace(run, framework="tensorflow").validate_framework()
    with pytest.raises(UsageError, match=r"--engine fake cannot run --precision bf16 on cpu; pairs that work: fake: fp32, int8; eager"):
        table.check("pytorch", "fake", "bf16", "cpu")
    with pytest.raises(UsageError, match=r"^--engine fake --precision fp16 on cuda: the fake runtime's fp16 is a stand-in$"):
        table.check("pytorch", "fake", "fp16", "cuda")
    monkeypatch.setattr(FakeEngine, "missing", "--engine fake needs its CUDA runtime")
    with pytest.raises(UsageError, match="^--engine fake needs its CUDA runtime$"):
        table.check("pytorch", "fake", "fp32", "cuda")
    _replace(monkeypatch, requires=("cnnbench_no_such_module",))
    with pytest.raises(UsageError, match=r"^--engine fake needs cnnbench_no_such_module: pip install fake-runtime$"):
        table.check("pytorch", "fake", "fp32", "cpu")


def test_a_new_record_is_in_the_sweep_defaults_or_left_out_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(sweep.environment, "cpu_flags", lambda: frozenset({"avx2"}))  # no native bf16 (test_bf16_default.py)
    defaults = config.build(config.InferSweepConfig, {})
    before = sweep.engine_pairs(defaults, CPU)
    assert before[:3] == [("eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    fake(monkeypatch)
    assert sweep.engine_pairs(defaults, CPU) == [("fake", "int8"), *before]
    crossed = config.build(config.InferSweepConfig, {"engines": "fake,eager", "precisions": "fp32,bf16"})
    assert sweep.engine_pairs(crossed, CPU) == [("fake", "fp32"), ("eager", "fp32"), ("eager", "bf16")]
    assert "Skipping pairs that cannot run on cpu: fake/bf16" in capsys.readouterr().out
    monkeypatch.setattr(FakeEngine, "missing", "--engine fake needs the fake runtime")
    assert ("fake", "int8") not in sweep.engine_pairs(defaults, CPU)
    assert "Default fake/int8 left out: --engine fake needs the fake runtime" in capsys.readouterr().out


def test_a_new_record_is_the_optimized_engine_where_it_runs(fake, monkeypatch, capsys):
    optimized = config.build(config.InferSweepConfig, {"engines": "optimized", "precisions": "int8"})
    assert sweep.engine_pairs(optimized, CPU) == [("fake", "int8")]
    assert "--engines optimized: running engine fake (Fake Runtime is installed)" in capsys.readouterr().out
    nvcnn = _nvcnn()
    argv, note = nvcnn.translate(["--model=resnet50", "--eval", "--use_trt"], "cpu", ["CPUExecutionProvider"])
    assert argv[argv.index("--engine") + 1] == "fake" and note == "--use_trt: running engine fake (Fake Runtime is installed)"
    monkeypatch.setattr(FakeEngine, "missing", "no fake runtime")  # not installed: the next in table order
    assert table.optimized("pytorch", "cpu") == (
        "onnxruntime", "Fake Runtime is not installed; ONNX Runtime is the fastest engine available on cpu")
    # on CUDA the fake runs but is not optimized: TensorRT, the first record optimized there, is the one missing
    assert table.optimized("pytorch", "cuda", ["CPUExecutionProvider"]) == (
        "compile", "TensorRT is not installed; torch.compile is the fastest engine available on cuda")


def test_a_new_record_sets_the_estimate_and_the_memory_format(fake, monkeypatch):
    run = config.build(config.InferConfig, {"model": "resnet50", "engine": "fake"})
    assert estimate.engine_estimate(run) is estimate.ESTIMATES["tensorrt"]
    int8 = dataclasses.replace(run, placement=dataclasses.replace(run.placement, precision="int8"))
    assert estimate._speedup(int8, "cpu") == estimate.ESTIMATES["tensorrt"].speedup["int8"]
    pytorch = backends.get("pytorch")  # the backend reads the record's layout: the core imports no engine
    assert pytorch.resolve_placement(run.placement, engine="fake").channels_last is False  # NCHW: fixed by the record
    assert pytorch.resolve_placement(run.placement, engine="eager").channels_last is True  # any: channels-last on a CPU
    assert resolve_memory_format("auto", CPU, "NCHW") is False and resolve_memory_format("auto", CPU) is True
    _replace(monkeypatch, layout="NHWC", estimate="eager")
    assert pytorch.resolve_placement(run.placement, engine="fake").channels_last is True
    assert estimate.engine_estimate(run) is estimate.ESTIMATES["eager"]


def test_build_engine_builds_a_new_record_with_its_class(fake):
    placement = Placement(CPU, "fp32", False)
    example = torch.randn(2, 3, 8, 8)
    engine = build_engine("fake", None, placement, example, None, calibration=list, compile_mode="default",
                          int8_activations="auto")
    assert isinstance(engine, FakeEngine) and engine(example).shape == (2, 10)
    assert engine.inputs.placement is placement and engine.inputs.int8_activations == "auto"
    with pytest.raises(UsageError, match="^--engine tflite is TensorFlow's"):
        build_engine("tflite", None, placement, example, None, calibration=list, compile_mode="default")


def _nvcnn():
    spec = importlib.util.spec_from_file_location("nvcnn", REPO / "nvcnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
