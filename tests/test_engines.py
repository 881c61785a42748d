"""Engines built directly (build_engine): what their build time holds, and the int8 activation types."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cnnbench import engines
from cnnbench.engines import ArtifactCache, build_engine, table
from cnnbench.engines import onnxruntime as ort_engine
from cnnbench.core.errors import UsageError
from cnnbench.recipes.inference import GUARD_BOUNDS
from cnnbench.models.registry import resolve_entry
from cnnbench.core.placement import Placement
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
        monkeypatch.setattr(ort_engine, "ort_providers", lambda providers=providers: providers)
        with pytest.raises(UsageError) as refused:
            table.check("pytorch", "onnxruntime", "int8", "cuda")
        assert str(refused.value) == reason
    table.check("pytorch", "onnxruntime", "fp16", "cuda")  # the CUDA provider's real pairs still pass
    table.check("pytorch", "onnxruntime", "int8", "cpu")
    assert "onnxruntime: fp32, fp16;" in table.supported_pairs("pytorch", "cuda")


# ONNX Runtime on CUDA, on this CPU-only machine: provider options are pure functions; sessions and torch's
# stream are fakes that log what is done to them, in order.
CUDA0 = torch.device("cuda", 0)


def test_provider_options_share_torchs_stream_where_onnxruntime_can(tmp_path):
    assert engines.cuda_provider_options(1, 0x7F00, "1.32.0") == {"device_id": 1, "user_compute_stream": str(0x7F00)}
    assert engines.cuda_provider_options(1, 0, "1.32.0") == {"device_id": 1}  # torch's default stream: ORT refuses 0
    assert engines.cuda_provider_options(1, 0x7F00, "1.17.1") == {"device_id": 1}  # the option would throw there
    trt = engines.tensorrt_provider_options(0, "int8", tmp_path / "trt", 0x7F00, "1.19.0")
    assert trt == {"device_id": 0, "trt_fp16_enable": False, "trt_int8_enable": True, "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(tmp_path / "trt"), "user_compute_stream": str(0x7F00)}
    assert "user_compute_stream" not in engines.tensorrt_provider_options(0, "fp16", tmp_path, 0x7F00, "1.18.1")


def test_shared_stream_only_when_every_gpu_provider_reports_it():
    on = {"has_user_compute_stream": "1", "user_compute_stream": "77"}
    own = {"has_user_compute_stream": "0", "user_compute_stream": "0"}
    assert engines.shared_stream({"CUDAExecutionProvider": on, "CPUExecutionProvider": {}}, 77) == 77
    assert engines.shared_stream({"TensorrtExecutionProvider": on, "CUDAExecutionProvider": own}, 77) is None
    assert engines.shared_stream({"CUDAExecutionProvider": on}, 78) is None
    assert engines.shared_stream({"CUDAExecutionProvider": own}, 0) is None
    assert engines.shared_stream({"CPUExecutionProvider": {}}, 77) is None


class FakeStream:
    def __init__(self, handle: int, events: list):
        self.cuda_stream, self.events = handle, events

    def synchronize(self):
        self.events.append("torch stream synchronize")


class FakeBinding:
    def __init__(self, events: list):
        self.events, self.bound = events, {}

    def bind_input(self, name, device, index, dtype, shape, pointer):
        self.events.append("bind_input")
        self.bound[name] = (device, index, dtype, shape, pointer)

    def bind_output(self, name, device, index, dtype, shape, pointer):
        self.events.append("bind_output")
        self.bound[name] = (device, index, dtype, shape, pointer)

    def synchronize_outputs(self):
        self.events.append("synchronize_outputs")


class FakeSession:
    """onnxruntime.InferenceSession as a machine without GPU libraries cannot run it: `registered` are the
    providers it reports whatever was asked; it reports torch's stream back when asked for it and `honours`;
    a TensorRT provider writes an engine file into its cache folder, as TensorRT does on a miss."""

    def __init__(self, path, options, providers, registered, honours, events):
        self.asked, self.registered, self.events = providers, registered, events
        self.options = {name: dict(opts, has_user_compute_stream="1" if honours and "user_compute_stream" in opts else "0")
                         for name, opts in providers}
        trt = self.options.get("TensorrtExecutionProvider")
        if trt is not None and "TensorrtExecutionProvider" in registered:
            folder = Path(trt["trt_engine_cache_path"])
            folder.mkdir(exist_ok=True)
            if not (folder / "model.engine").exists():
                (folder / "model.engine").write_bytes(b"serialised engine")
        self.binding = FakeBinding(events)

    def get_providers(self):
        return self.registered

    def get_provider_options(self):
        return {name: opts for name, opts in self.options.items() if name in self.registered}

    def get_outputs(self):
        return [SimpleNamespace(shape=[4, 1000])]

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding):
        self.events.append("run")


def test_run_bound_orders_onnxruntime_after_torchs_work_and_before_its_reads():
    images, out = torch.randn(4, 3, 16, 16).half(), torch.empty(4, 1000, dtype=torch.float16)
    for current, shared, ordered in ((7, None, False), (7, 7, True), (8, 7, False)):
        events = []
        session = FakeSession("m.onnx", None, [], [], False, events)
        engines.run_bound(session, images, out, 3, FakeStream(current, events), shared)
        expected = ["bind_input", "bind_output", "run"]
        assert events == (expected if ordered else ["torch stream synchronize", *expected, "synchronize_outputs"])
        assert session.binding.bound["images"] == ("cuda", 3, np.float16, (4, 3, 16, 16), images.data_ptr())
        assert session.binding.bound["logits"] == ("cuda", 3, np.float16, (4, 1000), out.data_ptr())


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA placement here: torch's current stream is a FakeStream (handle 77); fake_cuda(registered,
    honours) makes onnxruntime.InferenceSession a FakeSession and returns the list of sessions made."""
    import onnxruntime

    events: list = []
    monkeypatch.setattr(ort_engine, "torch_stream", lambda device: FakeStream(77, events))

    def install(registered: list[str], honours: bool = True) -> list:
        sessions = []

        def session(*args, providers):
            sessions.append(FakeSession(*args, providers, registered, honours, events))
            return sessions[-1]

        monkeypatch.setattr(onnxruntime, "InferenceSession", session)
        return sessions

    return install


def _cached_onnx(root, engine: str) -> ArtifactCache:
    """A cache entry holding (a stand-in for) the exported model, so that no export runs."""
    cache = _cache(root, engine, "fp32")
    (cache.dir / "model.onnx").write_bytes(b"exported model")
    cache.record("model.onnx")
    return cache


def _build_on_fake_cuda(engine: str, cache: ArtifactCache):
    return build_engine(engine, None, Placement(CUDA0, "fp32", False), torch.randn(4, 3, 16, 16), cache,
                        calibration=list, compile_mode="default")


@pytest.mark.parametrize("engine, registered, requested", [
    ("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"], "TensorrtExecutionProvider"),
    ("onnxruntime", ["CPUExecutionProvider"], "CUDAExecutionProvider"),
])
def test_a_provider_other_than_the_one_asked_for_stops_the_run(fake_cuda, tmp_path, engine, registered, requested):
    """ONNX Runtime's silent fallbacks (TensorRT without its libraries runs on CUDA, CUDA without its
    libraries on the CPU) end the run with one line naming what would have run."""
    sessions = fake_cuda(registered)
    with pytest.raises(UsageError) as refused:
        _build_on_fake_cuda(engine, _cached_onnx(tmp_path, engine))
    assert f"--engine {engine}: ONNX Runtime would run on {registered[0]}, not {requested} (" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert ort_engine._provider_name(sessions[0].asked[0]) == requested


def test_onnxruntime_on_cuda_shares_torchs_stream_or_synchronises(fake_cuda, tmp_path):
    for honours, state, events in ((True, "torch's", ["bind_input", "bind_output", "run"]),
                                   (False, "its own, synchronised with torch's",
                                    ["torch stream synchronize", "bind_input", "bind_output", "run", "synchronize_outputs"])):
        sessions = fake_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"], honours)
        engine = _build_on_fake_cuda("onnxruntime", _cached_onnx(tmp_path, "onnxruntime"))
        assert sessions[0].asked == [("CUDAExecutionProvider", {"device_id": 0, "user_compute_stream": "77"})]
        assert engine.info["execution_provider"] == "CUDAExecutionProvider" and engine.info["ort_stream"] == state
        sessions[0].events.clear()
        assert engine(torch.randn(4, 3, 16, 16)).shape == (4, 1000)
        assert sessions[0].events == events


def test_tensorrt_engine_cache_is_checksummed(fake_cuda, tmp_path):
    """TensorRT's own files in the cache: recorded after the build, reused when intact, deleted (so that
    TensorRT rebuilds them) when changed."""
    sessions = fake_cuda(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    first = _build_on_fake_cuda("tensorrt", _cached_onnx(tmp_path, "tensorrt"))
    cache = _cache(tmp_path, "tensorrt", "fp32")
    engine_file = cache.dir / "trt" / "model.engine"
    assert sessions[0].asked[0][1]["trt_engine_cache_path"] == str(cache.dir / "trt")
    assert first.info["execution_provider"] == "TensorrtExecutionProvider" and first.info["trt_engine_cache_hit"] is False
    assert json.loads((cache.dir / "manifest.json").read_text())["folders"]["trt"] == {"model.engine": engines.sha256_file(engine_file)}
    assert sessions[0].events[-3:] == ["bind_input", "bind_output", "run"]  # the build ran the engine once

    again = _cache(tmp_path, "tensorrt", "fp32")
    assert _build_on_fake_cuda("tensorrt", again).info["trt_engine_cache_hit"] is True and again.notes == []

    engine_file.write_bytes(b"serialised engine, one bit flipped")
    corrupt = _cache(tmp_path, "tensorrt", "fp32")
    assert _build_on_fake_cuda("tensorrt", corrupt).info["trt_engine_cache_hit"] is False
    assert corrupt.notes == [f"cache entry {cache.dir / 'trt'} is corrupt (checksum mismatch); rebuilding it"]
    assert engine_file.read_bytes() == b"serialised engine"  # rebuilt by TensorRT (the fake), then recorded
    assert _cache(tmp_path, "tensorrt", "fp32").verify_folder("trt") is True


def test_cache_folder_verification(tmp_path):
    """A folder is trusted only with exactly its recorded files, each intact; anything else is deleted."""
    def recorded(*files):
        cache = _cache(tmp_path, "tensorrt", "fp16")
        shutil.rmtree(cache.dir / "trt", ignore_errors=True)
        (cache.dir / "trt" / "sub").mkdir(parents=True)
        for name in files:
            (cache.dir / "trt" / name).write_text(name)
        cache.record_folder("trt")
        return cache, cache.dir / "trt"

    cache, folder = recorded("a.engine", "sub/b.profile")
    assert cache.verify_folder("trt") is True and sorted(p.name for p in folder.rglob("*")) == ["a.engine", "b.profile", "sub"]
    for change in (lambda f: (f / "sub" / "b.profile").write_text("other"), lambda f: (f / "a.engine").unlink(),
                   lambda f: (f / "extra.engine").write_text("unrecorded")):
        cache, folder = recorded("a.engine", "sub/b.profile")
        change(folder)
        assert cache.verify_folder("trt") is False and not folder.exists()
        assert cache.notes == [f"cache entry {folder} is corrupt (checksum mismatch); rebuilding it"]
    never = _cache(tmp_path, "tensorrt", "int8")
    (never.dir / "trt").mkdir()
    (never.dir / "trt" / "a.engine").write_text("written by a build that stopped before recording it")
    assert never.verify_folder("trt") is False and not (never.dir / "trt").exists()
    assert "is not in the cache manifest" in never.notes[0]
    assert never.verify_folder("trt") is False and len(never.notes) == 1  # no folder: nothing to say
