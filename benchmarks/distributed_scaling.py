"""Data-parallel scaling: images/s of `cnnbench train` at 1 and N processes, and the cost of the distributed path.

Three ways to run the same configuration, each a fresh command as a user would type it, alternated
round by round (plain, ddp x1, ddp xN, plain, ...) so that drift hits all alike:
  plain   `cnnbench train MODEL`: one process, no process group, no DDP
  ddp x1  `torchrun --standalone --nproc-per-node 1 -m cnnbench train MODEL`: the distributed path
          (process group, DDP wrapper, gathers after the timed loop) with one process
  ddp xN  `cnnbench train MODEL --num-accelerators N`: N processes launched by torchrun's agent

Figures are the records' steady-state images/s (each step as long as its slowest rank's). Scaling
efficiency = images/s at N / (N x plain images/s). Target on a GPU: ddp x1 costs under 2% against plain.

On a CPU the N gloo processes share the same cores as the one plain process, so N processes cannot be
faster: there the efficiency is an accounting check (global images/s at N / plain images/s should be
near 1, less the cost of the gradient all-reduce), not a speed claim.

    .venv/bin/python benchmarks/distributed_scaling.py --model resnet50 --batch-size 16 --image-size 64 --steps 10 --rounds 3
    .venv/bin/python benchmarks/distributed_scaling.py                     # on a GPU: resnet50, 224 px, batch 64, 100 steps

Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from record import Recorder, add_save_option


def run(mode: str, count: int, options: list[str], workdir: Path) -> dict:
    prefix = {
        "plain": [sys.executable, "-m", "cnnbench"],
        "ddp x1": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                   "--log-dir", str(workdir / "torchelastic"), "-m", "cnnbench"],
        "ddp xN": [sys.executable, "-m", "cnnbench"],
    }[mode]
    results = workdir / f"results_{len(list(workdir.iterdir()))}"
    extra = ["--num-accelerators", str(count)] if mode == "ddp xN" else []
    command = [*prefix, "train", *options, *extra, "--results-dir", str(results), "--log-dir", str(results / "log")]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    record, = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default 64 on CUDA, 16 on CPU)")
    p.add_argument("--image-size", type=int, default=None, help="default 224 on CUDA, 64 on CPU")
    p.add_argument("--steps", type=int, default=None, help="steady steps (default 100 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-accelerators", type=int, default=None, help="N (default: the GPU count, at least 2; 2 on CPU)")
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    cuda = torch.cuda.is_available()
    batch = args.batch_size or (64 if cuda else 16)
    size = args.image_size or (224 if cuda else 64)
    steps = args.steps or (100 if cuda else 10)
    count = args.num_accelerators or (max(2, torch.cuda.device_count()) if cuda else 2)
    modes = ["plain", "ddp x1"] + (["ddp xN"] if not cuda or torch.cuda.device_count() >= count else [])
    options = [args.model, "--batch-size", str(batch), "--image-size", str(size), "--num-batches", str(steps),
               "--warmup", str(args.warmup), "--display-every", str(10**6)]
    figures: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for mode in modes:
                record = run(mode, count, options, Path(tmp))
                figures[mode].append(record)
                rec.say(f"round {k + 1} {mode:7s}: {record['images_per_sec']:9.2f} img/s  "
                        f"(world {record['world_size']}, {record['backend'] or 'no process group'}, per rank "
                        f"{', '.join(f'{v:.2f}' for v in record['rank_images_per_sec'])})")
                rec.row(kind="run", round=k + 1, mode=mode.replace("xN", f"x{count}"),
                        record={key: v for key, v in record.items() if not key.startswith("env.")})
    summary(rec, args, figures, modes, batch, size, steps, count, cuda)
    rec.save()


def summary(rec: Recorder, args, figures: dict[str, list[dict]], modes: list[str], batch: int, size: int, steps: int,
            count: int, cuda: bool) -> None:
    median = {m: statistics.median(r["images_per_sec"] for r in rs) for m, rs in figures.items()}
    device = figures["plain"][0]["device"]
    rec.say(f"\n{args.model} batch {batch} per process at {size}px on {device}, {steps} steady steps x {args.rounds} rounds "
            f"(torch {torch.__version__})")
    for mode in modes:
        label = mode.replace("xN", f"x{count}")
        rounds = ", ".join(f"{r['images_per_sec']:.2f}" for r in figures[mode])
        rec.say(f"{label:7s}: {median[mode]:9.2f} img/s  (rounds: {rounds})")
    overhead = (median["plain"] - median["ddp x1"]) / median["plain"] * 100
    verdict = ("PASS" if overhead < 2 else "FAIL") if cuda else "not a GPU: a CPU figure, the target is for GPUs"
    rec.say(f"distributed path with 1 process costs {overhead:+.2f}% against plain (target < 2% on a GPU): {verdict}")
    result = dict(kind="summary", model=args.model, batch_size=batch, image_size=size, device=device, steps=steps,
                  rounds=args.rounds, median_images_per_sec={m.replace("xN", f"x{count}"): v for m, v in median.items()},
                  ddp_x1_overhead_percent=overhead, passed=(overhead < 2) if cuda else None)
    if "ddp xN" in median:
        efficiency = median["ddp xN"] / (count * median["plain"]) * 100
        per_rank = statistics.median(v for r in figures["ddp xN"] for v in r["rank_images_per_sec"])
        rec.say(f"scaling efficiency at {count}: {efficiency:.1f}%  (global {median['ddp xN']:.2f} img/s = "
                f"{median['ddp xN'] / median['plain']:.2f} x plain; median per-rank {per_rank:.2f} img/s)")
        if not cuda:
            rec.say(f"  CPU: {count} gloo processes share the cores of the one plain process, so ~{100 / count:.0f}% "
                    "(global = plain) is the most there is: an accounting check, not a speed claim")
        result.update(num_accelerators=count, scaling_efficiency_percent=efficiency, median_rank_images_per_sec=per_rank)
    rec.row(**result)


if __name__ == "__main__":
    main()
