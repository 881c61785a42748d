"""`cnnbench infer`: the inference benchmark, read top to bottom, for every framework.

`run` is the recipe: preflight (validate and resolve), load the weights into the model, take the
guard and calibration inputs, compute fp32 references, build the engine (export / quantise /
compile, timed apart), check it against the references (the fp32 guard), measure, count accuracy
exactly, record. The model, its weights, the engines and the device are the framework's, asked of its
backend (cnnbench.backends.get(--framework), backends/base.py); the rest is written here once.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnbench import backends
from cnnbench.backends.base import Backend
from cnnbench.core import environment, files, stats, telemetry, terminal
from cnnbench.core.config import InferConfig
from cnnbench.core.placement import Placement
from cnnbench.core.stats import throughput
from cnnbench.core.timing import measure
from cnnbench.data.evaluation import Accuracy
from cnnbench.engines import ArtifactCache
from cnnbench.engines import table as engine_table
from cnnbench.models.registry import ModelEntry, resolve_with_size
from cnnbench.recipes import run_record

# Largest relative error ||out - ref|| / ||ref|| of the logits, against eager fp32 on the same inputs,
# under which an engine's figures are trusted. Measured by benchmarks/guard_bounds.py (saved under
# benchmarks/results/guard_bounds-20261129T001708Z.txt; docs "The fp32 guard"), bounds at 3x or more:
#   fp32 engines (onnxruntime, compile): 1.2e-7 .. 9.8e-7, summation order only   -> bound 1e-4
#   fp16 autocast (10-bit mantissa): 3.2e-4 .. 8.8e-4                                -> bound 1e-2
#   bf16 autocast (8-bit mantissa): 3.5e-3 .. 6.4e-3                                 -> bound 5e-2
#   int8 QDQ: 2.5e-2 .. 2.7e-2 (uint8 activations), 3.2e-2 .. 4.9e-2 (symmetric)     -> bound 0.15
# tf32 has fp16's 10-bit mantissa, so it gets fp16's bound.
GUARD_BOUNDS = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2, "int8": 0.15}
# Where one build serves every batch size (engines/table.shares_builds), int8 is calibrated once per model on
# --calib-batches batches of this many images, whatever the run's batch: the same calibration set for every
# configuration, and no calibration repeated per batch size (issue 26). Elsewhere (TensorRT's static engines)
# calibration batches are the run's own.
SHARED_CALIBRATION_BATCH = 16


def default_compile_mode(device: torch.device) -> str:
    # CUDA graphs remove per-kernel launch cost on a GPU; on a CPU they do not exist.
    return "max-autotune" if device.type == "cuda" else "max-autotune-no-cudagraphs"


@dataclass(frozen=True)
class Resolved:
    entry: ModelEntry
    image_size: int
    placement: Placement
    batch: int
    log_dir: Path
    compile_mode: str | None
    backend: Backend


def preflight(cfg: InferConfig) -> Resolved:
    """Validate and resolve everything a run needs before any work: model and size, placement (the memory
    format for this engine), the engine/precision pair, that weights exist, and the folders it writes."""
    cfg.validate()
    backend = backends.get(cfg.framework)
    backend.check_installed()
    entry, image_size = resolve_with_size(cfg.model, cfg.image_size, cfg.framework)
    backend.check_model(entry, image_size)
    placement = backend.resolve_placement(cfg.placement, engine=cfg.engine)
    backend.check_engine(cfg.engine, placement.precision, placement.device.type)
    log_dir = run_record.log_dir(cfg, entry)
    backend.check_weights(cfg, entry, log_dir)
    files.ensure_writable(Path(cfg.results_dir), "--results-dir")
    if cfg.cache_path:
        files.ensure_writable(Path(cfg.cache_path), "--cache-path")
    backend.ready()  # last: a mistake above is one line, before a framework's start-up lines
    # single-stream (MLPerf): one image per query, each issued when the previous one has finished.
    compile_mode = cfg.compile_mode or default_compile_mode(placement.device) if backend.compile_modes else None
    return Resolved(entry, image_size, placement, cfg.engine_batch(placement.device.type), log_dir, compile_mode, backend)


def run(cfg: InferConfig, started_at: float | None = None, harness: Harness | None = None) -> dict:
    """The recipe. `harness` measures the built engine and reports: the built-in loop unless given
    (tools/loadgen.py passes LoadGen's)."""
    started_at = started_at or environment.process_start_time()
    harness = harness or BuiltInLoop()
    r = preflight(cfg)
    backend = r.backend
    harness.preflight(cfg, r)
    backend.apply(r.placement, training=False)
    weights = backend.inference_weights(cfg, r.entry, r.log_dir)
    record = run_record.begin("infer", cfg, r.entry, r.placement, r.batch, r.image_size, header_lines(cfg, r, weights),
                              engine=cfg.engine, scenario=cfg.scenario, weights_source=weights.source,
                              weights=weights.description)
    backend.seed(cfg.seed)
    with run_record.out_of_memory_recorded(record, cfg.results_dir, r.entry, r.placement, training=False):
        model, digest = load_model(r, weights)
        source = backend.open_source(cfg.data, r.entry, r.batch, r.image_size, r.placement, cfg.seed, train=False)
        terminal.say(f"data = {source.describe()}")
        inputs = Inputs(cfg, r, source)
        checked = (cfg.engine, r.placement.precision) != ("eager", "fp32")
        guard_inputs = inputs.take(cfg.guard_batches, 1000) if checked else []
        references = reference_logits(cfg, r, model, digest, guard_inputs)
        engine, cache_notes = build(cfg, r, model, digest, inputs, guard_inputs)
        checks = fp32_guard(cfg, r, engine, guard_inputs, references) if checked else guard_fields(None)
        figures = harness.measure(cfg, r, engine, source, started_at)
    record.update(figures, weights_digest=digest, compile_mode=r.compile_mode if cfg.engine == "compile" else None,
                  **{k: v for k, v in engine.info.items() if k != "compile_mode"}, cache_notes=cache_notes or None,
                  **checks, **run_record.memory_fields(r.placement.device))
    record.update(run_record.efficiency_fields(record, r.entry, "infer", r.placement.device))
    if cfg.data.data_dir:
        source.close()
    harness.report(cfg, record)
    run_record.save(record, cfg.results_dir)
    backend.reset()
    return record


class Harness:
    """What measures a built engine: `measure` returns the record's figures, `report` prints the final lines."""

    def preflight(self, cfg: InferConfig, r: Resolved) -> None:
        """Checks of its own, before any work (a missing package, a folder it writes)."""

    def measure(self, cfg: InferConfig, r: Resolved, engine, source, started_at: float) -> dict:
        raise NotImplementedError

    def report(self, cfg: InferConfig, record: dict) -> None:
        raise NotImplementedError


class BuiltInLoop(Harness):
    """cnnbench's own loop (timing.measure): offline batches back to back, or single-stream batch-1 queries."""

    def measure(self, cfg: InferConfig, r: Resolved, engine, source, started_at: float) -> dict:
        if cfg.data.data_dir is not None:
            stream = r.backend.real_batches(source, r.batch, r.placement, cfg.data.num_epochs)

            def step():
                images, labels, n = next(stream)
                return engine(images), labels, n
        else:
            images = next(source.batches())[0]

            def step():
                return engine(images), None, r.batch
        return measured_figures(cfg, r, step, source, r.backend.accuracy(), lambda: r.backend.synchronize(r.placement),
                                f"infer {r.entry.name}{r.backend.tag} {cfg.engine} {r.placement.precision}", started_at)

    def report(self, cfg: InferConfig, record: dict) -> None:
        report(cfg, record)


def header_lines(cfg: InferConfig, r: Resolved, weights) -> list[str]:
    return [f"resolved: {r.backend.describe()}engine {cfg.engine}, {r.placement.describe()}, scenario {cfg.scenario}, "
            f"batch {r.batch}, image {r.image_size}px" + (f", compile mode {r.compile_mode}"
                                                          if cfg.engine == "compile" and r.compile_mode else ""),
            f"weights = {weights.description}"]


def load_model(r: Resolved, weights):
    """The eval-mode fp32 model with its weights, placed; and the weights' digest (part of the cache key)."""
    return r.backend.load_model(r.entry, r.image_size, r.placement, weights)


class Inputs:
    """Guard, calibration and example batches: the first batches of the real data, or seeded random ones."""

    def __init__(self, cfg: InferConfig, r: Resolved, source):
        self.cfg, self.r, self.source = cfg, r, source

    def take(self, count: int, seed_offset: int, batch: int | None = None) -> list:
        r, batch = self.r, batch or self.r.batch
        if self.cfg.data.data_dir is not None:
            batches = r.backend.real_batches(self.source, batch, r.placement)
            return [images for images, _, _ in itertools.islice(batches, count)]
        return [r.backend.synthetic_batch(r.entry, batch, r.image_size, r.placement, self.cfg.seed + seed_offset + i)
                for i in range(count)]

    def calibration_batch(self, shared: bool) -> int:
        return SHARED_CALIBRATION_BATCH if shared else self.r.batch

    def calibration_tag(self, shared: bool) -> str:
        """The calibration set's identity, for the int8 artefact's name in a shared cache entry."""
        what = (self.cfg.data.data_dir, self.cfg.calib_batches, self.calibration_batch(shared), self.cfg.seed)
        return hashlib.sha256(repr(what).encode()).hexdigest()[:8] if shared else ""

    def calibration(self, shared: bool = False) -> list:
        if self.cfg.data.data_dir is None:
            terminal.warn("int8 calibrated on synthetic images: accuracy figures of this engine are meaningless; "
                           "give --data-dir for a real calibration")
        return self.take(self.cfg.calib_batches, 2000, self.calibration_batch(shared))


def build(cfg: InferConfig, r: Resolved, model, digest: str, inputs: Inputs, guard_inputs: list):
    """The engine, from the artefact cache when it holds an intact one; (engine, the cache's notes). Where one
    build serves every batch size and precision (engines/table.shares_builds), the key holds neither: a sweep's
    configurations of one model share its export and its int8 calibration."""
    p = r.placement
    shared = engine_table.shares_builds(cfg.framework, cfg.engine, p.device.type)
    key = {"model": r.entry.name, "weights": digest, "engine": cfg.engine, "image_size": r.image_size,
           **r.backend.cache_identity(cfg.engine, p, r.compile_mode)}
    if not shared:
        key.update(precision=p.precision, batch_size=r.batch,
                   calibration=(cfg.data.data_dir, cfg.calib_batches) if p.precision == "int8" else None)
    cache = ArtifactCache(cfg.cache_path, key)
    # Engines that build (export, compile) trace one batch; eager builds nothing and needs none.
    example = guard_inputs[0] if guard_inputs else None if cfg.engine == "eager" else inputs.take(1, 3000)[0]
    try:
        engine = r.backend.build_engine(cfg, r.entry, r.image_size, p, r.batch, model, example, cache,
                                        lambda: inputs.calibration(shared), r.compile_mode, shared=shared,
                                        calibration_tag=inputs.calibration_tag(shared))
    finally:
        cache.close()
    for note in cache.notes:
        terminal.warn(note)
    info = engine.info
    state = "nothing to build" if cfg.engine == "eager" else "hit" if info["cache_hit"] else "miss" if cfg.cache_path else "off"
    terminal.say(f"engine = {cfg.engine}{r.backend.tag}: build {info['engine_build_seconds']:.2f} s, load "
                  f"{info['engine_load_seconds']:.2f} s, cache {state}"
                  + "".join(f", {k} {info[k]}" for k in ("exporter", "execution_provider") if k in info))
    return engine, cache.notes


def guard_fields(bound: float | None, inputs: int = 0, agreement: float | None = None, relative: float | None = None) -> dict:
    ok = None if bound is None else (relative is None or relative <= bound)
    return {"guard_batches": inputs, "guard_top1_agreement": agreement, "guard_relative_error": relative,
            "guard_bound": bound, "guard_ok": ok}


def reference_logits(cfg: InferConfig, r: Resolved, model, digest: str, guard_inputs: list) -> list[torch.Tensor]:
    """The guard's eager fp32 logits of `guard_inputs`, on the host. With --cache-path (a sweep gives one) they
    are kept: the sweep's next engines of this model, batch and inputs read them instead of running eager fp32
    again (issue 26). The key holds all they depend on: weights, inputs (seed or data), batch, device, versions."""
    if not guard_inputs:
        return []
    key = {"model": r.entry.name, "weights": digest, "engine": "references", "precision": "fp32", "batch_size": r.batch,
           "image_size": r.image_size, "inputs": (cfg.data.data_dir, cfg.seed, len(guard_inputs)),
           **r.backend.cache_identity("eager", r.placement, None)}
    cache = ArtifactCache(cfg.cache_path, key) if cfg.cache_path else None
    path = cache.lookup("references.pt") if cache else None
    if path is not None:
        terminal.say(f"guard references: eager fp32 logits of {len(guard_inputs)} batches read from {path}")
        return torch.load(path, weights_only=True)
    logits = [r.backend.to_host(x) for x in r.backend.references(model, r.placement, guard_inputs)]
    if cache:
        torch.save(logits, cache.dir / "references.pt")
        cache.record("references.pt")
    return logits


def fp32_guard(cfg: InferConfig, r: Resolved, engine, inputs: list, references: list) -> dict:
    """Top-1 agreement and relative error of the engine's logits against fp32's (on the host) on the same inputs."""
    if not inputs:
        return guard_fields(GUARD_BOUNDS[r.placement.precision])
    outputs = torch.cat([r.backend.to_host(engine(x)) for x in inputs])
    reference = torch.cat(references)
    return judge_guard(cfg.engine, r.placement.precision, outputs, reference, len(inputs), r.backend.reference_name)


def judge_guard(engine: str, precision: str, outputs: torch.Tensor, reference: torch.Tensor, batches: int,
                reference_name: str = "eager fp32") -> dict:
    """The guard's verdict on an engine's logits against the reference's."""
    bound = GUARD_BOUNDS[precision]
    agreement = 100.0 * (outputs.argmax(1) == reference.argmax(1)).float().mean().item()
    difference, scale = torch.linalg.vector_norm(outputs - reference), torch.linalg.vector_norm(reference)
    if scale == 0:
        # All-zero reference logits (a zero-initialised head: torchvision's ViT with random weights) have no scale
        # of their own: zeros agree exactly (0), anything else is off by its whole size (1), never 0/0.
        scale = torch.linalg.vector_norm(outputs)
    relative = (difference / scale).item() if scale > 0 else 0.0
    checks = guard_fields(bound, batches, agreement, relative)
    terminal.say(f"fp32 guard: top-1 agreement {agreement:.2f}%, relative error {relative:.2e} (bound {bound:g} for "
                  f"{precision}) on {batches} batches")
    if not checks["guard_ok"]:
        terminal.warn(f"{engine} {precision} differs from {reference_name} beyond the bound: its figures should not be trusted")
    return checks


def measured_figures(cfg: InferConfig, r, step, source, accuracy, synchronize, label: str, started_at: float) -> dict:
    """The measured loop (timing.measure) over `step` -> (logits, labels or None, images counted), the telemetry
    sampler beside it, and the record's figures. Real data: the steps of --num-epochs passes (every image
    counted for accuracy by `accuracy`, warm-up too), the waits and the corrupt images of the measured
    passes; synthetic: --num-batches or --duration."""
    real = cfg.data.data_dir is not None
    steps_total = cfg.data.num_epochs * -(-source.images_per_epoch // r.batch) if real and cfg.data.num_epochs else None
    warmup = min(cfg.measure.warmup, steps_total - 1) if steps_total else cfg.measure.warmup
    max_steps = steps_total - warmup if steps_total else cfg.measure.num_batches
    display = InferDisplay(cfg.measure.display_every, r.batch, accuracy if real else None,
                           terminal.Progress(warmup + max_steps, label))
    terminal.say("step  img/s  ms/batch")
    if real:  # guard, calibration and example batches came from the source too: count the measured passes only
        source.reset_data_wait()
        corrupt_before = source.corrupt_images
    sampler = telemetry.sampler_for(r.placement.device, not cfg.measure.no_telemetry)
    with display.progress, sampler:
        times = measure(step, synchronize, warmup=warmup, max_steps=max_steps,
                        **cfg.measure.window(None if steps_total else cfg.measure.duration),
                        after_step=telemetry.marking(display, sampler, warmup))
    top1, top5, evaluated = accuracy.result()
    figures = {**stats.figures(r.batch, times, time.time() - started_at), **run_record.ending(times), "top1": top1,
               "top5": top5, "images_evaluated": evaluated, "corrupt_images": source.corrupt_images - corrupt_before
               if real else None, **sampler.fields(r.batch * len(times.steady_seconds))}
    if real:
        figures.update(stats.data_wait(source.data_wait_seconds, times))
    return figures


class InferDisplay:
    def __init__(self, every: int, batch: int, accuracy: Accuracy | None, progress):
        self.every, self.batch, self.accuracy, self.progress = every, batch, accuracy, progress
        self.window: list[float] = []
        self.step = 0

    def __call__(self, index: int, steady: bool, output, seconds: float) -> None:
        logits, labels, n = output
        self.step += 1
        self.progress.advance()
        if self.accuracy is not None:
            self.accuracy.add(logits, labels, n)  # every image counts, warm-up batches too
        if not steady:
            return
        self.window.append(seconds)
        if len(self.window) == self.every:
            mean = sum(self.window) / len(self.window)
            terminal.say(f"{self.step:6d}  {self.batch / mean:8.1f}  {mean * 1000:8.2f}")
            self.window = []


def report(cfg: InferConfig, record: dict) -> None:
    """The final lines: figures first, so that nothing measured is lost whatever happens to the record."""
    terminal.final_lines(throughput(record["batch_size"], record["steady_seconds"]), record["system_images_per_sec"],
                          {k: record[k] for k in record if k.startswith("latency_ms_")})
    run_record.hardware_lines(record)
    if cfg.scenario == "single-stream":
        terminal.say(f"Single-stream 90th-percentile latency: {record['latency_ms_p90']:.2f} ms")
    if record["top1"] is not None:
        terminal.say(f"Accuracy: top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%  over {record['images_evaluated']} images")
    if cfg.data.data_dir:
        terminal.input_wait_line(record)
    if record["status"] != "ok":
        terminal.say(f"Stopped: {record['reason']}; the figures cover the {record['steady_steps']} completed steady batches")
