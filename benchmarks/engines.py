"""Every CPU (or GPU) engine x precision side by side: images/s, p90 latency and the fp32 guard.

    .venv/bin/python benchmarks/engines.py                      # ResNet-50, 224 px, batch 16, this CPU
    .venv/bin/python benchmarks/engines.py --int8-activations u8,s8   # int8 rows for both activation types
    .venv/bin/python benchmarks/engines.py --gpu                # on CUDA: eager vs compile, bf16 and fp16, batch 256
    .venv/bin/python benchmarks/engines.py --model tiny.json --image-size 16 --steps 2 --warmup 1   # a smoke run

Targets (issue 3): on this CPU the best fp32 engine >= 1.8x eager fp32 and int8 >= 5x; on a GPU,
compile beats eager at bf16 and fp16. --int8-activations: u8 (uint8, the CPU's default) and/or s8
(symmetric int8, TensorRT's form); engines.quantize_int8 says why they differ in speed.
Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import tempfile

from rich.table import Table

from cnnbench import engines

from cnnbench.recipes import inference
from cnnbench.core.config import InferConfig, MeasureConfig, PlacementConfig
from record import Recorder, add_save_option

# (engine, precision, memory format)
CPU_PAIRS = [("eager", "fp32", "nchw"), ("eager", "fp32", "nhwc"), ("eager", "bf16", "nhwc"), ("compile", "fp32", "nhwc"),
             ("onnxruntime", "fp32", "nchw"), ("onnxruntime", "int8", "nchw")]
GPU_PAIRS = [(e, p, "nhwc") for p in ("bf16", "fp16") for e in ("eager", "compile")]


def run(args, engine: str, precision: str, layout: str, device: str, tmp: str, activations: str | None) -> dict:
    cfg = InferConfig(model=args.model, engine=engine, compile_mode=args.compile_mode, random_weights=True,
                      image_size=args.image_size, results_dir=f"{tmp}/results", cache_path=f"{tmp}/cache", guard_batches=2,
                      calib_batches=10, int8_activations=activations or "auto", measure=MeasureConfig(batch_size=args.batch_size, num_batches=args.steps,
                                                              warmup=args.warmup, display_every=10**6),
                      placement=PlacementConfig(device=device, precision=precision, memory_format=layout))
    return inference.run(cfg)


def configurations(args) -> list[tuple[str, str, str, str | None]]:
    """(engine, precision, layout, int8 activations): every int8 pair once per activation type asked for."""
    out = []
    for engine, precision, layout in GPU_PAIRS if args.gpu else CPU_PAIRS:
        kinds = args.int8_activations.split(",") if precision == "int8" else [None]
        out += [(engine, precision, layout, kind) for kind in kinds]
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="registered name or JSON spec file")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's (224 for resnet50)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (CPU) / 256 (GPU)")
    p.add_argument("--steps", type=int, default=None, help="default 15 (CPU) / 100 (GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--int8-activations", default="u8", metavar="u8|s8|u8,s8",
                   help="int8 activation types to run (default u8, the CPU's default)")
    add_save_option(p)
    args = p.parse_args()
    for kind in args.int8_activations.split(","):
        if kind not in engines.INT8_ACTIVATIONS:
            p.error(f"--int8-activations: {kind!r} is not one of {', '.join(engines.INT8_ACTIVATIONS)}")
    args.batch_size = args.batch_size or (256 if args.gpu else 16)
    args.steps = args.steps or (100 if args.gpu else 15)
    return args


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, precision, layout, act in configurations(args):
            r = run(args, engine, precision, layout, "cuda" if args.gpu else "cpu", tmp, act)
            rows.append((engine, precision, layout, act, r))
    base = next((r["images_per_sec"] for e, p_, lay, k, r in rows if (e, p_, lay) == ("eager", "fp32", "nchw")), None)
    title = (f"{args.model} {'GPU' if args.gpu else 'CPU'} batch {args.batch_size}"
             f"{f', {args.image_size} px' if args.image_size else ''}, {args.steps} steady batches (random weights)")
    table = Table(title=title)
    for col in ("engine", "precision", "layout", "int8 act.", "img/s", "+/-", "p90 ms", "x eager fp32", "guard top-1 %",
                "guard rel. err", "build s"):
        table.add_column(col)
    for engine, precision, layout, act, r in rows:
        speedup = r["images_per_sec"] / base if base else None
        table.add_row(engine, precision, layout.upper(), act or "-", f"{r['images_per_sec']:.1f}", f"{r['images_per_sec_stderr']:.1f}",
                      f"{r['latency_ms_p90']:.1f}", f"{speedup:.2f}" if speedup else "-",
                      "-" if r["guard_top1_agreement"] is None else f"{r['guard_top1_agreement']:.1f}",
                      "-" if r["guard_relative_error"] is None else f"{r['guard_relative_error']:.1e}",
                      f"{r['engine_build_seconds']:.1f}")
        rec.row(kind="run", engine=engine, precision=precision, layout=layout, int8_activations=act,
                x_eager_fp32=speedup, record={k: v for k, v in r.items() if not k.startswith("env.")})
    rec.table(table)
    verdicts(rec, args, rows, base)
    rec.save()


def verdicts(rec: Recorder, args, rows: list, base: float | None) -> None:
    def best(precision: str, kind: str | None = None) -> float:
        return max(r["images_per_sec"] for e, p_, lay, k, r in rows if p_ == precision and kind in (None, k)) / base

    if base and not args.gpu:
        best_fp32 = best("fp32")
        rec.say(f"best fp32 engine: {best_fp32:.2f}x eager fp32 (target >= 1.8x): {'PASS' if best_fp32 >= 1.8 else 'FAIL'}")
        rec.row(kind="verdict", target="best fp32 >= 1.8x eager fp32", value=best_fp32, passed=best_fp32 >= 1.8)
        for kind in args.int8_activations.split(","):
            int8 = best("int8", kind)
            rec.say(f"int8 ({kind}): {int8:.2f}x eager fp32 (target >= 5x): {'PASS' if int8 >= 5 else 'FAIL'}")
            rec.row(kind="verdict", target=f"int8 {kind} >= 5x eager fp32", value=int8, passed=int8 >= 5)
    if args.gpu:
        for precision in ("bf16", "fp16"):
            eager = next(r["images_per_sec"] for e, p_, lay, k, r in rows if (e, p_) == ("eager", precision))
            compiled = next(r["images_per_sec"] for e, p_, lay, k, r in rows if (e, p_) == ("compile", precision))
            rec.say(f"{precision}: compile {compiled:.0f} img/s vs eager {eager:.0f} img/s: {'PASS' if compiled > eager else 'FAIL'}")
            rec.row(kind="verdict", target=f"{precision}: compile > eager", value=compiled / eager, passed=compiled > eager)


if __name__ == "__main__":
    main()
