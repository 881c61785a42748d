"""Engines built directly (build_engine): what their build time holds, and the int8 activation types."""

from __future__ import annotations

import statistics
import time

import onnx
import pytest
import torch
from onnx import numpy_helper

from cnnbench import engines
from cnnbench.engines import ArtifactCache, build_engine
from cnnbench.errors import UsageError
from cnnbench.inference import GUARD_BOUNDS
from cnnbench.models.registry import resolve_entry
from cnnbench.placement import Placement
from helpers import read_jsonl

CPU = torch.device("cpu")


def _model(spec):
    torch.manual_seed(0)
    return resolve_entry(str(spec)).build(16).eval()


def _cache(root, engine: str, precision: str) -> ArtifactCache:
    return ArtifactCache(str(root) if root else None, {"model": "tiny", "engine": engine, "precision": precision, "batch_size": 4})


def _seconds(engine, images) -> float:
    start = time.perf_counter()
    engine(images)
    return time.perf_counter() - start


@pytest.fixture
def one_thread():
    """Kernels on one thread: with two OpenMP threads on a machine whose 2 cores are shared, a call waits
    whenever either thread is descheduled (measured here: a 0.3 ms call took 70 ms under load). Compile
    time does not depend on it; the steady calls the checks compare with become steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_build_compiled(engine) -> None:
    """The build ran the compilation: it took far longer than a compiled call, and the first call after it
    (another batch of the same shape, as the measured steps are) is close to the ones that follow.

    On this tiny model, measured on the 2-core development machine: building takes 0.2 s (a cache hit:
    tracing, loading kernels) to 20 s (cold: inductor's code generation), a recompilation at the first
    call (e.g. a build that ran without the later calls' autocast) 0.5 s, a compiled call 0.3 ms on one
    thread. A lazy compilation fails both checks; 20x and the 0.1 s floor leave room for a loaded
    machine's jitter."""
    images = torch.randn(4, 3, 16, 16)
    first = _seconds(engine, images)
    steady = statistics.median(_seconds(engine, images) for _ in range(15))
    build = engine.info["engine_build_seconds"]
    assert build >= 20 * steady, f"build {build:.4f} s is not a compilation: a steady call takes {steady:.4f} s"
    assert first <= max(10 * steady, 0.1), f"first call {first:.4f} s (steady {steady:.4f} s): it compiled"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_build_time_is_the_compilation(tiny_spec, one_thread, precision):
    # bf16: the build's call must run under the same autocast as later calls, or they would recompile.
    torch.compiler.reset()
    cache = _cache(None, "compile", precision)
    try:
        engine = build_engine("compile", _model(tiny_spec), Placement(CPU, precision, False), torch.randn(4, 3, 16, 16),
                              cache, calibration=list, compile_mode="default")
    finally:
        cache.close()
    assert engine.info["cache_hit"] is False
    _assert_build_compiled(engine)


@pytest.mark.skipif(not hasattr(torch.compiler, "load_cache_artifacts"), reason="torch without cache artefacts")
def test_compile_cache_hit_is_timed_the_same_way(tiny_spec, tmp_path, one_thread):
    model, placement = _model(tiny_spec), Placement(CPU, "fp32", False)
    for expect_hit in (False, True):
        torch.compiler.reset()  # a fresh process's state: nothing compiled in memory, only the saved artefacts
        engine = build_engine("compile", model, placement, torch.randn(4, 3, 16, 16), _cache(tmp_path, "compile", "fp32"),
                              calibration=list, compile_mode="default")
        assert engine.info["cache_hit"] is expect_hit
        _assert_build_compiled(engine)


def _activation_zero_points(path) -> list:
    """Zero points of the QuantizeLinear nodes that quantise activations (weights are stored quantised)."""
    graph = onnx.load(str(path)).graph
    initialisers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [initialisers[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"]


@pytest.mark.parametrize("kind, dtype, symmetric", [("u8", "uint8", False), ("s8", "int8", True)])
def test_int8_activation_types(tiny_spec, tmp_path, kind, dtype, symmetric):
    model, placement = _model(tiny_spec), Placement(CPU, "int8", False)
    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    cache = _cache(tmp_path, "onnxruntime", "int8")
    engine = build_engine("onnxruntime", model, placement, batches[0], cache, calibration=lambda: batches,
                          compile_mode="default", int8_activations=kind)
    assert engine.info["int8_activations"] == kind
    zero_points = _activation_zero_points(cache.dir / f"model.int8-{kind}.onnx")
    assert zero_points and {z.dtype.name for z in zero_points} == {dtype}
    assert all((z == 0).all() for z in zero_points) == symmetric
    with torch.inference_mode():
        reference = torch.cat([model(x) for x in batches])
    output = torch.cat([engine(x) for x in batches])
    assert torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference) < GUARD_BOUNDS["int8"]


def test_int8_activations_option_reaches_the_engine_and_the_record(cli, tiny_spec):
    """--int8-activations through the command line: the quantised model's type is in the record."""
    for kind in ("s8", "auto"):
        code, _, err = cli("infer", tiny_spec, "--random-weights", "--image-size", "16", "--batch-size", "4",
                           "--num-batches", "2", "--warmup", "1", "--engine", "onnxruntime", "--precision", "int8",
                           "--calib-batches", "2", "--int8-activations", kind)
        assert code == 0, err
        record = read_jsonl("results_infer/runs.jsonl")[-1]
        assert record["int8_activations"] == {"s8": "s8", "auto": "u8"}[kind]
        assert record["config.int8_activations"] == kind
    assert engines.default_int8_activations("cpu") == "u8" and engines.default_int8_activations("cuda") == "s8"


def test_onnxruntime_int8_on_cuda_is_refused_with_its_reason(monkeypatch):
    """ONNX Runtime's CUDA provider would run int8 as float convolutions between quantise/dequantise pairs:
    refused with the reason and the engine that does run int8, whether or not onnxruntime-gpu is installed."""
    reason = ("--engine onnxruntime --precision int8 on cuda: ONNX Runtime's CUDA provider has no int8 convolution "
              "kernels: it dequantises QDQ models to float; use --engine tensorrt --precision int8")
    for providers in (["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        monkeypatch.setattr(engines, "_ort_providers", lambda providers=providers: providers)
        with pytest.raises(UsageError) as refused:
            engines.check_engine("onnxruntime", "int8", "cuda")
        assert str(refused.value) == reason
    engines.check_engine("onnxruntime", "fp16", "cuda")  # the CUDA provider's real pairs still pass
    engines.check_engine("onnxruntime", "int8", "cpu")
    assert "onnxruntime: fp32, fp16;" in engines.supported_pairs("cuda")
