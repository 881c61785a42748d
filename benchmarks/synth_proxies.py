"""Issue 11's benchmark: do synthetic proxies predict what their targets do on this machine?

Four proxies, each made by `cnnbench synth` and checked by `cnnbench synth validate` (every configuration
timed for the proxy and its targets, each run its own process):
  - mix4: the equal mix of the original's four real models (densenet121, googlenet, resnet152, resnet50),
    at the mix's own FLOPs: one network standing for four;
  - resnet50, densenet121, googlenet alone, each at a quarter of its model's FLOPs (--gflops): a shorter
    benchmark of the same character.
The validations share one results folder with --reuse, so each target's runs are timed once (their whole
configuration matches) and every proxy is compared with the same target figures.

Goals (issue 11): each configuration's predicted speed-up within 15% of the mix's, Spearman >= 0.9, the
proxy's runs taking at most a third of the targets' wall time.

    .venv/bin/python benchmarks/synth_proxies.py                 # about 30 minutes on 2 idle cores
    .venv/bin/python benchmarks/synth_proxies.py --image-size 64 --batch-sizes 2,4 --num-batches 2 \\
        --configs eager-fp32,onnxruntime-fp32 --proxies googlenet --save-to /tmp/smoke   # a smoke run

    .venv/bin/python benchmarks/synth_proxies.py --goals        # generation only: the goal figures at 224 px

Timing needs an otherwise idle machine; --goals times nothing. Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from cnnbench.models.registry import forward_flops, resolve_entry
from record import Recorder, add_save_option

FOUR = "densenet121,googlenet,resnet152,resnet50"
PROXIES = {"mix4": (FOUR, None), "resnet50": ("resnet50", 4), "densenet121": ("densenet121", 4),
           "googlenet": ("googlenet", 4)}  # name: (targets, FLOP divisor of the budget or None)


def cnnbench(*args: str) -> subprocess.CompletedProcess:
    """A cnnbench command with its output passed through (and returned); a failure stops the benchmark."""
    command = [sys.executable, "-m", "cnnbench", *map(str, args)]
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(done.stdout, flush=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}")
    return done


def make_proxy(name: str, work: Path, size: int) -> tuple[Path, str]:
    targets, divisor = PROXIES[name]
    spec = work / f"proxy_{name}.json"
    budget = []
    if divisor:
        budget = ["--gflops", f"{forward_flops(resolve_entry(targets), size) / divisor / 1e9:.4f}"]
    out = cnnbench("synth", "--target", targets, "--image-size", size, "--out", spec, "--seed", 0, *budget)
    return spec, out.stdout


def goal_figures(synth_output: str) -> dict:
    """FLOPs and parameters off (%), and the intensity distance, from `cnnbench synth`'s table."""
    figures = {}
    for line in synth_output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[0] in ("GFLOPs per image", "parameters (M)", "intensity distance (W1, octaves)"):
            figures[cells[0]] = float(cells[3].split()[0])
    return figures


def validate(spec: Path, name: str, args: argparse.Namespace, results: Path) -> list[dict]:
    before = results / "validation.jsonl"
    count = len(before.read_text().splitlines()) if before.exists() else 0
    options = ["--image-size", args.image_size, "--batch-sizes", args.batch_sizes, "--num-batches", args.num_batches,
               "--warmup", args.warmup, "--results-dir", results, "--reuse"]
    if args.configs:
        options += ["--configs", args.configs]
    if args.compile_mode:
        options += ["--compile-mode", args.compile_mode]
    cnnbench("synth", "validate", spec, "--target", PROXIES[name][0], *options)
    return [json.loads(line) for line in before.read_text().splitlines()[count:]]


def num(value: float | None, form: str) -> str:
    """A figure, or "-" where a record holds none (NaN is saved as null)."""
    return "-" if value is None else format(value, form)


GOAL_TARGETS = ("resnet50", "densenet121", "googlenet", "resnet152", FOUR, "resnet50:0.4,densenet121:0.3,googlenet:0.3",
                "mobilenet_v3_large", "resnext50_32x4d", "efficientnet_b0")


def goals(recorder: Recorder, work: Path, size: int) -> None:
    """`cnnbench synth` for GOAL_TARGETS at `size`: FLOPs, parameters, worst FLOP-share and intensity distance."""
    table = Table(title=f"cnnbench synth at {size} px, seed 0: the generated network against its mix")
    for column in ("targets", "layers", "GFLOPs off %", "params off %", "worst FLOP share off pp", "W1 octaves", "goals met"):
        table.add_column(column)
    for k, targets in enumerate(GOAL_TARGETS):
        made = cnnbench("synth", "--target", targets, "--image-size", size, "--out", work / f"goals_{k}.json").stdout
        figures = goal_figures(made)
        shares = [float(line.split("│")[4].split()[0]) for line in made.splitlines() if "FLOP share:" in line]
        layers = next(line.split(":")[1].split()[0] for line in made.splitlines() if "layers, against the mix" in line)
        met = "missed" not in made
        recorder.row(targets=targets, image_size=size, layers=int(layers), worst_share_off_pp=max(map(abs, shares)),
                     goals_met=met, **{k.split(" (")[0].replace(" ", "_"): v for k, v in figures.items()})
        table.add_row(targets, layers, num(figures.get("GFLOPs per image"), "+.2f"), num(figures.get("parameters (M)"), "+.2f"),
                      f"{max(map(abs, shares)):.2f}", num(figures.get("intensity distance (W1, octaves)"), ".3f"),
                      "yes" if met else "NO")
    recorder.table(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-sizes", default="2,8")
    parser.add_argument("--num-batches", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--configs", default=None, help="default: synth validate's for the device")
    # default: inductor's default mode, minutes shorter to compile on a CPU than infer's max-autotune-no-cudagraphs
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of compile-fp32 (synth validate's)")
    parser.add_argument("--proxies", default=",".join(PROXIES), help=f"some of {', '.join(PROXIES)}")
    parser.add_argument("--work", default="synth_proxies_work", help="specs and the validation results folder")
    parser.add_argument("--goals", action="store_true", help="only generate (GOAL_TARGETS at 224 px): nothing timed")
    add_save_option(parser)
    args = parser.parse_args()
    recorder = Recorder(__file__, args.save_to)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.goals:
        goals(recorder, work, 224)
        recorder.save()
        return
    table = Table(title=f"synthetic proxies at {args.image_size} px, batch {args.batch_sizes}, {args.num_batches} timed steps")
    for column in ("proxy", "stands for", "GFLOPs off %", "params off %", "W1 octaves", "max speed-up err %",
                   "mean err %", "Spearman", "time ratio", "goals met"):
        table.add_column(column)
    for name in args.proxies.split(","):
        spec, made = make_proxy(name, work, args.image_size)
        figures = goal_figures(made)
        records = validate(spec, name, args, work / "results")
        for record in records:
            recorder.row(**{k: v for k, v in record.items() if not k.startswith("env.")}, benchmark_proxy=name)
        s = next(r for r in records if r["configuration"] == "summary")
        met = [goal for goal, key in (("speed-up", "speedup_goal_met"), ("Spearman", "spearman_goal_met"),
                                      ("time", "time_goal_met")) if s[key]]
        recorder.row(**{**s, "configuration": "proxy-summary"}, benchmark_proxy=name, synth_figures=figures)
        table.add_row(name, PROXIES[name][0], num(figures.get("GFLOPs per image"), "+.2f"),
                      num(figures.get("parameters (M)"), "+.2f"), num(figures.get("intensity distance (W1, octaves)"), ".3f"),
                      num(s["max_abs_speedup_error_percent"], ".1f"), num(s["mean_abs_speedup_error_percent"], ".1f"),
                      num(s["spearman"], ".3f"), num(s["time_ratio"], ".3f"), ", ".join(met) or "none")
        for record in records:
            if record["configuration"] not in ("summary", "synNet-vs-four-models"):
                recorder.say(f"  {name} {record['configuration']} batch {record['batch_size']}: proxy "
                             f"{num(record['proxy_ms_per_image'], '.2f')} ms/img, mix {num(record['mix_ms_per_image'], '.2f')}; "
                             f"speed-up {num(record['proxy_speedup'], '.2f')} vs {num(record['mix_speedup'], '.2f')} "
                             f"({num(record['speedup_error_percent'], '+.1f')}%)")
    recorder.table(table)
    synnet = next((r for r in records if r["configuration"] == "synNet-vs-four-models"), None)
    if synnet:
        recorder.say("AI Matrix's synNet.json against the equal four-model mix: " + ", ".join(
            f"{k.removeprefix('off_')} {num(v, '+.2f')}" for k, v in synnet.items() if k.startswith("off_")))
    recorder.save()


if __name__ == "__main__":
    main()
