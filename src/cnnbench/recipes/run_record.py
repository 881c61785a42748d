"""What every benchmark run writes, shared by training and inference: the header and the record's
first fields, the out-of-memory record-and-raise guard, how a run ended, its memory fields, and saving the record
after the figures are printed (a folder that refuses it sends it to a fallback file, never loses it).
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Iterator

from cnnbench.core import efficiency, environment, errors, memory, store, telemetry, terminal
from cnnbench.core.config import flatten
from cnnbench.core.placement import Placement


def log_dir(cfg, entry) -> Path:
    """--log-dir, else the original's scripts' folder for the configuration's checkpoint: ./log_<model>_<batch>."""
    return Path(cfg.log_dir) if cfg.log_dir else Path(f"log_{entry.name}_{cfg.measure.batch_size}")


def begin(kind: str, cfg, entry, placement: Placement, batch: int, image_size: int, extra: list[str], **fields) -> dict:
    """Print the run's header and return its record so far: what ran, the full configuration, the environment."""
    env = environment.collect()
    terminal.header(f"{kind} {entry.name}", cfg, env, extra=extra)
    return {
        "kind": kind, "model": entry.name, "model_source": entry.source, "batch_size": batch, "image_size": image_size,
        "device": str(placement.device), "precision": placement.precision,
        "memory_format": placement.memory_format_name, "channels_last": placement.channels_last,
        **framework_fields(cfg), "repeat": getattr(cfg, "repeat", None), **fields, "status": "ok", "reason": None, **flatten(cfg), **env,
    }


def framework_fields(cfg) -> dict:
    """framework and framework_version: which framework ran (issue 15), its release as it reports it."""
    framework = getattr(cfg, "framework", "pytorch")
    module = sys.modules["tensorflow" if framework == "tensorflow" else "torch"]
    return {"framework": framework, "framework_version": module.__version__}


@contextlib.contextmanager
def out_of_memory_recorded(record: dict, results_dir: str, entry, placement: Placement, *, training: bool,
                           save: bool = True) -> Iterator[None]:
    """An out-of-memory inside becomes a record with status oom (saved by the process that saves
    records) and an OutOfMemory whose advice says what to change: the batch, or the image and model
    when batch 1 alone cannot fit."""
    try:
        yield
    except Exception as exc:
        if not errors.is_out_of_memory(exc):
            raise
        oom = memory.out_of_memory(record["batch_size"], build=lambda: entry.build(record["image_size"]),
                                   image_size=record["image_size"], device=placement.device, training=training,
                                   bytes_per_value=2 if placement.autocast_dtype is not None else 4)
        record.update(status="oom", reason=str(oom))
        if save:
            try:
                store.save_record(Path(results_dir), record)
            except errors.RecordNotSaved as lost:  # the out-of-memory stays the error to report
                terminal.warn(str(lost))
        raise oom from None


STOPS = {"SIGINT": ("interrupted", "interrupted by the user (Ctrl-C)"),
         "SIGTERM": ("terminated", "terminated by SIGTERM (timeout, SLURM, Kubernetes)")}


def ending(times, loss: float | None = None) -> dict:
    """status and reason: ok, interrupted (Ctrl-C), terminated (SIGTERM) or diverged (a loss that is not
    a finite number: the speed figures stand, the training does not)."""
    if times.stopped_by:
        status, reason = STOPS[times.stopped_by]
        return {"status": status, "reason": reason}
    if loss is not None and not math.isfinite(loss):
        return {"status": "diverged", "reason": f"the loss became {loss} (not a finite number)"}
    return {"status": "ok", "reason": None}


def memory_fields(device) -> dict:
    """peak_memory_mib (PyTorch's allocator peak; the process's peak RSS on a CPU) and, on CUDA,
    device_memory_used_mib: NVML's memory in use on the device at the end of the run, all processes, so
    ONNX Runtime's and TensorRT's memory too, which the allocator leaves out (None off CUDA, and None
    with a line saying why when NVML cannot tell)."""
    used, note = environment.device_memory_used(device)
    if note:
        terminal.warn(f"device_memory_used_mib not recorded: {note}")
    return {"peak_memory_mib": environment.peak_memory_mib(device), "device_memory_used_mib": used}


def save(record: dict, results_dir: str) -> None:
    """After the figures are printed: into the results folder, or a fallback file (RecordNotSaved)."""
    path = store.save_record(Path(results_dir), record)
    terminal.say(f"Record: {path}")


def efficiency_fields(record: dict, entry, kind: str, device, devices: int = 1) -> dict:
    """Achieved TFLOP/s and MFU of a run whose figures are in `record` (efficiency.py): its FLOPs per image
    from the registry's count, steady images over steady time, the device's peak at the run's precision."""
    from cnnbench.models.registry import forward_flops

    return efficiency.fields(forward_flops(entry, record["image_size"]), kind, record["precision"], device,
                             record["images_per_sec_from_mean_time"], devices)


def hardware_lines(record: dict) -> None:
    """The final lines on efficiency and telemetry (after the images/s lines)."""
    terminal.say(efficiency.describe(record))
    line = telemetry.describe(record)
    if line:
        terminal.say(line)
