"""This CPU's roof per precision and the best engine under it (issue 26, item 3): docs/roofline.md.

    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/roof.py

The roof: core/efficiency.measure_peak at fp32, bf16 and int8 on all the usable cores, measured now: the
best of square matrix products of several sides and (fp32, bf16) ResNet-50's 3x3 convolutions, each the best
of 5; int8 through torch.ao's quantized Linear (FBGEMM/oneDNN u8s8). The 1-minute load average before and
after each probe is printed with it: a probe taken while other work ran is low.
The engines: not run again here; the newest saved rows (at the model's own size) of benchmarks/bf16_default.py,
openvino_onnxruntime.py and frameworks.py in the --save-to folder (benchmarks/results/; each row names its file), ResNet-50 at
batch 16, 224 px: images/s x forward GFLOPs per image (the registry's count) = achieved TFLOP/s (TOPS at int8),
and its share of the roof at its precision. A share above 100% says the probe is below what the engine's own
kernels reach (a fused oneDNN or OpenVINO graph, or a probe disturbed by load), not that the engine beat the
hardware. Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from rich.table import Table

from cnnbench.core import efficiency
from cnnbench.models.registry import forward_flops, resolve_entry
from record import Recorder, add_save_option

PRECISIONS = ("fp32", "bf16", "int8")
SOURCES = ("bf16_default", "openvino_onnxruntime", "frameworks")  # scripts whose saved rows are read


def measure_roofs(rec: Recorder) -> dict[str, float]:
    roofs = {}
    for precision in PRECISIONS:
        before = os.getloadavg()[0]
        tflops, method = efficiency.measure_peak(torch.device("cpu"), precision)
        after = os.getloadavg()[0]
        rec.say(f"roof {precision}: " + (f"{tflops:.4f} {'TOPS' if precision == 'int8' else 'TFLOP/s'}" if tflops else "none")
                + f" ({method}; load average before {before:.2f}, after {after:.2f})")
        rec.row(kind="roof", precision=precision, tflops=tflops, method=method, load_average_before=before,
                load_average_after=after)
        if tflops:
            roofs[precision] = tflops
    return roofs


def latest_rows(model: str, folder: Path) -> list[dict]:
    """The PyTorch inference rows of each source's latest saved run for `model` whose guard did not fail."""
    rows = []
    for script in SOURCES:
        # the newest run at the model's own size (a smoke run's --image-size rows are not ResNet-50 at 224 px)
        saved = [path for path in sorted(folder.glob(f"{script}-*.jsonl"), reverse=True)
                 if "--image-size" not in path.read_text().partition("\n")[0]]
        if not saved:
            continue
        for line in saved[0].read_text().splitlines():
            r = json.loads(line)
            if (r.get("kind") == "run" and r.get("model") == model and r.get("images_per_sec")
                    and r.get("run_kind", "infer") == "infer" and r.get("guard_ok") is not False
                    and r.get("framework", "pytorch") == "pytorch"):
                rows.append({"source": saved[0].name, "engine": r["engine"], "precision": r["precision"],
                             "images_per_sec": r["images_per_sec"], "load_average_before": r.get("load_average_before")})
    return rows


def report(args, rec: Recorder, roofs: dict[str, float], rows: list[dict]) -> None:
    gflops = forward_flops(resolve_entry(args.model), 224) / 1e9
    table = Table(title=f"{args.model}, batch {args.batch_size}, 224 px ({gflops:.2f} GFLOPs per image), against this CPU's "
                        f"roof per precision")
    for col in ("precision", "roof", "engine", "img/s", "achieved", "share of roof", "load avg", "saved in"):
        table.add_column(col)
    for precision in PRECISIONS:
        mine = sorted((r for r in rows if r["precision"] == precision), key=lambda r: -r["images_per_sec"])
        for k, r in enumerate(mine):
            achieved = r["images_per_sec"] * gflops / 1e3
            share = achieved / roofs[precision] if precision in roofs else None
            best = k == 0
            table.add_row(precision, f"{roofs[precision]:.3f}" if precision in roofs else "-",
                          r["engine"] + (" (best)" if best else ""), f"{r['images_per_sec']:.1f}", f"{achieved:.3f}",
                          "-" if share is None else f"{100 * share:.0f}%",
                          "-" if r["load_average_before"] is None else f"{r['load_average_before']:.1f}", r["source"])
            rec.row(kind="engine", best=best, achieved_tflops=achieved, roof_share=share, roof_tflops=roofs.get(precision), **r)
    rec.table(table)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16, help="the batch the saved rows ran at (each script's default, 16)")
    add_save_option(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rec.say_load("before")
    roofs = measure_roofs(rec)
    report(args, rec, roofs, latest_rows(args.model, Path(args.save_to)))
    rec.say_load("after")
    rec.save()


if __name__ == "__main__":
    main()
