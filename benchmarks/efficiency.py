"""This machine's hardware figures (issue 12): RAPL, the measured matrix-product peaks, ResNet-50's MFU in
training and inference, and the telemetry sampler's cost.

    .venv/bin/python benchmarks/efficiency.py                      # ResNet-50 224 px batch 16, 3 rounds
    .venv/bin/python benchmarks/efficiency.py --image-size 64 --steps 2 --rounds 1 --save-to /tmp/smoke   # a smoke run

- RAPL: whether /sys/class/powercap's package counters are readable, and why not (telemetry.rapl_zones);
- peaks: fp32, bf16 and int8 matrix products on all cores, measured now (efficiency.measure_peak; the
  cache is not read, and the figures replace it, so later runs' MFU uses them);
- MFU: `cnnbench train` and `cnnbench infer` (eager, the default NHWC on a CPU) of ResNet-50, their
  records' achieved TFLOP/s against the fp32 peak;
- sampler cost: the same inference run with and without --no-telemetry, alternated for --rounds rounds
  (target: under 1% of images/s), and the sampler thread's CPU time over the run's steady time.

Output saved under benchmarks/results/ (record.py). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from cnnbench.core import efficiency, telemetry

from cnnbench.recipes import inference, training
from cnnbench.core.config import InferConfig, MeasureConfig, PlacementConfig, TrainConfig
from record import Recorder, add_save_option


def peaks(rec: Recorder) -> None:
    cpu = torch.device("cpu")
    for precision in ("fp32", "bf16", "int8"):
        tflops, method = efficiency.measure_peak(cpu, precision)
        if tflops is not None:
            efficiency.remember(cpu, precision, tflops, method)
        rec.say(f"peak {precision}: " + (f"{tflops * 1000:.1f} G{'OPS' if precision == 'int8' else 'FLOP/s'} ({method})"
                                         if tflops else method))
        rec.row(kind="peak", precision=precision, tflops=tflops, method=method)


def run(kind: str, args, tmp: str, no_telemetry: bool = False) -> dict:
    measure = MeasureConfig(batch_size=args.batch_size, num_batches=args.steps, warmup=args.warmup,
                            display_every=10**6, no_telemetry=no_telemetry)
    common = dict(model="resnet50", image_size=args.image_size, results_dir=f"{tmp}/{kind}", log_dir=f"{tmp}/log_{kind}",
                  measure=measure, placement=PlacementConfig(device="cpu"))
    if kind == "train":
        return training.run(TrainConfig(**common))
    return inference.run(InferConfig(**common, random_weights=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the sampler-cost comparison")
    add_save_option(p)
    args = p.parse_args()
    rec = Recorder(__file__, args.save_to)
    zones, why = telemetry.rapl_zones()
    rec.say(f"RAPL: {f'{len(zones)} package counter(s) readable' if zones else f'unavailable: {why}'}")
    rec.row(kind="rapl", readable=bool(zones), zones=[str(z) for z, _ in zones], why=why)
    peaks(rec)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("train", "infer"):
            r = run(kind, args, tmp)
            rec.say(f"ResNet-50 {kind} batch {args.batch_size} at {args.image_size} px: {r['images_per_sec_from_mean_time']:.2f} img/s, "
                    f"{r['achieved_tflops'] * 1000:.1f} GFLOP/s achieved, MFU {100 * r['mfu']:.1f}% of the fp32 peak; "
                    f"{telemetry.describe(r)}")
            rec.row(kind="mfu", mode=kind, **{k: r[k] for k in ("batch_size", "image_size", "images_per_sec_from_mean_time",
                                                                "achieved_tflops", "peak_tflops", "peak_source", "mfu",
                                                                "energy_j", "energy_source", "telemetry_cpu_share")})
        on, off, shares = [], [], []
        for k in range(args.rounds):
            sampled = run("infer", args, tmp)
            on.append(sampled["images_per_sec_from_mean_time"])
            shares.append(sampled["telemetry_cpu_share"])
            off.append(run("infer", args, tmp, no_telemetry=True)["images_per_sec_from_mean_time"])
            rec.row(kind="round", round=k + 1, with_telemetry=on[-1], without_telemetry=off[-1], sampler_cpu_share=shares[-1])
    cost = (statistics.median(off) - statistics.median(on)) / statistics.median(off) * 100
    rec.say(f"sampler cost: {cost:+.2f}% of images/s (with {statistics.median(on):.2f}, without {statistics.median(off):.2f}; "
            f"rounds {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(on, off))}); thread CPU time "
            f"{100 * statistics.median(shares):.3f}% of the run's time (target < 1%)")
    rec.row(kind="summary", sampler_cost_percent=cost, sampler_cpu_share=statistics.median(shares), passed=cost < 1)
    rec.save()


if __name__ == "__main__":
    main()
