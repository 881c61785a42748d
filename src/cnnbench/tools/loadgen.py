"""`cnnbench infer --loadgen`: MLCommons LoadGen measures the engine under MLPerf's rules.

LoadGen (the mlcommons-loadgen package: MLPerf Inference's own load generator, C++ with Python
bindings) issues the queries, times them and judges the run VALID or INVALID; cnnbench only answers
them, as a system under test (SUT) wrapping any engine and precision `cnnbench infer` builds, of either
framework. The recipe is inference.run's (weights, engine, fp32 guard, record); this module is its
measuring stage, and reaches the framework through its backend only (engine_input, engine_output,
synchronize: backends/base.py):

  sample library   LoadGen's query sample library: uint8 images on the host (synthetic, or the first
                   images of --data-dir's split with their labels); the set LoadGen loads before a run
                   is normalised onto the device then, untimed, as MLPerf allows (a TensorFlow engine
                   is handed each batch as its NHWC view, the same memory)
  warm-up          --warmup batches, then a few timed ones: the expected throughput/latency LoadGen
                   sizes Offline's single query and the streams' pre-generated queries with
  SUT              single- and multi-stream answer each query inline (one query is one batch);
                   offline and server put samples on a queue that worker threads batch (batching.py)
  the run          MLPerf's settings from LoadGen's own mlperf.conf (ResNet-50's, for every model),
                   shortened by --min-duration/--min-queries; summary and detail logs in the run's log
                   folder; the record takes the headline, percentiles, VALID/INVALID and the reasons
  peak search      --find-peak-qps: server runs at rising then bisected rates, each judged by LoadGen
  accuracy         --loadgen-mode accuracy: each sample answered with its five best classes, which
                   LoadGen writes to its accuracy log; counted with evaluation.Accuracy

Without the package, --loadgen fails before any work with the line that installs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnnbench.recipes import run_record

from cnnbench.core import errors, files, memory, telemetry, terminal
from cnnbench.tools.batching import DynamicBatcher
from cnnbench.core.config import SERVER_CPU_WAIT_SHARE, InferConfig
from cnnbench.data.normalization import Normalizer
from cnnbench.core.errors import UsageError
from cnnbench.data.evaluation import Accuracy, top5_classes
from cnnbench.recipes.inference import Harness, Resolved
from cnnbench.recipes.inference import run as run_inference
from cnnbench.core.timing import Terminated, measure

INSTALL = ("--loadgen needs MLCommons LoadGen (the mlcommons-loadgen package): pip install 'cnnbench[loadgen]' "
           "(in this repository: .venv/bin/pip install mlcommons-loadgen)")
LOADGEN_SCENARIOS = {"offline": "Offline", "single-stream": "SingleStream", "multi-stream": "MultiStream",
                     "server": "Server"}
# The mlperf.conf entry whose rules every model here runs under: MLPerf's image-classification benchmark.
MLPERF_MODEL = "resnet50"
DETAIL_LOG, SUMMARY_LOG, ACCURACY_LOG = "mlperf_log_detail.txt", "mlperf_log_summary.txt", "mlperf_log_accuracy.json"
# --find-peak-qps: bisection ends when the bracket [highest VALID, lowest INVALID] is within 2% of its lower end.
PEAK_PRECISION = 0.02
# LoadGen's latency percentiles (results.cc) that the record takes, as the built-in loop's latency_ms_* fields.
PERCENTILES = {"p50": "50.00", "p90": "90.00", "p99": "99.00"}
# LoadGen's early stopping (loadgen/early_stopping.cc, results.cc): a Server run is VALID only if, at 99%
# confidence, the true p99 is within the bound given the over-bound queries seen: with none over, 459
# queries; the fewer queries, the fewer over-bound ones it forgives. A Server run without --min-queries
# runs at least as many queries as forgive over-bound queries up to half the tail (0.5% for p99): 1596.
# Fewer, and a run at a load far below capacity is INVALID for its length, not its latency (the cause of
# a peak search that found nothing: each lower probe ran fewer queries).
EARLY_STOPPING_CONFIDENCE = 0.99
EARLY_STOPPING_FORGIVEN_SHARE = 0.5
# A signal stops a run (LoadGenTest): the main thread looks for one this often while LoadGen runs, then
# gives LoadGen this long to end once every query is completed. Offline's and the streams' runs end
# within it (a tiny model's stream at MLPerf's 600 s: about a second of unanswered queries); a Server
# run asleep until its next scheduled query is left behind, and the process exits without it.
SIGNAL_POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 3.0
# LoadGen generates every query of a run before it starts (loadgen.cc GenerateQueries; a Server run's
# are target_qps x min_duration). Measured by benchmarks/loadgen_scenarios.py --query-memory (saved output
# benchmarks/results/loadgen_scenarios-20261207T191043Z.txt): 316-361 bytes of peak resident memory per
# one-sample Server query (2e5..4e6 queries); counted here as 400 for the
# latency and response records each also gets. A run whose queries would take more than half the host's
# memory (the rest for the model, the engine, the sample library and everything else) is refused.
BYTES_PER_QUERY = 400
QUERY_MEMORY_SHARE = 0.5


def require():
    """The mlperf_loadgen module, or the one line that says how to install it (exit 2)."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise UsageError(INSTALL) from None
    return mlperf_loadgen


def run(cfg: InferConfig) -> dict:
    """inference.run with LoadGen measuring. A stopped Server run whose LoadGen thread is still asleep
    (LoadGenTest) cannot be joined, and the interpreter's exit would end it mid-C++ (std::terminate, issue
    23): once the record is saved, this process exits at once with the stop's status (143 or 130)."""
    harness = LoadGenHarness()
    record = run_inference(cfg, harness=harness)
    if harness.abandoned is not None and harness.abandoned.is_alive():
        terminal.say("LoadGen's run is asleep until its next scheduled query: exiting without waiting for it")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(errors.EXIT_TERMINATED if record["status"] == "terminated" else errors.EXIT_INTERRUPTED)
    return record


class SampleLibrary:
    """LoadGen's query sample library. `load`/`unload` are its LoadSamplesToRam/UnloadSamplesFromRam;
    `batch` gathers loaded samples into one engine batch, padded to the engine's static batch by
    repeating the first image (as evaluation.padded does; padding is never answered)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor | None, normalizer: Normalizer,
                 memory_format: torch.memory_format, performance_count: int):
        self.pixels, self.labels, self.normalizer, self.memory_format = pixels, labels, normalizer, memory_format
        self.total = pixels.shape[0]
        self.performance_count = min(performance_count, self.total)
        self.loaded: torch.Tensor | None = None
        self.rows: dict[int, int] = {}

    def load(self, indices) -> None:
        order = list(indices)
        images = self.normalizer(self.pixels[order].to(self.normalizer.device))
        self.loaded = images.contiguous(memory_format=self.memory_format)
        self.rows = {index: row for row, index in enumerate(order)}
        if self.loaded.is_cuda:  # worker threads read it from their own streams
            torch.cuda.current_stream(self.loaded.device).synchronize()

    def unload(self, indices) -> None:
        self.loaded, self.rows = None, {}

    def batch(self, indices: list[int], size: int) -> torch.Tensor:
        rows = torch.tensor([self.rows[i] for i in indices], device=self.loaded.device)
        images = self.loaded.index_select(0, rows)
        if len(indices) < size:
            images = torch.cat([images, images[:1].expand(size - len(indices), *images.shape[1:])])
        return images.contiguous(memory_format=self.memory_format)


def open_library(cfg: InferConfig, r: Resolved, source, mlperf_samples: int) -> SampleLibrary:
    """Synthetic: --loadgen-samples (default MLPerf's performance sample count) seeded random images.
    --data-dir: the split's first --loadgen-samples images (default all) with their labels, normalised as
    the source normalises them."""
    p = r.placement
    if cfg.data.data_dir is None:
        count = cfg.loadgen.samples or mlperf_samples
        generator = torch.Generator().manual_seed(cfg.seed)
        pixels = torch.randint(0, 256, (count, 3, r.image_size, r.image_size), generator=generator, dtype=torch.uint8)
        return SampleLibrary(pixels, None, Normalizer(r.entry.preprocessing, p.device), p.memory_format, mlperf_samples)
    wanted = min(cfg.loadgen.samples or source.images_per_epoch, source.images_per_epoch)
    images, labels, held = [], [], 0
    for host_images, host_labels in source.host_batches():
        batch_images, batch_labels = r.backend.library_pixels(host_images, host_labels)
        images.append(batch_images[: wanted - held])
        labels.append(batch_labels[: wanted - held])
        held += len(images[-1])
        if held >= wanted:
            break
    normalizer = Normalizer(source.preprocess.normalization, p.device)
    return SampleLibrary(torch.cat(images), torch.cat(labels), normalizer, p.memory_format, mlperf_samples)


class SystemUnderTest:
    """Answers LoadGen's queries with the engine. `issue` and `flush` are LoadGen's IssueQuery and FlushQueries.
    After `stop` (a signal) every waiting and every later query is completed at once, unanswered, so that
    LoadGen's run ends instead of waiting for answers that will not come."""

    def __init__(self, lg, engine: Callable[[torch.Tensor], torch.Tensor], library: SampleLibrary, batch: int,
                 accuracy: bool, pad: bool = True):
        self.lg, self.engine, self.library, self.batch, self.accuracy = lg, engine, library, batch, accuracy
        self.pad = pad  # False: the engine takes any batch up to its own (Engine.any_batch), so none is padded
        self.batcher: DynamicBatcher | None = None  # offline and server: set for each run
        self.failure: BaseException | None = None
        self.answered = 0  # samples the engine answered, every run of this SUT
        self.stopping = False
        self._count = threading.Lock()

    def issue(self, samples: list) -> None:
        if self.stopping:
            self.complete_unanswered(samples)
        elif self.batcher is not None:
            self.batcher.submit(samples)
        else:  # single- and multi-stream: the query is the batch, and the next one waits for it
            self.answer(samples)

    def flush(self) -> None:
        pass  # nothing is held back: a batch leaves when full or when its wait is over

    def stop(self) -> None:
        """From now on complete every query at once without running it, those waiting in the queue first
        (a batch the engine is running finishes and is answered)."""
        self.stopping = True
        if self.batcher is not None:
            self.complete_unanswered(self.batcher.drain())

    def complete_unanswered(self, samples: list) -> None:
        if samples:
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in samples])

    def answer(self, samples: list) -> None:
        """Run one batch and complete its samples. A failure still completes them (LoadGen would wait for
        them forever); the first one is raised once LoadGen returns."""
        top5 = None
        try:
            logits = self.engine(self.library.batch([s.index for s in samples], self.batch if self.pad else len(samples)))
            if self.accuracy:  # .cpu() waits for the device
                top5 = top5_classes(logits[: len(samples)]).to(torch.int32).cpu().numpy()
            elif logits.is_cuda:  # done means done on the device: this worker's stream only
                torch.cuda.current_stream(logits.device).synchronize()
        except BaseException as exc:
            self.failure = self.failure or exc
        if top5 is None:
            responses = [self.lg.QuerySampleResponse(s.id, 0, 0) for s in samples]
        else:  # LoadGen copies each response's bytes into its accuracy log before QuerySamplesComplete returns
            responses = [self.lg.QuerySampleResponse(s.id, row.ctypes.data, row.nbytes) for s, row in zip(samples, top5)]
        self.lg.QuerySamplesComplete(responses)
        with self._count:
            self.answered += len(samples)


def backend_engine(r: Resolved, engine) -> Callable[[torch.Tensor], torch.Tensor]:
    """The engine as the SUT calls it: a library batch in, logits LoadGen can rank out, whatever the framework."""
    backend = r.backend
    return lambda images: backend.engine_output(engine(backend.engine_input(images)))


def warm_up(cfg: InferConfig, r: Resolved, engine, library: SampleLibrary) -> float:
    """--warmup batches (MLPerf allows warming the SUT up before the run), then --min-steady-steps timed
    ones; returns the fastest one's seconds, from which LoadGen sizes its run. The fastest, not the
    median: an estimate too slow makes Offline's one query too small to last the minimum duration
    (INVALID), one too fast only makes the run longer.

    On a thread of its own, as the SUT's answers run (LoadGen's and the batcher's threads), not on the
    main one: on a busy 2-core host a tiny model's warm-up batch took 140-200 ms on the main thread while
    its run answered in 0.3-0.6 ms on LoadGen's, and the streams ran out of queries (INVALID). The main
    thread waits for it in short steps, so that a signal stops it after its current batch."""
    first = list(range(min(r.batch, library.total)))
    library.load(first)
    images = library.batch(first, r.batch)
    stop = threading.Event()
    outcome: dict = {}

    def step():
        if stop.is_set():
            raise KeyboardInterrupt  # measure() keeps what completed
        return engine(images)

    def work():
        try:
            outcome["times"] = measure(step, lambda: r.backend.synchronize(r.placement), warmup=cfg.measure.warmup,
                                       max_steps=cfg.measure.min_steady_steps)
        except BaseException as exc:  # raised on the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="cnnbench-warm-up", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(SIGNAL_POLL_SECONDS)
    except KeyboardInterrupt:  # the harness records what completed
        stop.set()
        _through_signals(thread.join)
        raise
    if "error" in outcome:
        raise outcome["error"]
    library.unload(first)
    return min(outcome["times"].steady_seconds)


def early_stopping_queries(percentile: float, over_share: float, confidence: float = EARLY_STOPPING_CONFIDENCE) -> int:
    """The fewest queries with which LoadGen's early stopping passes a run whose share of queries over the
    latency bound is `over_share`: the smallest n with P(Binomial(n, 1 - percentile) <= over) < 1 - confidence,
    over = floor(over_share * n) (LoadGen's odds(), a regularised incomplete beta, is this binomial sum)."""
    if not 0 <= over_share < 1 - percentile:
        raise ValueError(f"over_share must be in [0, {1 - percentile:g}), got {over_share}")
    q, n = 1 - percentile, 1
    while True:
        over = math.floor(over_share * n)
        terms = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(q) + (n - k) * math.log1p(-q)
                 for k in range(over + 1))
        if sum(math.exp(t) for t in terms) < 1 - confidence:
            return n
        n += 1


def mlperf_settings(lg, scenario: str):
    """TestSettings holding MLPerf's values for the scenario: LoadGen's own mlperf.conf (conf_type 0 reads
    the copy compiled into LoadGen), so durations, query counts, percentiles, seeds and the latency bound
    are MLPerf's, not restated here."""
    settings = lg.TestSettings()
    settings.FromConfig("", MLPERF_MODEL, LOADGEN_SCENARIOS[scenario], 0)
    settings.scenario = getattr(lg.TestScenario, LOADGEN_SCENARIOS[scenario])
    return settings


@dataclass(frozen=True)
class Rules:
    """MLPerf's values of what cnnbench may change, to say whether a run kept them."""

    min_duration_ms: int
    min_query_count: int
    latency_bound_ns: int
    performance_samples: int

    @classmethod
    def of(cls, settings) -> Rules:
        return cls(settings.min_duration_ms, settings.min_query_count, settings.server_target_latency_ns,
                   settings.performance_sample_count_override)


def noncompliance(rules: Rules, settings, scenario: str) -> list[str]:
    """Why a run is not MLPerf-compliant: each setting shortened or loosened against MLPerf's."""
    reasons = []
    if settings.min_duration_ms < rules.min_duration_ms:
        reasons.append(f"minimum duration {settings.min_duration_ms / 1000:g} s, under MLPerf's {rules.min_duration_ms / 1000:g} s")
    what = "samples" if scenario == "offline" else "queries"
    if settings.min_query_count < rules.min_query_count:
        reasons.append(f"minimum {settings.min_query_count} {what}, under MLPerf's {rules.min_query_count}")
    if scenario == "server" and settings.server_target_latency_ns > rules.latency_bound_ns:
        reasons.append(f"latency bound {settings.server_target_latency_ns / 1e6:g} ms, looser than MLPerf's "
                       f"{rules.latency_bound_ns / 1e6:g} ms")
    if settings.performance_sample_count_override < rules.performance_samples:
        reasons.append(f"{settings.performance_sample_count_override} images in the sample library, under MLPerf's "
                       f"performance sample count {rules.performance_samples}")
    return reasons


class Runner:
    """One LoadGen test per `run` call on the same SUT and library: its settings, its queue and workers,
    its logs in a folder of its own, and its figures."""

    def __init__(self, lg, cfg: InferConfig, sut: SystemUnderTest, batch_seconds: float, log_root: Path,
                 device: torch.device):
        self.lg, self.cfg, self.sut, self.batch_seconds, self.log_root = lg, cfg, sut, batch_seconds, log_root
        self.device = device
        self.completed: list[dict] = []  # each finished run's fields, in order
        self.abandoned: threading.Thread | None = None  # a stopped run's LoadGen thread that did not end

    def settings(self, target_qps: float | None):
        cfg, lg, batch = self.cfg, self.lg, self.sut.batch
        settings = mlperf_settings(lg, cfg.scenario)
        rules = Rules.of(settings)
        accuracy = cfg.loadgen.mode == "accuracy"
        settings.mode = lg.TestMode.AccuracyOnly if accuracy else lg.TestMode.PerformanceOnly
        if cfg.loadgen.min_duration is not None:
            settings.min_duration_ms = round(cfg.loadgen.min_duration * 1000)
        if cfg.loadgen.min_queries is not None:
            settings.min_query_count = cfg.loadgen.min_queries
        elif cfg.scenario == "server":
            settings.min_query_count = max(settings.min_query_count, self.server_queries())
        settings.performance_sample_count_override = self.sut.library.performance_count
        settings.offline_expected_qps = batch / self.batch_seconds
        settings.single_stream_expected_latency_ns = round(self.batch_seconds * 1e9)
        settings.multi_stream_expected_latency_ns = round(self.batch_seconds * 1e9)
        if cfg.scenario == "server":
            settings.server_target_qps = target_qps
            settings.server_target_latency_ns = round(cfg.loadgen.latency_bound_ms * 1e6)
        return settings, (None if accuracy else noncompliance(rules, settings, cfg.scenario))

    def server_queries(self) -> int:
        """Server's query floor for early stopping (EARLY_STOPPING_FORGIVEN_SHARE), at LoadGen's Server percentile."""
        percentile = mlperf_settings(self.lg, "server").server_target_latency_percentile
        return early_stopping_queries(percentile, EARLY_STOPPING_FORGIVEN_SHARE * (1 - percentile))

    def batcher(self) -> DynamicBatcher | None:
        cfg = self.cfg
        if cfg.scenario not in ("offline", "server"):
            return None
        # Offline's samples all arrive at once: no wait fills a batch. Server: a tenth of the latency
        # bound by default (a twentieth on a CPU: config.SERVER_CPU_WAIT_SHARE), leaving the rest for queueing
        # and the batch's own run.
        share = SERVER_CPU_WAIT_SHARE if self.device.type == "cpu" else 1 / 10
        wait_ms = 0.0 if cfg.scenario == "offline" else (
            cfg.loadgen.max_wait_ms if cfg.loadgen.max_wait_ms is not None else cfg.loadgen.latency_bound_ms * share)
        setup = (lambda: torch.cuda.set_stream(torch.cuda.Stream(self.device))) if self.device.type == "cuda" else None
        return DynamicBatcher(self.sut.answer, self.sut.batch, wait_ms / 1000, cfg.loadgen.workers, worker_setup=setup)

    def run(self, target_qps: float | None = None, name: str | None = None) -> dict:
        """One LoadGen test and its figures. A signal during it stops the SUT, waits for LoadGen to end (or
        leaves its thread behind: `abandoned`), and is re-raised; the completed runs are in `completed`."""
        settings, reasons = self.settings(target_qps)
        log_dir = self.log_root / name if name else self.log_root
        log_dir.mkdir(parents=True, exist_ok=True)
        terminal.say(expected_duration_line(self.cfg.scenario, settings, self.batch_seconds, self.sut.batch))
        batcher = self.batcher()
        self.sut.batcher = batcher
        test = LoadGenTest(self.lg, settings, self.sut, log_dir)
        try:
            test.run()
        except KeyboardInterrupt:
            if batcher is not None:
                _through_signals(batcher.close)
            if not test.ended:
                self.abandoned = test.thread
            raise
        if batcher is not None:
            batcher.close()
        if self.sut.failure is not None:
            raise self.sut.failure
        fields = loadgen_fields(self.cfg.scenario, read_detail(log_dir / DETAIL_LOG), self.sut.batch)
        fields.update(loadgen_target_qps=target_qps, loadgen_min_duration_s=settings.min_duration_ms / 1000,
                      loadgen_min_queries=settings.min_query_count, loadgen_log_dir=str(log_dir),
                      mlperf_compliant=None if reasons is None else not reasons,
                      mlperf_noncompliance="; ".join(reasons) if reasons else None,
                      loadgen_latency_bound_ms=self.cfg.loadgen.latency_bound_ms if target_qps else None,
                      **batch_fields(batcher))
        self.completed.append(fields)
        return fields


def expected_duration_line(scenario: str, settings, batch_seconds: float, batch: int) -> str:
    """How long LoadGen's run will take, said before it starts (issue 23: a Server run at 0.01 qps ran for
    minutes in silence): the minimum duration, or longer where the minimum query count takes longer at the
    target rate (server), the warm-up's throughput (offline) or its latency per query (the streams)."""
    minimum = settings.min_duration_ms / 1000
    queries = settings.min_query_count
    if scenario == "server":
        rate, what = settings.server_target_qps, f"{queries} queries at {settings.server_target_qps:g} qps"
    elif scenario == "offline":
        rate, what = batch / batch_seconds, f"{queries} samples at about {batch / batch_seconds:.1f} samples/s"
    else:
        rate, what = 1 / batch_seconds, f"{queries} queries of about {batch_seconds * 1000:.1f} ms"
    seconds = max(minimum, queries / rate)
    why = f"the minimum duration {minimum:g} s" if seconds == minimum else what
    return f"LoadGen {LOADGEN_SCENARIOS[scenario]} run: about {seconds:,.1f} s expected ({why})"


class LoadGenTest:
    """One LoadGen test on a thread of its own, while the main thread waits for it in short steps.

    LoadGen's StartTest blocks in C++ with Python's lock released (loadgen/bindings/python_api.cc:
    gil_scoped_release). On the main thread, Python's signal handlers (Ctrl-C; the CLI's SIGTERM handler)
    could not run until it returned, or ran inside a LoadGen callback there and raised through C++
    frames: a segmentation fault or std::terminate, and no record (issue 23). Here every LoadGen callback
    runs on LoadGen's threads or this one, never on the main thread, where the signal's exception is
    raised. On a signal the SUT completes every outstanding and later query at once, unanswered, and
    LoadGen ends its run: Offline's single query is then complete, the streams run out of pre-generated
    queries. A Server run sleeps until each query's scheduled time (issue_query_controller.cc:
    sleep_until), minutes at a low rate; after STOP_GRACE_SECONDS it is left behind (`ended` False)."""

    def __init__(self, lg, settings, sut: SystemUnderTest, log_dir: Path):
        self.lg, self.settings, self.sut, self.log_dir = lg, settings, sut, log_dir
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._test, name="cnnbench-loadgen", daemon=True)

    @property
    def ended(self) -> bool:
        return self.done.is_set()

    def _test(self) -> None:
        try:
            start_test(self.lg, self.settings, self.sut, self.log_dir)
        except BaseException as exc:  # raised on the main thread
            self.error = exc
        finally:
            self.done.set()

    def run(self) -> None:
        self.thread.start()
        try:
            while not self.done.wait(SIGNAL_POLL_SECONDS):
                pass
        except KeyboardInterrupt:
            self.sut.stop()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            _through_signals(lambda: self.done.wait(max(0.0, deadline - time.monotonic())))
            raise
        if self.error is not None:
            raise self.error


def _through_signals(wait: Callable[[], object]) -> None:
    """`wait()` to its end, though a second signal arrive while the first is acted on."""
    while True:
        try:
            wait()
            return
        except KeyboardInterrupt:
            continue


def start_test(lg, settings, sut: SystemUnderTest, log_dir: Path) -> None:
    """One LoadGen test; its summary, detail and accuracy logs go to log_dir (no trace: it grows with the run)."""
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.enable_trace = False
    library = sut.library
    sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
    qsl_handle = lg.ConstructQSL(library.total, library.performance_count, library.load, library.unload)
    try:
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, settings, log)
    finally:
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)


def read_detail(path: Path) -> dict:
    """LoadGen's detail log as {key: value}: its lines `:::MLLOG {json}`; errors LoadGen logged under "errors"."""
    values: dict = {"errors": []}
    for line in path.read_text().splitlines():
        _, marker, payload = line.partition(":::MLLOG ")
        if not marker:
            continue
        entry = json.loads(payload)
        values[entry["key"]] = entry["value"]
        if entry.get("metadata", {}).get("is_error"):
            values["errors"].append(f"{entry['key']}: {entry['value']}")
    return values


def loadgen_fields(scenario: str, log: dict, batch: int) -> dict:
    """The record's fields from LoadGen's detail log: the headline and latencies (ms), VALID/INVALID and why."""
    ms = 1e-6
    per_sample = {"offline": log.get("result_samples_per_second"),
                  "server": log.get("result_completed_samples_per_sec"),
                  "single-stream": log.get("result_qps_without_loadgen_overhead"),
                  "multi-stream": batch / (log["result_mean_query_latency_ns"] * 1e-9)
                  if log.get("result_mean_query_latency_ns") else None}[scenario]
    latency = {f"latency_ms_{name}": _scaled(log.get(f"result_{key}_percentile_latency_ns"), ms)
               for name, key in PERCENTILES.items()}
    latency.update(latency_ms_min=_scaled(log.get("result_min_latency_ns"), ms),
                   latency_ms_mean=_scaled(log.get("result_mean_latency_ns"), ms),
                   latency_ms_max=_scaled(log.get("result_max_latency_ns"), ms))
    # images_per_sec_from_mean_time too: LoadGen's figure is samples over the run's time (efficiency.py reads it)
    return {"images_per_sec": per_sample, "images_per_sec_from_mean_time": per_sample, "loadgen_samples_per_sec": per_sample,
            **latency,
            "loadgen_query_latency_ms_p99": _scaled(log.get("result_99.00_percentile_per_query_latency_ns"), ms),
            "loadgen_early_stopping_latency_ms": _scaled(log.get("early_stopping_latency_ss")
                                                         or log.get("early_stopping_latency_ms"), ms),
            "loadgen_query_count": log.get("result_query_count"),
            "loadgen_result": log.get("result_validity"), "loadgen_reasons": invalid_reasons(log),
            "loadgen_errors": "; ".join(log["errors"]) or None}


def _scaled(value, factor: float) -> float | None:
    return None if value is None else value * factor


def invalid_reasons(log: dict) -> str | None:
    """LoadGen's own words for an INVALID run: the constraints not met, its recommendation, early stopping's result."""
    if log.get("result_validity") == "VALID":
        return None
    checks = {"result_perf_constraints_met": "latency bound not met", "result_min_duration_met": "minimum duration not met",
              "result_min_queries_met": "minimum query count not met", "early_stopping_met": "early stopping not met"}
    reasons = [text for key, text in checks.items() if log.get(key) is False]
    for key in ("result_invalid_reason", "early_stopping_result"):
        if log.get(key) and (key != "early_stopping_result" or log.get("early_stopping_met") is False):
            reasons.append(" ".join(str(log[key]).replace("*", " ").split()))
    return "; ".join(reasons) or None


def batch_fields(batcher: DynamicBatcher | None) -> dict:
    if batcher is None or not batcher.batches:
        return {"loadgen_batches": None, "loadgen_mean_batch": None, "loadgen_max_wait_ms_seen": None}
    sizes = [b.size for b in batcher.batches]
    waits = [b.dispatched - max(b.taken, b.first_arrival) for b in batcher.batches]
    return {"loadgen_batches": len(sizes), "loadgen_mean_batch": sum(sizes) / len(sizes),
            "loadgen_max_wait_ms_seen": 1000 * max(waits)}


def find_peak(probe: Callable[[float], bool], start: float, max_probes: int,
              precision: float = PEAK_PRECISION) -> tuple[float | None, list[tuple[float, bool]]]:
    """The highest rate `probe` passes, in at most `max_probes` probes: from `start`, doubling while it
    passes or halving while it fails until a passing and a failing rate bracket the peak, then
    bisecting until the bracket is within `precision` of its lower end. Returns (the highest passing
    rate or None, every (rate, passed) in order).

    LoadGen has a FindPeakPerformance mode of its own, but it needs a VALID lower bound from the user,
    runs until its precision with no bound on the number of runs, judges the latency constraint only
    (not early stopping or the query count), and reports only at the end; so each probe here is a plain
    LoadGen run, judged whole."""
    probes: list[tuple[float, bool]] = []
    low = high = None
    rate = start
    while len(probes) < max_probes and (low is None or high is None):
        passed = probe(rate)
        probes.append((rate, passed))
        low, high = (rate, high) if passed else (low, rate)
        rate = rate * 2 if high is None else rate / 2
    while len(probes) < max_probes and low is not None and high is not None and high - low > precision * low:
        rate = (low + high) / 2
        passed = probe(rate)
        probes.append((rate, passed))
        low, high = (rate, high) if passed else (low, rate)
    return low, probes


def peak_search(runner: Runner, start: float, max_probes: int) -> dict:
    """--find-peak-qps: Server runs by `find_peak`, each printed; the record is the highest VALID run's,
    with the peak and every probe. A rate whose queries would not fit in memory fails without a run."""
    bound = query_memory_bound(runner.cfg, runner.lg)

    def probe(qps: float) -> bool:
        if bound is not None and qps > bound[0]:
            terminal.say(f"probe at {qps:.1f} qps: not run, its queries would not fit in memory (at most {bound[0]:.4g} qps)")
            return False
        fields = runner.run(qps, f"probe-{len(runner.completed) + 1:02d}-{qps:.1f}qps")
        p99 = fields["latency_ms_p99"]
        terminal.say(f"probe {len(runner.completed)}: {qps:.1f} qps -> {fields['loadgen_result']} (p99 "
                      f"{'-' if p99 is None else f'{p99:.2f}'} ms, completed {fields['loadgen_samples_per_sec'] or 0:.1f} "
                      f"samples/s){'' if fields['loadgen_result'] == 'VALID' else ': ' + (fields['loadgen_reasons'] or '')}")
        return fields["loadgen_result"] == "VALID"

    peak, probes = find_peak(probe, start, max_probes)
    terminal.say(f"Peak valid Server QPS: {peak:.1f} ({len(probes)} LoadGen runs)" if peak is not None else
                  f"No VALID Server run in {len(probes)} LoadGen runs, the lowest at {min(q for q, _ in probes):.1f} qps")
    return peak_fields(runner.completed)


def peak_fields(completed: list[dict]) -> dict:
    """A peak search's record from its completed runs: the highest VALID run's fields (else the last run's),
    the peak and every run, in order."""
    valid = [f for f in completed if f["loadgen_result"] == "VALID"]
    best = max(valid, key=lambda f: f["loadgen_target_qps"]) if valid else completed[-1]
    return {**best, "loadgen_peak_qps": best["loadgen_target_qps"] if valid else None,
            "loadgen_probes": [{"qps": f["loadgen_target_qps"], "result": f["loadgen_result"], "p99_ms": f["latency_ms_p99"]}
                               for f in completed]}


def log_accuracy(log_dir: Path, library: SampleLibrary) -> tuple[float | None, float | None, int]:
    """Top-1/top-5 from LoadGen's accuracy log (each sample's five best classes as int32), each image
    counted once (a multi-stream query's last samples may repeat), by evaluation.Accuracy."""
    entries = {}
    for entry in json.loads((log_dir / ACCURACY_LOG).read_text()):
        entries.setdefault(entry["qsl_idx"], entry["data"])
    indices = sorted(entries)
    top5 = torch.from_numpy(np.stack([np.frombuffer(bytes.fromhex(entries[i]), dtype=np.int32) for i in indices]))
    accuracy = Accuracy()
    accuracy.add_top5(top5.long(), library.labels[indices])
    return accuracy.result()


def plain_accuracy(engine, library: SampleLibrary, batch: int) -> tuple[float | None, float | None, int]:
    """The same images through the engine in order, as `cnnbench infer --data-dir` counts them: the check
    that LoadGen's path (sample indices, responses, the log) loses or changes nothing."""
    accuracy = Accuracy()
    step = max(library.performance_count // batch, 1) * batch
    for start in range(0, library.total, step):
        chunk = list(range(start, min(start + step, library.total)))
        library.load(chunk)
        for first in range(0, len(chunk), batch):
            indices = chunk[first : first + batch]
            accuracy.add(engine(library.batch(indices, batch)), library.labels[indices], len(indices))
        library.unload(chunk)
    return accuracy.result()


def query_memory_bound(cfg: InferConfig, lg) -> tuple[float, float] | None:
    """A Server run's queries, all generated before it starts, against QUERY_MEMORY_SHARE of the host's
    memory: (the highest --target-qps that fits, the run's seconds), or None where the host's memory is unknown."""
    total = memory.available_bytes("cpu")
    if total is None:
        return None
    settings = mlperf_settings(lg, "server")
    seconds = cfg.loadgen.min_duration if cfg.loadgen.min_duration is not None else settings.min_duration_ms / 1000
    return QUERY_MEMORY_SHARE * total / BYTES_PER_QUERY / seconds, seconds


def check_query_memory(cfg: InferConfig, lg) -> None:
    """--target-qps whose query set would not fit in memory: one line with the bound, before any work
    (issue 23: 1e9 qps was killed by the kernel at 23.7 GB)."""
    bound = query_memory_bound(cfg, lg)
    if cfg.scenario != "server" or cfg.loadgen.target_qps is None or bound is None:
        return
    highest, seconds = bound
    if cfg.loadgen.target_qps > highest:
        raise UsageError(f"--target-qps {cfg.loadgen.target_qps:g} over {seconds:g} s makes LoadGen generate "
                         f"{cfg.loadgen.target_qps * seconds:.3g} queries before it starts, about "
                         f"{cfg.loadgen.target_qps * seconds * BYTES_PER_QUERY / 2**30:,.0f} GiB; at most "
                         f"{highest:.4g} qps fit in half of this host's {memory.available_bytes('cpu') / 2**30:.1f} GiB "
                         f"(or shorten the run with --min-duration)")


class LoadGenHarness(Harness):
    """inference.run's measuring stage when --loadgen is given. A signal at any point of it (the warm-up,
    LoadGen's run, the results) ends it with the record of what completed, status interrupted or
    terminated; `abandoned` is a stopped Server run's LoadGen thread that is still asleep (see `run`)."""

    def __init__(self):
        self.sut: SystemUnderTest | None = None
        self.runner: Runner | None = None
        self.stage = "before the warm-up"
        self.run_started: float | None = None

    @property
    def abandoned(self) -> threading.Thread | None:
        return self.runner.abandoned if self.runner is not None else None

    def preflight(self, cfg: InferConfig, r: Resolved) -> None:
        self.lg = require()
        files.ensure_writable(r.log_dir, "--log-dir")
        check_query_memory(cfg, self.lg)

    def measure(self, cfg: InferConfig, r: Resolved, engine, source, started_at: float) -> dict:
        sampler = telemetry.sampler_for(r.placement.device, not cfg.measure.no_telemetry)
        try:
            fields = self.measured(cfg, r, engine, source, sampler)
        except KeyboardInterrupt as exc:
            fields = self.stopped(cfg, r, exc)
        answered = self.sut.answered if self.sut is not None else 0
        # the sampler runs over LoadGen's runs only, started after the warm-up
        fields.update(sampler.fields(answered) if self.run_started is not None else
                      telemetry.empty_fields("off", "stopped before LoadGen's run"))
        images = r.batch * (cfg.measure.warmup + cfg.measure.min_steady_steps) + answered
        wall = time.time() - started_at
        fields.update(harness="loadgen", loadgen_scenario=LOADGEN_SCENARIOS[cfg.scenario], loadgen_mode=cfg.loadgen.mode,
                      system_images_per_sec=images / wall, images_processed=images, wall_seconds=wall,
                      warmup_steps=cfg.measure.warmup)
        return fields

    def measured(self, cfg: InferConfig, r: Resolved, engine, source, sampler) -> dict:
        lg = self.lg
        library = open_library(cfg, r, source, mlperf_settings(lg, cfg.scenario).performance_sample_count_override)
        terminal.say(f"LoadGen sample library: {library.total} images, {library.performance_count} loaded per run")
        pad = not getattr(engine, "any_batch", False)  # TensorFlow's engines are not Engine subclasses
        engine = backend_engine(r, engine)
        self.stage = "during the warm-up, before LoadGen's run"
        batch_seconds = warm_up(cfg, r, engine, library)
        accuracy = cfg.loadgen.mode == "accuracy"
        self.sut = sut = SystemUnderTest(lg, engine, library, r.batch, accuracy, pad)
        if not pad:
            terminal.say(f"The engine takes any batch up to {r.batch}: partial batches run at their own size, unpadded")
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.runner = runner = Runner(lg, cfg, sut, batch_seconds,
                                      r.log_dir / "loadgen" / f"{cfg.scenario}-{cfg.loadgen.mode}-{stamp}", r.placement.device)
        terminal.say(f"LoadGen {LOADGEN_SCENARIOS[cfg.scenario]} ({cfg.loadgen.mode}); warm-up: "
                      f"{batch_seconds * 1000:.2f} ms per batch of {r.batch}")
        if cfg.scenario == "server" and (cfg.loadgen.min_queries or math.inf) < (floor := runner.server_queries()):
            terminal.warn(f"--min-queries {cfg.loadgen.min_queries} is under the {floor} queries with which LoadGen's "
                           f"early stopping forgives a few over the latency bound: a run can be INVALID for its length")
        self.stage, self.run_started = "during LoadGen's run", time.perf_counter()
        with sampler:
            sampler.mark_steady()  # the window is LoadGen's runs, after the warm-up
            if cfg.loadgen.find_peak_qps:
                # The peak is below the engine's batch throughput: start at half of it.
                fields = peak_search(runner, 0.5 * r.batch / batch_seconds, cfg.loadgen.peak_probes)
            else:
                fields = runner.run(cfg.loadgen.target_qps)
        self.stage = "after LoadGen's run, while reading its results"
        fields.update(status="ok", reason=None)
        if accuracy:
            top1, top5, evaluated = log_accuracy(Path(fields["loadgen_log_dir"]), library)
            plain1, plain5, _ = plain_accuracy(engine, library, r.batch)
            fields.update(top1=top1, top5=top5, images_evaluated=evaluated, plain_top1=plain1, plain_top5=plain5,
                          accuracy_matches_plain=(top1, top5) == (plain1, plain5))
        return fields

    def stopped(self, cfg: InferConfig, r: Resolved, exc: KeyboardInterrupt) -> dict:
        """The record's fields of a run stopped by a signal: the completed LoadGen runs' (a peak search's best
        VALID probe and its probes), else the samples the engine answered over the seconds LoadGen ran, never
        judged; the reason says at which stage it stopped and what completed."""
        status, reason = run_record.STOPS["SIGTERM" if isinstance(exc, Terminated) else "SIGINT"]
        completed = self.runner.completed if self.runner is not None else []
        fields = loadgen_fields(cfg.scenario, {"errors": []}, r.batch)
        fields.update(loadgen_target_qps=cfg.loadgen.target_qps, loadgen_log_dir=None)
        answered = self.sut.answered if self.sut is not None else 0
        seconds = time.perf_counter() - self.run_started if self.run_started is not None else 0.0
        if cfg.loadgen.find_peak_qps and completed:
            fields.update(peak_fields(completed))
        elif completed:
            fields.update(completed[-1])
        elif seconds > 0:
            fields.update(images_per_sec=answered / seconds, loadgen_log_dir=str(self.runner.log_root))
        runs = f"{len(completed)} LoadGen run{'s' if len(completed) > 1 else ''}" if completed else "no LoadGen run"
        what = (f"{runs} completed, {answered} samples answered in {seconds:.1f} s" if self.run_started is not None
                else "no LoadGen run started")
        terminal.say(f"LoadGen stopped {self.stage}: {what}")
        fields.update(status=status, reason=f"{reason}, {self.stage}: {what}")
        return fields

    def report(self, cfg: InferConfig, record: dict) -> None:
        for line in report_lines(cfg, record):
            terminal.say(line)
        run_record.hardware_lines(record)


def report_lines(cfg: InferConfig, record: dict) -> list[str]:
    """The final lines: the scenario's headline, LoadGen's verdict, MLPerf compliance, where the logs are."""
    def ms(key: str) -> str:
        return "-" if record.get(key) is None else f"{record[key]:.2f} ms"

    headline = {
        "offline": f"{record['loadgen_samples_per_sec'] or 0:.1f} samples/s",
        "single-stream": f"90th-percentile latency {ms('latency_ms_p90')} (early-stopping estimate "
                         f"{ms('loadgen_early_stopping_latency_ms')})",
        "multi-stream": f"99th-percentile per-query latency {ms('loadgen_query_latency_ms_p99')} "
                        f"({record['batch_size']} images a query)",
        "server": f"target {record['loadgen_target_qps'] or 0:g} qps, completed {record['loadgen_samples_per_sec'] or 0:.1f} "
                  f"samples/s, 99th-percentile latency {ms('latency_ms_p99')} (bound {cfg.loadgen.latency_bound_ms:g} ms)",
    }[cfg.scenario]
    lines = [f"LoadGen {record['loadgen_scenario']}: {headline}",
             f"Latency: p50 {ms('latency_ms_p50')}  p90 {ms('latency_ms_p90')}  p99 {ms('latency_ms_p99')}  "
             f"max {ms('latency_ms_max')}",
             f"Result: {record['loadgen_result']}" + (f" ({record['loadgen_reasons']})" if record["loadgen_reasons"] else "")
             if record["loadgen_result"] else f"Result: not judged ({record['reason']})"]
    if record["status"] != "ok" and record["loadgen_result"]:
        lines.append(f"Stopped: {record['reason']}")
    if record.get("mlperf_compliant") is not None:
        lines.append("MLPerf-compliant settings: " + ("yes" if record["mlperf_compliant"] else
                                                     f"no, {record['mlperf_noncompliance']}"))
    if record.get("loadgen_errors"):
        lines.append(f"LoadGen reported errors: {record['loadgen_errors']}")
    if record.get("top1") is not None:
        agree = "the same" if record["accuracy_matches_plain"] else "DIFFERENT"
        lines.append(f"Accuracy (LoadGen's accuracy log): top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%  over "
                     f"{record['images_evaluated']} images; plain inference on them: top-1 {record['plain_top1']:.2f}%  "
                     f"top-5 {record['plain_top5']:.2f}% ({agree})")
    if record.get("loadgen_log_dir"):
        lines.append(f"LoadGen logs: {record['loadgen_log_dir']}")
    return lines
