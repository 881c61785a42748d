"""The fp32 guard's bounds against measurement: relative error and top-1 agreement per precision.

For each engine x precision that `inference.GUARD_BOUNDS` covers on a CPU, build the engine as `cnnbench
infer` does (inference.preflight / load_model / Inputs / build, the default memory format and compile
mode) and compare it with eager fp32 on the same inputs with `inference.fp32_guard`, the guard every run
prints. Two networks: ResNet-50 at 64 px with random weights on seeded random images, and a small
synNet-form network trained briefly on the digits sample (`cnnbench data sample digits`), checked on its
real validation images (and int8-calibrated on them, as `cnnbench infer --data-dir` does). Each network
gets --sets input sets of --guard-batches batches (the guard's own unit); the table gives min..max over
sets and networks, and whether the bound is at least 3x the largest error. Nothing is timed, so it can
run on a busy machine.

    .venv/bin/python benchmarks/guard_bounds.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/guard_bounds.py --quick --save-to /tmp/smoke   # a smoke run

Output saved under benchmarks/results/ (record.py); README "The fp32 guard" quotes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table


from cnnbench.recipes import inference
from cnnbench.core.config import DataConfig, InferConfig, MeasureConfig, PlacementConfig
from cnnbench.data.sample import DIGIT_NET
from cnnbench.data.sources import open_source
from cnnbench.engines import EagerEngine
from cnnbench.core.placement import Placement
from record import Recorder, add_save_option

# (engine, precision, int8 activations): every pair GUARD_BOUNDS covers on a CPU; int8 in both forms.
PAIRS = [("onnxruntime", "fp32", None), ("compile", "fp32", None), ("eager", "fp16", None), ("eager", "bf16", None),
         ("onnxruntime", "int8", "u8"), ("onnxruntime", "int8", "s8")]
MARGIN = 3.0  # a bound at least this many times the largest measured error


@dataclass
class Network:
    label: str
    model: str
    image_size: int
    batch: int
    data_dir: str | None = None
    log_dir: str | None = None  # the training checkpoint; None: random weights


def cnnbench(*args: str, cwd: Path) -> None:
    """A cnnbench command as a user types it; its output goes to this script's stderr."""
    done = subprocess.run([sys.executable, "-m", "cnnbench", *args], cwd=cwd, stdout=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"cnnbench {' '.join(args)} failed ({done.returncode})")


def digits_network(tmp: Path, epochs: int, batch: int) -> tuple[Network, float]:
    """Write the digits sample, train DIGIT_NET on it; the network and its validation top-1."""
    spec = tmp / "digitnet.json"
    spec.write_text(json.dumps(DIGIT_NET))
    cnnbench("data", "sample", "digits", "--image-size", "32", "--format", "jpeg", cwd=tmp)
    # Mirrored digits are other symbols (no flip); 8x8 digits upscaled need crops of at least half the image.
    cnnbench("train", str(spec), "--data-dir", "digits", "--num-epochs", str(epochs), "--batch-size", "32", "--warmup", "1",
             "--display-every", "1000", "--eval-at-end", "--workers", "1", "--min-crop-scale", "0.5", "--flip", "0",
             "--log-dir", "log_digits", "--results-dir", "results_train", cwd=tmp)
    record = [json.loads(line) for line in (tmp / "results_train/runs.jsonl").read_text().splitlines() if line.strip()][-1]
    return Network("digitNet (trained, digits val)", str(spec), 32, batch, str(tmp / "digits"), str(tmp / "log_digits")), record["top1"]


def measure_pair(net: Network, engine: str, precision: str, activations: str | None, sets: int, guard_batches: int,
                 compile_mode: str | None, tmp: Path) -> list[dict]:
    """The guard's figures on each of `sets` input sets of `guard_batches` batches, one engine build."""
    cfg = InferConfig(model=net.model, image_size=net.image_size, engine=engine, compile_mode=compile_mode,
                      random_weights=net.log_dir is None, log_dir=net.log_dir or str(tmp / "no_checkpoint"),
                      results_dir=str(tmp / "results_infer"), cache_path=str(tmp / "cache"), guard_batches=guard_batches,
                      measure=MeasureConfig(batch_size=net.batch), data=DataConfig(data_dir=net.data_dir, workers=0),
                      placement=PlacementConfig(device="cpu", precision=precision), int8_activations=activations or "auto")
    r = inference.preflight(cfg)
    weights = r.backend.inference_weights(cfg, r.entry, r.log_dir)
    torch.manual_seed(cfg.seed)  # as inference.run: the same random weights for every pair
    model, digest = inference.load_model(r, weights)
    source = open_source(cfg.data, r.entry, r.batch, r.image_size, r.placement.device, r.placement.memory_format,
                         cfg.seed, train=False)
    inputs = inference.Inputs(cfg, r, source)
    batches = inputs.take(sets * guard_batches, 1000)
    fp32 = EagerEngine(model, Placement(r.placement.device, "fp32", r.placement.channels_last))
    references = [fp32(x) for x in batches]
    built, _ = inference.build(cfg, r, model, digest, inputs, batches)
    figures = []
    for s in range(sets):
        part = slice(s * guard_batches, (s + 1) * guard_batches)
        checks = inference.fp32_guard(cfg, r, built, batches[part], references[part])
        figures.append({"relative_error": checks["guard_relative_error"], "top1_agreement": checks["guard_top1_agreement"],
                        "layout": r.placement.memory_format_name, "compile_mode": r.compile_mode if engine == "compile" else None})
    if hasattr(source, "close"):
        source.close()
    return figures


def label(precision: str, activations: str | None) -> str:
    return f"{precision} ({activations})" if activations else precision


def summarise(rec: Recorder, rows: list[dict]) -> None:
    """Per precision: measured min..max over networks, engines and sets, the bound, and the margin."""
    table = Table(title="fp32 guard: relative error ||out - ref|| / ||ref|| against eager fp32, and top-1 agreement")
    for col in ("precision", "engines", "measured rel. error", "top-1 agreement %", "bound", "bound / max", f">= {MARGIN:g}x"):
        table.add_column(col)
    groups = {"fp32": [("fp32", None)], "fp16": [("fp16", None)], "bf16": [("bf16", None)],
              "int8 (u8, CPU default)": [("int8", "u8")], "int8 (s8, TensorRT's form)": [("int8", "s8")]}
    for name, keys in groups.items():
        chosen = [r for r in rows if (r["precision"], r["int8_activations"]) in keys]
        if not chosen:
            continue
        errors = [r["relative_error"] for r in chosen]
        agreement = [r["top1_agreement"] for r in chosen]
        bound = inference.GUARD_BOUNDS[keys[0][0]]
        margin = bound / max(errors) if max(errors) > 0 else float("inf")
        used = sorted({r["engine"] for r in chosen})
        table.add_row(name, ", ".join(used), f"{min(errors):.1e} .. {max(errors):.1e}", f"{min(agreement):.1f} .. {max(agreement):.1f}",
                      f"{bound:g}", f"{margin:.0f}x" if margin != float("inf") else "inf", "yes" if margin >= MARGIN else "NO")
        rec.row(kind="summary", precision=name, engines=used, relative_error_min=min(errors), relative_error_max=max(errors),
                top1_agreement_min=min(agreement), top1_agreement_max=max(agreement), bound=bound, margin=margin,
                margin_ok=margin >= MARGIN)
    rec.table(table)


def detail(rec: Recorder, rows: list[dict]) -> None:
    table = Table(title="per network and engine (min .. max over the input sets)")
    for col in ("network", "engine", "precision", "layout", "rel. error", "top-1 agreement %"):
        table.add_column(col)
    keys = sorted({(r["network"], r["engine"], r["precision"], r["int8_activations"], r["layout"]) for r in rows}, key=str)
    for network, engine, precision, activations, layout in keys:
        part = [r for r in rows if (r["network"], r["engine"], r["precision"], r["int8_activations"]) == (network, engine, precision, activations)]
        err, agr = [r["relative_error"] for r in part], [r["top1_agreement"] for r in part]
        table.add_row(network, engine, label(precision, activations), layout.upper(), f"{min(err):.1e} .. {max(err):.1e}",
                      f"{min(agr):.1f} .. {max(agr):.1f}")
    rec.table(table)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=3, help="input sets per network (default 3)")
    p.add_argument("--guard-batches", type=int, default=4, help="batches per set (default 4, cnnbench infer's)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs of the digits network (default 4)")
    p.add_argument("--compile-mode", default=None, help="default: cnnbench infer's (max-autotune-no-cudagraphs on a CPU)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 set of 1 batch, 1 epoch, ResNet-50 at batch 2")
    add_save_option(p)
    args = p.parse_args()
    if args.quick:
        args.sets, args.guard_batches, args.epochs = 1, 1, 1
        args.compile_mode = args.compile_mode or "default"
    return args


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        digits, top1 = digits_network(tmp, args.epochs, 16)
        rec.say(f"digitNet: {args.epochs} epochs on the digits sample, validation top-1 {top1:.1f}%")
        networks = [Network("resnet50 64px (random weights)", "resnet50", 64, 2 if args.quick else 8), digits]
        for net in networks:
            for engine, precision, activations in PAIRS:
                for k, fig in enumerate(measure_pair(net, engine, precision, activations, args.sets, args.guard_batches,
                                                     args.compile_mode, tmp)):
                    row = dict(network=net.label, engine=engine, precision=precision, int8_activations=activations,
                               set=k, batch_size=net.batch, image_size=net.image_size, guard_batches=args.guard_batches, **fig)
                    rows.append(row)
                    rec.row(kind="set", **row)
    rec.say(f"{args.sets} input sets x {args.guard_batches} batches per network; margin target: bound >= {MARGIN:g}x the largest error")
    summarise(rec, rows)
    detail(rec, rows)
    rec.save()


if __name__ == "__main__":
    main()
