"""`cnnbench infer`: the inference benchmark, read top to bottom.

Resolve the configuration and the weights, build the model, compute eager fp32 reference outputs for
the guard batches, build the engine (export / quantise / compile, timed apart), check it against the
reference (the fp32 guard), run the measured loop, count accuracy exactly, write the record.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
import torch

from cnnbench import checkpoints, environment, reporting, results
from cnnbench import weights as weights_module
from cnnbench.config import InferConfig, flatten
from cnnbench.data.sources import open_source
from cnnbench.data.synthetic import SyntheticSource
from cnnbench.engines import ArtifactCache, EagerEngine, build_engine, check_engine
from cnnbench.evaluation import Accuracy, padded, real_batches
from cnnbench.errors import OutOfMemory, UsageError, is_out_of_memory
from cnnbench.models.registry import check_image_size, resolve_entry
from cnnbench.placement import PRECISIONS, Placement, resolve_placement
from cnnbench.stats import throughput

# Largest relative error ||out - ref|| / ||ref|| of the logits, against eager fp32 on the same inputs,
# under which an engine's figures are trusted. Measured on this project's 2-core EPYC (resnet50 at 64 px
# random weights, and a digits-trained spec network on real images; README "The fp32 guard"):
#   fp32 engines (onnxruntime, compile) <= 1e-6 (summation order only)  -> bound 1e-4
#   fp16 autocast 3e-4 .. 9e-4                                          -> bound 1e-2
#   bf16 autocast 3e-3 .. 1.1e-2 (8-bit mantissa)                       -> bound 5e-2
#   int8 QDQ static quantisation 2.5e-2 .. 3.2e-2                       -> bound 0.15
# tf32 has fp16's 10-bit mantissa, so it gets fp16's bound.
GUARD_BOUNDS = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2, "int8": 0.15}


def default_compile_mode(device: torch.device) -> str:
    # CUDA graphs remove per-kernel launch cost on a GPU; on a CPU they do not exist.
    return "max-autotune" if device.type == "cuda" else "max-autotune-no-cudagraphs"


def guard(engine, inputs: list[torch.Tensor], references: list[torch.Tensor]) -> dict:
    """Top-1 agreement and relative error of the engine's logits against eager fp32's, same inputs."""
    if not inputs:
        return {"guard_batches": 0, "guard_top1_agreement": None, "guard_relative_error": None}
    outputs = torch.cat([engine(x).float().cpu() for x in inputs])
    reference = torch.cat([r.float().cpu() for r in references])
    agreement = 100.0 * (outputs.argmax(1) == reference.argmax(1)).float().mean().item()
    relative = (torch.linalg.vector_norm(outputs - reference) / torch.linalg.vector_norm(reference)).item()
    return {"guard_batches": len(inputs), "guard_top1_agreement": agreement, "guard_relative_error": relative}


def run(cfg: InferConfig, started_at: float | None = None) -> dict:
    started_at = started_at or environment.process_start_time()
    cfg.validate()
    entry = resolve_entry(cfg.model)
    image_size = cfg.image_size or entry.input_size
    check_image_size(entry, image_size)
    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, cfg.placement.channels_last, PRECISIONS)
    check_engine(cfg.engine, placement.precision, placement.device.type)
    placement.apply_global_settings()
    # single-stream (MLPerf): one image per query, each issued when the previous one has finished.
    batch = 1 if cfg.scenario == "single-stream" else cfg.measure.batch_size
    log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, cfg.measure.batch_size)
    weights = weights_module.resolve(entry, weights_file=cfg.weights, pretrained=cfg.pretrained,
                                     random_weights=cfg.random_weights, log_dir=log_dir)
    compile_mode = cfg.compile_mode or default_compile_mode(placement.device)

    env = environment.collect()
    reporting.header(f"infer {entry.name}", cfg, env, extra=[
        f"resolved: engine {cfg.engine}, {placement.describe()}, scenario {cfg.scenario}, batch {batch}, image {image_size}px"
        + (f", compile mode {compile_mode}" if cfg.engine == "compile" else ""),
        f"weights = {weights.description}",
    ])
    record = {
        "kind": "infer", "model": entry.name, "batch_size": batch, "image_size": image_size, "engine": cfg.engine,
        "precision": placement.precision, "scenario": cfg.scenario, "device": str(placement.device),
        "channels_last": placement.channels_last, "weights_source": weights.source, "weights": weights.description,
        "status": "ok", "reason": None, **flatten(cfg), **env,
    }
    torch.manual_seed(cfg.seed)
    try:
        return _measure(cfg, entry, placement, batch, image_size, weights, compile_mode, record, started_at)
    except Exception as exc:
        if is_out_of_memory(exc):
            oom = OutOfMemory(batch)
            record.update(status="oom", reason=str(oom))
            results.append_record(Path(cfg.results_dir), record)
            raise oom from None
        raise


def _measure(cfg: InferConfig, entry, placement: Placement, batch: int, image_size: int, weights, compile_mode: str,
             record: dict, started_at: float) -> dict:
    model = entry.build(image_size)
    weights_module.load_into(model, entry, weights)
    model.eval()
    digest = weights_module.digest(model)
    model = model.to(placement.device, memory_format=placement.memory_format)
    source = open_source(cfg.data, entry, batch, image_size, placement.device, placement.memory_format, cfg.seed, train=False)
    reporting.say(f"data = {source.describe()}")
    real = cfg.data.data_dir is not None

    # Guard and calibration inputs: the first batches of the real data, or seeded random batches.
    def sample_batches(count: int, seed_offset: int) -> list[torch.Tensor]:
        if real:
            return [images for images, _, _ in _take(padded(source.epoch_batches(), batch, placement.memory_format), count)]
        return [SyntheticSource(batch, image_size, entry.preprocessing, placement.device, placement.memory_format,
                                seed=cfg.seed + seed_offset + i).images for i in range(count)]

    fp32 = Placement(placement.device, "fp32", placement.channels_last)
    checked = (cfg.engine, placement.precision) != ("eager", "fp32")
    guard_inputs = sample_batches(cfg.guard_batches, 1000) if checked else []
    references = [EagerEngine(model, fp32)(x) for x in guard_inputs]

    def calibration() -> list[torch.Tensor]:
        if not real:
            reporting.warn("int8 calibrated on synthetic images: accuracy figures of this engine are meaningless; "
                           "give --data-dir for a real calibration")
        return sample_batches(cfg.calib_batches, 2000)

    cache_key = {"model": entry.name, "weights": digest, "engine": cfg.engine, "precision": placement.precision,
                 "batch_size": batch, "image_size": image_size, "device": _device_name(placement.device),
                 "channels_last": placement.channels_last, "compile_mode": compile_mode if cfg.engine == "compile" else None,
                 "calibration": (cfg.data.data_dir, cfg.calib_batches) if placement.precision == "int8" else None,
                 "versions": _library_versions()}
    cache = ArtifactCache(cfg.cache_path, cache_key)
    # Engines that build (export, compile) trace one batch; eager builds nothing and needs none.
    example = guard_inputs[0] if guard_inputs else None if cfg.engine == "eager" else sample_batches(1, 3000)[0]
    try:
        engine = build_engine(cfg.engine, model, placement, example, cache, calibration, compile_mode)
    finally:
        cache.close()
    for note in cache.notes:
        reporting.warn(note)
    info = engine.info
    cache_state = "nothing to build" if cfg.engine == "eager" else "hit" if info["cache_hit"] else "miss" if cfg.cache_path else "off"
    reporting.say(f"engine = {cfg.engine}: build {info['engine_build_seconds']:.2f} s, load {info['engine_load_seconds']:.2f} s, "
                  f"cache {cache_state}" + "".join(f", {k} {info[k]}" for k in ("exporter", "execution_provider") if k in info))

    checks = guard(engine, guard_inputs, references)
    bound = GUARD_BOUNDS[placement.precision]
    checks["guard_bound"] = bound if checked else None
    checks["guard_ok"] = None if not checked else (checks["guard_relative_error"] is None or checks["guard_relative_error"] <= bound)
    if checked and checks["guard_batches"]:
        reporting.say(f"fp32 guard: top-1 agreement {checks['guard_top1_agreement']:.2f}%, relative error "
                      f"{checks['guard_relative_error']:.2e} (bound {bound:g} for {placement.precision}) on {checks['guard_batches']} batches")
        if not checks["guard_ok"]:
            reporting.warn(f"{cfg.engine} {placement.precision} differs from eager fp32 beyond the bound: "
                           "its figures should not be trusted")

    accuracy = Accuracy()
    if real:
        stream = padded(real_batches(source, cfg.data.num_epochs), batch, placement.memory_format)

        def step():
            images, labels, n = next(stream)
            return engine(images), labels, n
    else:
        images = source.images

        def step():
            return engine(images), None, batch

    steps_total = None
    if real and cfg.data.num_epochs:
        per_epoch = -(-source.images_per_epoch // batch)
        steps_total = cfg.data.num_epochs * per_epoch
    warmup = min(cfg.measure.warmup, steps_total - 1) if steps_total else cfg.measure.warmup
    max_steps = steps_total - warmup if steps_total else cfg.measure.num_batches
    display = _InferDisplay(cfg.measure.display_every, batch, accuracy if real else None)
    reporting.say("step  img/s  ms/batch")
    from cnnbench.timing import measure

    if real:  # guard, calibration and example batches came from the source too: count the measured passes only
        source.reset_data_wait()
        corrupt_before = source.corrupt_images
    times = measure(step, placement.synchronize, warmup=warmup, max_steps=max_steps,
                    duration=None if steps_total else cfg.measure.duration, min_steps=cfg.measure.min_steady_steps,
                    after_step=display)
    top1, top5, evaluated = accuracy.result()

    record.update(results.figures(batch, times, time.time() - started_at))
    record.update(
        status="interrupted" if times.interrupted else "ok",
        reason="interrupted by the user (Ctrl-C)" if times.interrupted else None,
        weights_digest=digest, compile_mode=compile_mode if cfg.engine == "compile" else None,
        **{k: v for k, v in info.items() if k != "compile_mode"}, cache_notes=cache.notes or None, **checks,
        top1=top1, top5=top5, images_evaluated=evaluated,
        corrupt_images=source.corrupt_images - corrupt_before if real else None,
        peak_memory_mib=environment.peak_memory_mib(placement.device),
    )
    if real:
        record.update(results.data_wait(source.data_wait_seconds, times))
        source.close()
    results.append_record(Path(cfg.results_dir), record)
    reporting.final_lines(throughput(batch, times.steady_seconds), record["system_images_per_sec"],
                          {k: record[k] for k in record if k.startswith("latency_ms_")})
    if cfg.scenario == "single-stream":
        reporting.say(f"Single-stream 90th-percentile latency: {record['latency_ms_p90']:.2f} ms")
    if top1 is not None:
        reporting.say(f"Accuracy: top-1 {top1:.2f}%  top-5 {top5:.2f}%  over {evaluated} images")
    if real:
        reporting.input_wait_line(record)
    return record


def _take(iterator, count: int) -> list:
    return list(itertools.islice(iterator, count))


class _InferDisplay:
    def __init__(self, every: int, batch: int, accuracy: Accuracy | None):
        self.every, self.batch, self.accuracy, self.window, self.step = every, batch, accuracy, [], 0

    def __call__(self, index: int, steady: bool, output, seconds: float) -> None:
        logits, labels, n = output
        self.step += 1
        if self.accuracy is not None:
            self.accuracy.add(logits, labels, n)  # every image counts, warm-up batches too
        if not steady:
            return
        self.window.append(seconds)
        if len(self.window) == self.every:
            mean = sum(self.window) / len(self.window)
            reporting.say(f"{self.step:6d}  {self.batch / mean:8.1f}  {mean * 1000:8.2f}")
            self.window = []


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{environment.collect()['env.cpu_model']}"


def _library_versions() -> dict:
    import importlib.metadata as md

    versions = {"torch": torch.__version__}
    for name in ("torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions
