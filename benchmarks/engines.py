"""Every CPU (or GPU) engine x precision side by side: images/s, p90 latency and the fp32 guard.

    .venv/bin/python benchmarks/engines.py                      # ResNet-50, 224 px, batch 16, this CPU
    .venv/bin/python benchmarks/engines.py --gpu                # on CUDA: eager vs compile, bf16 and fp16, batch 256

Targets (issue 3): on this CPU the best fp32 engine >= 1.8x eager fp32 and int8 >= 5x; on a GPU,
compile beats eager at bf16 and fp16.
"""

from __future__ import annotations

import argparse
import tempfile

from rich.console import Console
from rich.table import Table

from cnnbench import inference
from cnnbench.config import InferConfig, MeasureConfig, PlacementConfig

CPU_PAIRS = [("eager", "fp32", False), ("eager", "fp32", True), ("eager", "bf16", True), ("compile", "fp32", True),
             ("onnxruntime", "fp32", False), ("onnxruntime", "int8", False)]
GPU_PAIRS = [(e, p, True) for p in ("bf16", "fp16") for e in ("eager", "compile")]


def run(model: str, batch: int, engine: str, precision: str, channels_last: bool, steps: int, warmup: int,
        device: str, compile_mode: str | None, tmp: str) -> dict:
    cfg = InferConfig(model=model, engine=engine, compile_mode=compile_mode, random_weights=True,
                      results_dir=f"{tmp}/results", cache_path=f"{tmp}/cache", guard_batches=2, calib_batches=10,
                      measure=MeasureConfig(batch_size=batch, num_batches=steps, warmup=warmup, display_every=10**6),
                      placement=PlacementConfig(device=device, precision=precision, channels_last=channels_last))
    return inference.run(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (CPU) / 256 (GPU)")
    p.add_argument("--steps", type=int, default=None, help="default 15 (CPU) / 100 (GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--compile-mode", default=None)
    args = p.parse_args()
    batch = args.batch_size or (256 if args.gpu else 16)
    steps = args.steps or (100 if args.gpu else 15)
    pairs = GPU_PAIRS if args.gpu else CPU_PAIRS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, precision, cl in pairs:
            r = run(args.model, batch, engine, precision, cl, steps, args.warmup, "cuda" if args.gpu else "cpu", args.compile_mode, tmp)
            rows.append((engine, precision, cl, r))
    base = next((r["images_per_sec"] for e, p_, cl, r in rows if (e, p_) == ("eager", "fp32") and not cl), None)
    table = Table(title=f"{args.model} {'GPU' if args.gpu else 'CPU'} batch {batch}, {steps} steady batches (random weights)")
    for col in ("engine", "precision", "layout", "img/s", "+/-", "p90 ms", "x eager fp32", "guard top-1 %", "guard rel. err", "build s"):
        table.add_column(col)
    for engine, precision, cl, r in rows:
        table.add_row(engine, precision, "NHWC" if cl else "NCHW", f"{r['images_per_sec']:.1f}", f"{r['images_per_sec_stderr']:.1f}",
                      f"{r['latency_ms_p90']:.1f}", f"{r['images_per_sec'] / base:.2f}" if base else "-",
                      "-" if r["guard_top1_agreement"] is None else f"{r['guard_top1_agreement']:.1f}",
                      "-" if r["guard_relative_error"] is None else f"{r['guard_relative_error']:.1e}",
                      f"{r['engine_build_seconds']:.1f}")
    Console(width=200).print(table)
    if base and not args.gpu:
        best_fp32 = max(r["images_per_sec"] for e, p_, cl, r in rows if p_ == "fp32") / base
        int8 = max(r["images_per_sec"] for e, p_, cl, r in rows if p_ == "int8") / base
        print(f"best fp32 engine: {best_fp32:.2f}x eager fp32 (target >= 1.8x): {'PASS' if best_fp32 >= 1.8 else 'FAIL'}")
        print(f"int8: {int8:.2f}x eager fp32 (target >= 5x): {'PASS' if int8 >= 5 else 'FAIL'}")
    if args.gpu:
        for precision in ("bf16", "fp16"):
            eager = next(r["images_per_sec"] for e, p_, cl, r in rows if (e, p_) == ("eager", precision))
            compiled = next(r["images_per_sec"] for e, p_, cl, r in rows if (e, p_) == ("compile", precision))
            print(f"{precision}: compile {compiled:.0f} img/s vs eager {eager:.0f} img/s: {'PASS' if compiled > eager else 'FAIL'}")


if __name__ == "__main__":
    main()
