"""Harness overhead: steady-state images/s of `cnnbench train` against a bare PyTorch loop.

Same model, batch, image size and device, in one process, alternated (bare, harness, bare, harness...)
so that thermal or background drift hits both alike. Target: the harness costs under 3%. Both use
the memory format `cnnbench train` resolves by default (--memory-format auto: NHWC on a CPU).

    .venv/bin/python benchmarks/harness_overhead.py --model resnet50 --batch-size 16 --image-size 112 --steps 20 --rounds 5
    .venv/bin/python benchmarks/harness_overhead.py --image-size 32 --steps 2 --rounds 1 --save-to /tmp/smoke   # a smoke run

Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from cnnbench.recipes import training
from cnnbench.core.config import MeasureConfig, PlacementConfig, TrainConfig
from cnnbench.models.registry import resolve_entry
from cnnbench.core.placement import resolve_memory_format
from record import Recorder, add_save_option


def bare_loop(model_name: str, batch: int, size: int, steps: int, warmup: int, device: torch.device, layout: str) -> float:
    """The loop a person would write by hand: same optimizer, layout and synchronisation per step."""
    entry = resolve_entry(model_name)
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    model = entry.build(size).to(device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=entry.learning_rate(batch), momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    speeds = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            speeds.append(batch / (time.perf_counter() - start))
    return statistics.fmean(speeds)


def harness(model_name: str, batch: int, size: int, steps: int, warmup: int, device: torch.device, layout: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=model_name, image_size=size, log_dir=f"{tmp}/log", results_dir=f"{tmp}/results",
                          measure=MeasureConfig(batch_size=batch, num_batches=steps, warmup=warmup, display_every=10**6),
                          placement=PlacementConfig(device=str(device), memory_format=layout))
        return training.run(cfg)["images_per_sec"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None, help="default 224 on CUDA, 112 on CPU")
    p.add_argument("--steps", type=int, default=None, help="default 100 on CUDA, 20 on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="alternations; fewer leave per-round noise of a few percent on a CPU")
    p.add_argument("--memory-format", default="auto", choices=("auto", "nchw", "nhwc"), help="default: what cnnbench train takes")
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.image_size or (224 if device.type == "cuda" else 112)
    steps = args.steps or (100 if device.type == "cuda" else 20)
    layout = "nhwc" if resolve_memory_format(args.memory_format, device) else "nchw"
    bare, ours = [], []
    for k in range(args.rounds):
        bare.append(bare_loop(args.model, args.batch_size, size, steps, args.warmup, device, layout))
        ours.append(harness(args.model, args.batch_size, size, steps, args.warmup, device, layout))
        rec.row(kind="round", round=k + 1, bare_images_per_sec=bare[-1], cnnbench_images_per_sec=ours[-1])
    b, h = statistics.median(bare), statistics.median(ours)
    overhead = (b - h) / b * 100
    rec.say(f"\n{args.model} batch {args.batch_size} at {size}px on {device}, {layout.upper()}, {steps} steady steps x {args.rounds} rounds")
    rec.say(f"bare loop : {b:8.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in bare)})")
    rec.say(f"cnnbench  : {h:8.2f} img/s  (rounds: {', '.join(f'{v:.2f}' for v in ours)})")
    rec.say(f"harness overhead: {overhead:+.2f}% (target < 3%): {'PASS' if overhead < 3 else 'FAIL'}")
    rec.row(kind="summary", model=args.model, batch_size=args.batch_size, image_size=size, device=str(device), layout=layout,
            steps=steps, rounds=args.rounds, bare_median=b, cnnbench_median=h, overhead_percent=overhead, passed=overhead < 3)
    rec.save()


if __name__ == "__main__":
    main()
