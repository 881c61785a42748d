"""`cnnbench infer --loadgen`: MLCommons LoadGen drives the engine (the tiny spec, short runs, the CPU)."""

import importlib.util
import json
import random
import signal
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import torch

from cnnbench.tools import loadgen

from cnnbench.core import config, memory, store
from cnnbench.recipes import run_record
from cnnbench.core.tables import tables_csv
from cnnbench.tools.batching import DynamicBatcher
from cnnbench.core.config import InferConfig, LoadGenConfig
from cnnbench.data.normalization import Normalizer
from helpers import read_jsonl

needs_loadgen = pytest.mark.skipif(importlib.util.find_spec("mlperf_loadgen") is None,
                                   reason="mlcommons-loadgen is not installed (./setup.sh installs it with the test extra)")

# Short runs: LoadGen's minimum duration and query count cut far below MLPerf's 600 s.
SHORT = ["--random-weights", "--loadgen", "--batch-size", "4", "--warmup", "1", "--min-duration", "0.3",
         "--loadgen-samples", "32"]
SCENARIOS = {
    "offline": (["--min-queries", "200"], 4),
    "single-stream": (["--min-queries", "100"], 1),
    "multi-stream": (["--min-queries", "100"], 8),
    "server": (["--target-qps", "200", "--latency-bound-ms", "500", "--min-queries", "500"], 4),
}


@pytest.mark.timing
@pytest.mark.parametrize("scenario", SCENARIOS)
@needs_loadgen
def test_each_scenario_runs_through_loadgen_and_records(cli, tiny_spec, scenario):
    options, batch = SCENARIOS[scenario]
    code, out, err = cli("infer", tiny_spec, *SHORT, "--scenario", scenario, *options)
    assert code == 0, err
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert record["harness"] == "loadgen" and record["loadgen_scenario"] == loadgen.LOADGEN_SCENARIOS[scenario]
    assert record["batch_size"] == batch and record["status"] == "ok"
    assert record["loadgen_result"] in ("VALID", "INVALID")
    assert (record["loadgen_reasons"] is None) == (record["loadgen_result"] == "VALID")
    assert record["images_per_sec"] > 0 and 0 < record["latency_ms_p50"] <= record["latency_ms_p90"] <= record["latency_ms_p99"]
    # shortened: never MLPerf-compliant, whatever LoadGen's verdict, and the reason says why
    assert record["mlperf_compliant"] is False
    assert "minimum duration 0.3 s, under MLPerf's 600 s" in record["mlperf_noncompliance"]
    assert "MLPerf-compliant settings: no, minimum duration 0.3 s" in out
    logs = Path(record["loadgen_log_dir"])
    assert logs.parent == Path("log_tinyNet_4") / "loadgen"
    summary = (logs / loadgen.SUMMARY_LOG).read_text()
    assert f"Scenario : {record['loadgen_scenario']}" in summary and f"Result is : {record['loadgen_result']}" in summary
    assert (logs / loadgen.DETAIL_LOG).exists()
    schema = json.loads((resources.files("cnnbench.core") / store.SCHEMA_FILE).read_text())
    assert not [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(record)]  # every field documented
    assert f"tinyNet,{record['system_images_per_sec']:.2f}" in (Path("results_infer") / "results.csv").read_text()
    if scenario == "single-stream":  # far within its rules' reach: VALID, and still shown as shortened
        assert record["loadgen_result"] == "VALID" and "Result: VALID" in out
        assert record["latency_ms_p90"] == pytest.approx(float(_summary_value(summary, "90.0th percentile latency (ns)")) / 1e6)
    if scenario == "server":
        assert record["loadgen_target_qps"] == 200 and record["loadgen_batches"] >= 1
        assert "latency bound 500 ms, looser than MLPerf's 15 ms" in record["mlperf_noncompliance"]


def test_results_tables_keep_loadgen_runs_apart_from_the_built_in_loop_s():
    built_in = {"model": "resnet50", "batch_size": 16, "engine": "onnxruntime", "precision": "int8", "status": "ok",
                "system_images_per_sec": 70.0, "images_per_sec": 80.0}
    server = {**built_in, "loadgen_scenario": "Server", "images_per_sec": 50.0}
    tables = tables_csv([built_in, server])
    assert "(onnxruntime int8)" in tables and "(onnxruntime int8 LoadGen Server)" in tables
    assert "resnet50,80.00" in tables and "resnet50,50.00" in tables


def _summary_value(summary: str, label: str) -> str:
    return next(line.split(":")[1].strip() for line in summary.splitlines() if line.startswith(label))


@needs_loadgen
def test_a_server_far_above_capacity_is_invalid_for_its_latency(cli, tiny_spec):
    # 20,000 queries a second at batch 4 is far beyond what one CPU worker answers; MLPerf's 15 ms bound applies
    code, out, err = cli("infer", tiny_spec, *SHORT, "--scenario", "server", "--target-qps", "20000",
                         "--min-duration", "0.05", "--min-queries", "100")
    assert code == 0, err
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert record["loadgen_result"] == "INVALID" and "latency bound not met" in record["loadgen_reasons"]
    assert record["latency_ms_p99"] > 15 and "Result: INVALID (latency bound not met" in out


@needs_loadgen
def test_find_peak_qps_prints_each_probe_and_records_them(cli, tiny_spec):
    code, out, err = cli("infer", tiny_spec, *SHORT, "--scenario", "server", "--find-peak-qps", "--peak-probes", "2",
                         "--latency-bound-ms", "200", "--min-duration", "0.05", "--min-queries", "50")
    assert code == 0, err
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert len(record["loadgen_probes"]) == 2
    for number, probe in enumerate(record["loadgen_probes"], start=1):
        assert f"probe {number}: {probe['qps']:.1f} qps -> {probe['result']}" in out
    valid = [p["qps"] for p in record["loadgen_probes"] if p["result"] == "VALID"]
    assert record["loadgen_peak_qps"] == (max(valid) if valid else None)
    assert len(list(Path(record["loadgen_log_dir"]).parent.glob("probe-*"))) == 2
    assert "WARNING: --min-queries 50 is under the 1596 queries" in out + err


class FakeEngine:
    """A device of known capacity: any batch up to `batch` takes `seconds` (sleeping, as a GPU's wait would)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.zeros(images.shape[0], 10)


def _fake_runner(tmp_path, batch=8, seconds=0.004, **options) -> loadgen.Runner:
    """LoadGen's Server against FakeEngine behind the real SUT and dynamic batcher: capacity batch / seconds."""
    library = loadgen.SampleLibrary(torch.zeros(64, 3, 2, 2, dtype=torch.uint8), None, Normalizer("aimatrix_raw", "cpu"),
                                    torch.contiguous_format, 64)
    lg = loadgen.require()
    sut = loadgen.SystemUnderTest(lg, FakeEngine(seconds), library, batch, accuracy=False)
    settings = dict(enabled=True, target_qps=1.0, max_wait_ms=2.0, **options)
    cfg = InferConfig(model="fake", scenario="server", loadgen=LoadGenConfig(**settings))
    return loadgen.Runner(lg, cfg, sut, seconds, tmp_path / "logs", torch.device("cpu"))


@pytest.mark.timing
@needs_loadgen
def test_server_far_below_capacity_is_valid_and_far_above_is_invalid(tmp_path):
    runner = _fake_runner(tmp_path, latency_bound_ms=100, min_duration=0.2, min_queries=500)  # capacity 2000/s
    below = runner.run(400, "below")
    assert below["loadgen_result"] == "VALID", below["loadgen_reasons"]
    assert below["latency_ms_p99"] < 100
    above = runner.run(10000, "above")
    assert above["loadgen_result"] == "INVALID" and "latency bound not met" in above["loadgen_reasons"]
    assert above["loadgen_mean_batch"] > 6  # overloaded, the batcher fills its batches


@pytest.mark.timing
@needs_loadgen
def test_early_stopping_floor_is_loadgens_own_count(tmp_path):
    # With no query over the bound, LoadGen's early stopping needs 459 queries for p99 at 99% confidence:
    # one fewer is INVALID for its length alone, however fast the SUT.
    floor = loadgen.early_stopping_queries(0.99, 0)
    assert floor == 459
    for queries, result in ((floor - 1, "INVALID"), (floor, "VALID")):
        run = _fake_runner(tmp_path, latency_bound_ms=100, min_duration=0.05, min_queries=queries).run(1000, str(queries))
        assert run["loadgen_result"] == result, run["loadgen_reasons"]
        assert run["loadgen_reasons"] is None or run["loadgen_reasons"].startswith("early stopping not met")
    # Forgiving over-bound queries up to 0.5% takes more; a Server run without --min-queries runs that many.
    assert loadgen.early_stopping_queries(0.99, 0.005) == 1596
    settings, _ = _fake_runner(tmp_path, latency_bound_ms=100).settings(10.0)
    assert settings.min_query_count == 1596


@pytest.mark.timing
@needs_loadgen
def test_peak_search_converges_on_a_fake_sut_of_known_capacity(tmp_path):
    # 16 images per 20 ms: 800 a second. Long batches, so that a busy machine's late wake-ups (a millisecond
    # or two) barely move the capacity; the bound leaves room for five batches' time.
    batch, seconds = 16, 0.02
    capacity = batch / seconds
    runner = _fake_runner(tmp_path, batch, seconds, latency_bound_ms=100, min_duration=0.5, min_queries=500)
    peak, probes = loadgen.find_peak(lambda qps: runner.run(qps, f"{qps:.0f}")["loadgen_result"] == "VALID",
                                     start=0.75 * capacity, max_probes=7)
    assert len(probes) <= 7
    # Never above what the device can do (short runs tolerate a little overload); the lower bound is loose
    # because on a busy host the SUT's own work (LoadGen's callbacks, the batcher) slows it below the device.
    assert 0.3 * capacity <= peak <= 1.25 * capacity, probes
    lowest_invalid = min(q for q, passed in probes if not passed)
    assert lowest_invalid > peak  # the bracket closes on the peak: within precision, or the probes ran out
    assert lowest_invalid - peak <= loadgen.PEAK_PRECISION * peak or len(probes) == 7, probes


def test_find_peak_brackets_then_bisects_within_its_precision():
    for capacity, start in ((137.0, 10.0), (137.0, 1000.0), (5.5, 5.5)):
        calls = []
        peak, probes = loadgen.find_peak(lambda q: calls.append(q) or q <= capacity, start, max_probes=30)
        assert capacity / (1 + loadgen.PEAK_PRECISION) <= peak <= capacity
        assert [q for q, _ in probes] == calls and len(calls) < 30
    peak, probes = loadgen.find_peak(lambda q: False, 100.0, max_probes=4)
    assert peak is None and [q for q, _ in probes] == [100.0, 50.0, 25.0, 12.5]


@pytest.mark.timing
def test_dynamic_batches_never_exceed_max_batch_or_max_wait():
    max_batch, max_wait, slack = 4, 0.05, 0.03
    arrivals, runs, lock = {}, [], threading.Lock()

    def run_batch(items):
        with lock:
            runs.append((time.perf_counter(), list(items)))
        time.sleep(0.002)

    with DynamicBatcher(run_batch, max_batch, max_wait, workers=2) as batcher:
        rng = random.Random(0)
        for i in range(60):  # about 200 arrivals a second: batches fill or time out, both
            arrivals[i] = time.perf_counter()
            batcher.submit([i])
            time.sleep(rng.expovariate(200))
        time.sleep(2 * max_wait)
        burst = list(range(60, 70))
        for i in burst:
            arrivals[i] = time.perf_counter()
        batcher.submit(burst)  # more than a batch at once: full batches leave at once
    assert sorted(i for _, items in runs for i in items) == list(range(70))
    assert all(0 < len(items) <= max_batch for _, items in runs)
    for started, items in runs:
        waited = started - min(arrivals[i] for i in items)
        assert waited <= max_wait + slack, (items, waited)
        if len(items) < max_batch and items[0] < 60:  # a partial batch waited its full time for company
            assert waited >= max_wait - 0.002, (items, waited)
    assert [len(items) for _, items in runs if items[0] >= 60][:2] == [4, 4]
    assert max(b.size for b in batcher.batches) == max_batch


@needs_loadgen
@pytest.mark.slow
def test_accuracy_mode_counts_exactly_what_plain_inference_counts(cli, tiny_spec):
    assert cli("data", "sample", "digits", "--image-size", "16", "--format", "jpeg")[0] == 0
    code, _, err = cli("train", tiny_spec, "--data-dir", "digits", "--image-size", "16", "--batch-size", "32",
                       "--num-epochs", "1", "--warmup", "1", "--workers", "0", "--min-crop-scale", "0.5", "--flip", "0")
    assert code == 0, err
    common = ["infer", tiny_spec, "--data-dir", "digits", "--image-size", "16", "--batch-size", "32",
              "--log-dir", "log_tinyNet_32", "--warmup", "1", "--workers", "0"]
    code, _, err = cli(*common, "--num-epochs", "1")
    assert code == 0, err
    code, out, err = cli(*common, "--loadgen", "--loadgen-mode", "accuracy", "--scenario", "offline")
    assert code == 0, err
    plain, through_loadgen = read_jsonl("results_infer/runs.jsonl")
    assert through_loadgen["images_evaluated"] == plain["images_evaluated"] == 360  # the whole validation split
    assert (through_loadgen["top1"], through_loadgen["top5"]) == (plain["top1"], plain["top5"])
    assert plain["top1"] > 10  # a trained model: the counts compare real predictions
    assert through_loadgen["accuracy_matches_plain"] is True and through_loadgen["mlperf_compliant"] is None
    assert "Accuracy (LoadGen's accuracy log): top-1" in out and "(the same)" in out
    assert (Path(through_loadgen["loadgen_log_dir"]) / loadgen.ACCURACY_LOG).stat().st_size > 0


needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")


@needs_loadgen
@needs_tensorflow
@pytest.mark.parametrize("scenario, engine, precision", [("single-stream", "eager", "fp32"), ("offline", "tflite", "int8")])
def test_loadgen_drives_tensorflow_engines(cli, tiny_spec, scenario, engine, precision):
    """The same SUT over TensorFlow's engines (issue 21): the library's NCHW batches reach them as NHWC, the
    logits come back to the host, and the run is guarded and recorded as any other."""
    options, batch = SCENARIOS[scenario]
    code, out, err = cli("infer", tiny_spec, *SHORT, "--framework", "tensorflow", "--engine", engine, "--precision", precision,
                         "--scenario", scenario, *options, "--guard-batches", "1", "--calib-batches", "2")
    assert code == 0, err
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert (record["framework"], record["engine"], record["precision"]) == ("tensorflow", engine, precision)
    assert record["harness"] == "loadgen" and record["loadgen_scenario"] == loadgen.LOADGEN_SCENARIOS[scenario]
    assert record["batch_size"] == batch and record["status"] == "ok" and record["loadgen_result"] in ("VALID", "INVALID")
    assert record["images_per_sec"] > 0 and 0 < record["latency_ms_p50"] <= record["latency_ms_p99"]
    assert record["guard_ok"] is (None if precision == "fp32" else True)
    assert f"LoadGen {record['loadgen_scenario']}:" in out


@needs_loadgen
@needs_tensorflow
@pytest.mark.slow
def test_tensorflow_accuracy_mode_counts_exactly_what_plain_inference_counts(cli, tiny_spec):
    assert cli("data", "sample", "digits", "--image-size", "16", "--format", "jpeg")[0] == 0
    code, _, err = cli("train", tiny_spec, "--framework", "tensorflow", "--data-dir", "digits", "--image-size", "16",
                       "--batch-size", "32", "--num-epochs", "1", "--warmup", "1", "--min-crop-scale", "0.5", "--flip", "0",
                       "--learning-rate", "0.05")
    assert code == 0, err
    common = ["infer", tiny_spec, "--framework", "tensorflow", "--data-dir", "digits", "--image-size", "16",
              "--batch-size", "32", "--log-dir", "log_tinyNet_32", "--warmup", "1"]
    code, _, err = cli(*common, "--num-epochs", "1")
    assert code == 0, err
    code, out, err = cli(*common, "--loadgen", "--loadgen-mode", "accuracy", "--scenario", "offline")
    assert code == 0, err
    plain, through_loadgen = read_jsonl("results_infer/runs.jsonl")
    assert through_loadgen["weights_source"] == plain["weights_source"] == "checkpoint"
    assert through_loadgen["images_evaluated"] == plain["images_evaluated"] == 360  # the whole validation split
    assert (through_loadgen["top1"], through_loadgen["top5"]) == (plain["top1"], plain["top5"])
    assert plain["top1"] > 10  # a trained model (88.6% here): the counts compare real predictions
    assert through_loadgen["accuracy_matches_plain"] is True and "(the same)" in out


def test_without_the_package_loadgen_says_how_to_install_it(cli, tiny_spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # import fails as if it were not installed
    code, out, err = cli("infer", tiny_spec, "--random-weights", "--loadgen")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert "pip install 'cnnbench[loadgen]'" in err and "mlcommons-loadgen" in err
    assert not Path("results_infer").exists()  # nothing ran


BAD = [
    (["--scenario", "server"], "--scenario server runs through MLCommons LoadGen; add --loadgen"),
    (["--target-qps", "10"], "--target-qps applies to LoadGen runs; add --loadgen"),
    (["--loadgen", "--scenario", "server"], "--scenario server needs --target-qps"),
    (["--loadgen", "--target-qps", "10"], "--target-qps applies to --scenario server, not offline"),
    (["--loadgen", "--loadgen-mode", "accuracy"], "--loadgen-mode accuracy needs --data-dir"),
    (["--loadgen", "--scenario", "server", "--target-qps", "0"], "--target-qps must be a positive number"),
    (["--loadgen", "--min-queries", "0"], "--min-queries must be an integer of at least 1"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_loadgen_options_say_what_to_change(cli, tiny_spec, args, message):
    code, out, err = cli("infer", tiny_spec, "--random-weights", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# Issue 23: a signal at any stage of a LoadGen run ends it with exit 143 or 130, no C++ abort, and the record of
# what completed. Real processes and real signals: LoadGen's C++ threads are what made these go wrong.
SIGNALLED = {
    # scenario, options, the line after which the signal is sent, signal
    "server-sigterm-mid-run": (["--scenario", "server", "--target-qps", "0.05", "--min-queries", "100"],
                               "run: about", signal.SIGTERM),  # LoadGen asleep until its next query, minutes away
    "offline-sigterm-mid-run": (["--scenario", "offline", "--min-duration", "600"], "run: about", signal.SIGTERM),
    "multi-stream-sigterm-mid-run": (["--scenario", "multi-stream", "--min-duration", "600"], "run: about",
                                     signal.SIGTERM),
    "server-sigint-mid-run": (["--scenario", "server", "--target-qps", "100", "--latency-bound-ms", "500",
                               "--min-duration", "600"], "run: about", signal.SIGINT),
    "offline-sigterm-at-warm-up": (["--scenario", "offline", "--warmup", "1000000"], "sample library", signal.SIGTERM),
}


@needs_loadgen
@pytest.mark.slow
@pytest.mark.parametrize("case", SIGNALLED)
def test_a_signal_ends_a_loadgen_run_with_its_exit_status_and_record(tmp_path, tiny_spec, case):
    options, after, signum = SIGNALLED[case]
    argv = [sys.executable, "-m", "cnnbench", "infer", str(tiny_spec), *SHORT, *options]
    # SIGINT's default disposition in the child, whatever this process inherited (a background job ignores it)
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if after in line:
                break
        else:
            raise AssertionError(f"the run ended before {after!r}: {''.join(seen)}{process.stderr.read()}")
        time.sleep(1.0)  # into the stage: LoadGen's run has started (the duration line comes just before it)
        process.send_signal(signum)
        sent = time.monotonic()
        out, err = process.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(seen) + out
    status = {signal.SIGTERM: "terminated", signal.SIGINT: "interrupted"}[signum]
    assert process.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], out + err
    assert "terminate called" not in err and "Traceback" not in out + err and "Segmentation" not in err
    record = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")[-1]
    assert record["status"] == status and record["harness"] == "loadgen"
    assert record["reason"].startswith(run_record.STOPS[signal.Signals(signum).name][1])
    assert ("during the warm-up" if "warm-up" in case else "during LoadGen's run") in record["reason"]
    assert record["loadgen_result"] is None and "Result: not judged" in out  # a stopped run is never judged
    if "mid-run" in case:  # what completed: the samples answered while it ran
        assert "samples answered in" in record["reason"] and record["images_per_sec"] is not None
    # Stopped within LoadGen's grace and the record's writing (a busy host's FLOP/s probe included), not the run's
    # minutes; the Server's LoadGen thread, asleep, is left behind
    assert took < 60, took
    if case.startswith("server-sigterm"):
        assert "exiting without waiting for it" in out


@needs_loadgen
def test_expected_duration_is_said_before_each_run():
    lg = loadgen.require()
    settings = loadgen.mlperf_settings(lg, "server")
    settings.server_target_qps, settings.min_query_count, settings.min_duration_ms = 0.01, 100, 1000
    assert loadgen.expected_duration_line("server", settings, 0.01, 4) == \
        "LoadGen Server run: about 10,000.0 s expected (100 queries at 0.01 qps)"
    settings = loadgen.mlperf_settings(lg, "offline")  # MLPerf's 600 s outlast 24,576 samples at 400 a second
    assert loadgen.expected_duration_line("offline", settings, 0.01, 4) == \
        "LoadGen Offline run: about 600.0 s expected (the minimum duration 600 s)"
    settings = loadgen.mlperf_settings(lg, "single-stream")
    settings.min_duration_ms = 100
    assert loadgen.expected_duration_line("single-stream", settings, 0.02, 1) == \
        "LoadGen SingleStream run: about 2.0 s expected (100 queries of about 20.0 ms)"


@needs_loadgen
def test_a_server_rate_whose_queries_would_not_fit_in_memory_is_refused_before_the_run(cli, tiny_spec):
    # issue 23: 1e9 qps over MLPerf's 600 s was killed by the kernel at 23.7 GB, LoadGen generating its queries
    code, out, err = cli("infer", tiny_spec, "--random-weights", "--loadgen", "--scenario", "server", "--target-qps", "1e9")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    highest = loadgen.QUERY_MEMORY_SHARE * memory.available_bytes("cpu") / loadgen.BYTES_PER_QUERY / 600
    assert "--target-qps 1e+09 over 600 s makes LoadGen generate 6e+11 queries" in err
    assert f"at most {highest:.4g} qps fit" in err and "--min-duration" in err
    assert not Path("results_infer").exists() and "engine =" not in out  # refused before any work
    # a shorter run at the same rate fits where its queries do
    bound, seconds = loadgen.query_memory_bound(InferConfig(model="m", scenario="server", loadgen=LoadGenConfig(
        enabled=True, target_qps=1e9, min_duration=1e-3)), loadgen.require())
    assert seconds == 1e-3 and bound == pytest.approx(highest * 600 / 1e-3)


def test_drained_batcher_runs_nothing_it_took_out_and_no_empty_batch():
    runs = []
    with DynamicBatcher(runs.append, max_batch=4, max_wait=0.2) as batcher:
        batcher.submit([1, 2])
        time.sleep(0.05)  # the worker waits for the batch to fill
        assert batcher.drain() == [1, 2]
        time.sleep(0.3)  # past the wait: nothing left, so no batch
        batcher.submit([3])
    assert runs == [[3]]


class ShapeEngine(FakeEngine):
    """FakeEngine that remembers the batch sizes it was given."""

    def __init__(self, seconds: float):
        super().__init__(seconds)
        self.sizes: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(images.shape[0])
        return super().__call__(images)


@pytest.mark.parametrize("pad", [True, False])
@needs_loadgen
def test_a_partial_batch_is_padded_only_for_an_engine_of_one_batch(pad):
    """Issue 26: an engine that takes any batch (a shared ONNX Runtime build in the Server) runs a partial batch
    at its own size; one built for a fixed batch gets it padded with copies of its first image."""
    library = loadgen.SampleLibrary(torch.zeros(8, 3, 2, 2, dtype=torch.uint8), None, Normalizer("aimatrix_raw", "cpu"),
                                    torch.contiguous_format, 8)
    library.load(range(8))
    engine = ShapeEngine(0.0)
    completed = []

    class FakeLoadGen:
        QuerySampleResponse = staticmethod(lambda *fields: fields)
        QuerySamplesComplete = staticmethod(completed.extend)

    sut = loadgen.SystemUnderTest(FakeLoadGen, engine, library, 8, accuracy=False, pad=pad)

    class Sample:
        def __init__(self, index):
            self.id, self.index = index, index

    sut.answer([Sample(i) for i in range(3)])
    assert engine.sizes == [8 if pad else 3] and len(completed) == 3


@needs_loadgen
def test_onnxruntime_in_the_server_keeps_its_batch_free_and_spins_as_told(cli, tiny_spec):
    code, out, err = cli("infer", tiny_spec, *SHORT, "--engine", "onnxruntime", "--scenario", "server", "--target-qps", "50",
                         "--latency-bound-ms", "500", "--min-queries", "30", "--image-size", "16", "--intra-op-spinning", "off")
    assert code == 0, err
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert record["intra_op_spinning"] is False and record["status"] == "ok" and record["guard_ok"]
    assert "partial batches run at their own size, unpadded" in out
    assert config.InferConfig(model="m").intra_op_spinning == "on"  # ONNX Runtime's own default otherwise


@pytest.mark.parametrize("option", [["--intra-op-spinning", "off"], ["--intra-op-threads", "1"]])
def test_intra_op_settings_are_onnxruntime_options(cli, tiny_spec, option):
    code, out, err = cli("infer", tiny_spec, "--random-weights", *option)
    assert code == 2 and err.strip() == f"cnnbench: error: {option[0]} applies to --engine onnxruntime, not eager"


def test_onnxruntime_runs_on_the_intra_op_threads_asked_for(cli, tiny_spec, monkeypatch):
    import onnxruntime

    threads = []
    real = onnxruntime.InferenceSession

    def session(path, options, **kwargs):
        threads.append(options.intra_op_num_threads)
        return real(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    code, _, err = cli("infer", tiny_spec, "--random-weights", "--engine", "onnxruntime", "--image-size", "16",
                       "--num-batches", "2", "--warmup", "1", "--intra-op-threads", "1")
    assert code == 0, err
    assert threads == [1]
