"""Issue 25's goals benchmark: do synthetic proxies predict what their targets do on this machine?

Each proxy is made by `cnnbench synth` (so it picks up the generator as it is) and checked by `cnnbench synth
validate` (every configuration timed for the proxy and its targets, each run its own process):
  - a quarter of the FLOPs (--gflops) for resnet50, densenet121, googlenet, mobilenet_v3_large, efficientnet_b0
    and mix4, the equal mix of the original's four real models (densenet121, googlenet, resnet152, resnet50);
  - full-FLOP proxies (--full, default mix4: one network at the mix's FLOPs standing for four), where the time
    per image itself is judged;
  - AI Matrix's synNet beside the full-FLOP mix4 proxy (`synth validate --synnet`), on the same target runs.
A quarter-FLOP proxy runs at its spec's synth.batch_scale times each batch size (synth records it, validate
applies it), so its steps do the targets' FLOPs.
The configurations are `synth validate`'s default for the device (on a CPU: training and every installed
engine at fp32 and int8, bf16 where native; its listing is printed). The validations share one results folder
with --reuse, so each target's runs are timed once and every proxy is compared with the same target figures;
a proxy's spec file is named by its content's digest, so a regenerated proxy is timed again, never reused.

Goals (issue 25): each configuration's predicted speed-up within 15% of the mix's, Spearman >= 0.9, the proxy's
runs taking at most a third of the targets' wall time, and a full-FLOP proxy's time per image within 20% of the
mix's in every configuration. Each proxy's framework overhead share (proxy and mix) is reported beside them.

    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/synth_proxies.py           # the goals (long)
    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/synth_proxies.py --quick   # ~3 minutes: one target, two configs
    .venv/bin/python benchmarks/synth_proxies.py --goals        # generation only: the static goal figures at 224 px

Timing needs a quiet machine (the load average is saved before and after); --goals times nothing. Delete the
--work folder to time the targets afresh. Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

FOUR = "densenet121,googlenet,resnet152,resnet50"
TARGETS = {"resnet50": "resnet50", "densenet121": "densenet121", "googlenet": "googlenet",
           "mobilenet_v3_large": "mobilenet_v3_large", "efficientnet_b0": "efficientnet_b0", "mix4": FOUR}
QUARTER = 4  # issue 25: a proxy at a quarter of its targets' FLOPs
QUICK = {"proxies": "mobilenet_v3_large", "full": "", "configs": "eager-fp32,onnxruntime-int8", "synnet": False}


@dataclass(frozen=True)
class Proxy:
    name: str  # mix4, resnet50-full, ...
    targets: str  # what `synth --target` and `synth validate --target` get
    divisor: int  # FLOP budget: the mix's FLOPs / divisor (1: the mix's own)
    synnet: bool  # validate synNet beside it (--synnet)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-sizes", default="2,8", help="two or more: the overhead fit needs them")
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--configs", default=None, help="default: synth validate's for the device")
    # default: inductor's default mode, minutes shorter to compile on a CPU than infer's max-autotune-no-cudagraphs
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of compile-fp32 (synth validate's)")
    parser.add_argument("--proxies", default=",".join(TARGETS), help=f"quarter-FLOP proxies, some of {', '.join(TARGETS)}")
    parser.add_argument("--full", default="mix4", help="full-FLOP proxies, some of the same names ('' for none)")
    parser.add_argument("--no-synnet", dest="synnet", action="store_false", help="do not validate synNet beside mix4")
    parser.add_argument("--quick", action="store_true",
                        help=f"one target, two configurations (--proxies {QUICK['proxies']} --full '' --configs "
                             f"{QUICK['configs']}, no synNet): ~3 minutes, to check the benchmark runs")
    parser.add_argument("--work", default=None, help="specs and the validation results folder "
                                                     "(default synth_proxies_work, synth_proxies_quick with --quick)")
    parser.add_argument("--goals", action="store_true", help="only generate (GOAL_TARGETS at 224 px): nothing timed")
    add_save_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    args.work = args.work or ("synth_proxies_quick" if args.quick else "synth_proxies_work")
    batches = [b for b in args.batch_sizes.split(",") if b.strip()]
    if len(set(batches)) < 2 and not args.goals:
        parser.error("--batch-sizes: give two or more different sizes (the overhead fit needs a line)")
    for option in ("proxies", "full"):
        unknown = [n for n in _names(getattr(args, option)) if n not in TARGETS]
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(unknown)}; use some of {', '.join(TARGETS)}")
    return args


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def plan(args: argparse.Namespace) -> list[Proxy]:
    """The proxies to make and validate, in order: the full-FLOP ones first (mix4 with synNet beside it, whose
    validation times the four targets once for all), then the quarter-FLOP ones."""
    full = [Proxy(f"{n}-full", TARGETS[n], 1, args.synnet and n == "mix4") for n in _names(args.full)]
    quarter = [Proxy(n, TARGETS[n], QUARTER, False) for n in _names(args.proxies)]
    if args.synnet and not any(p.synnet for p in full):  # no full mix4: synNet goes beside the quarter one
        quarter = [Proxy(p.name, p.targets, p.divisor, p.targets == FOUR) for p in quarter]
    return full + quarter


def cnnbench(*args: str) -> subprocess.CompletedProcess:
    """A cnnbench command with its output passed through (and returned); a failure stops the benchmark."""
    command = [sys.executable, "-m", "cnnbench", *map(str, args)]
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(done.stdout, flush=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}")
    return done


def mix_gflops(targets: str, size: int) -> float:
    """The equal mix's forward GFLOPs per image at `size`: the mean of its models'."""
    from cnnbench.models.registry import forward_flops, resolve_entry

    names = targets.split(",")
    return sum(forward_flops(resolve_entry(n), size) for n in names) / len(names) / 1e9


def make_proxy(proxy: Proxy, work: Path, size: int) -> tuple[Path, str]:
    """`cnnbench synth` at the proxy's budget; the spec renamed by its content's digest (see the docstring)."""
    made = work / f"proxy_{proxy.name}.json"
    budget = ["--gflops", f"{mix_gflops(proxy.targets, size) / proxy.divisor:.4f}"] if proxy.divisor > 1 else []
    out = cnnbench("synth", "--target", proxy.targets, "--image-size", size, "--out", made, "--seed", 0,
                   "--name", f"proxy_{proxy.name}", *budget)
    spec = work / f"proxy_{proxy.name}-{hashlib.sha256(made.read_bytes()).hexdigest()[:10]}.json"
    made.replace(spec)
    return spec, out.stdout


def goal_figures(synth_output: str) -> dict:
    """FLOPs and parameters off (%), and the intensity distance, from `cnnbench synth`'s table."""
    figures = {}
    for line in synth_output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[0] in ("GFLOPs per image", "parameters (M)", "intensity distance (W1, octaves)"):
            figures[cells[0]] = float(cells[3].split()[0])
    return figures


def validate(spec: Path, proxy: Proxy, args: argparse.Namespace, results: Path) -> list[dict]:
    before = results / "validation.jsonl"
    count = len(before.read_text().splitlines()) if before.exists() else 0
    options = ["--image-size", args.image_size, "--batch-sizes", args.batch_sizes, "--num-batches", args.num_batches,
               "--warmup", args.warmup, "--results-dir", results, "--reuse", "--compile-mode", args.compile_mode]
    options += ["--configs", args.configs] if args.configs else []
    options += ["--synnet"] if proxy.synnet else []
    cnnbench("synth", "validate", spec, "--target", proxy.targets, *options)
    return [json.loads(line) for line in before.read_text().splitlines()[count:]]


def num(value: float | None, form: str) -> str:
    """A figure, or "-" where a record holds none (NaN is saved as null)."""
    return "-" if value is None else format(value, form)


def goals_met(s: dict) -> tuple[list[str], list[str]]:
    """(met, missed) of the issue's goals for one proxy's summary; the per-image goal only for a full-FLOP one."""
    checks = [("speed-up", s["speedup_goal_met"]), ("Spearman", s["spearman_goal_met"]), ("time", s["time_goal_met"])]
    if s.get("per_image_time_goal_met") is not None:
        checks.append(("time per image", s["per_image_time_goal_met"]))
    return [g for g, ok in checks if ok], [g for g, ok in checks if not ok]


SUMMARY_COLUMNS = ("proxy", "stands for", "GFLOPs (x mix)", "max / mean speed-up err %", "Spearman", "run-time ratio",
                   "proxy/mix ms per image", "overhead share proxy / mix", "goals met", "missed")


def summary_row(name: str, targets: str, s: dict) -> list[str]:
    met, missed = goals_met(s)
    ratio = s["proxy_gflops"] / s["mix_gflops"] if s.get("proxy_gflops") and s.get("mix_gflops") else None
    return [name, targets, f"{num(s.get('proxy_gflops'), '.3g')} ({num(ratio, '.2f')}x)",
            f"{num(s['max_abs_speedup_error_percent'], '.1f')} / {num(s['mean_abs_speedup_error_percent'], '.1f')}",
            num(s["spearman"], ".3f"), num(s["time_ratio"], ".3f"), num(s.get("mean_proxy_to_mix_time_ratio"), ".2f"),
            f"{num(s.get('overhead_share_proxy_mean'), '.0%')} / {num(s.get('overhead_share_mix_mean'), '.0%')}",
            ", ".join(met) or "none", ", ".join(missed) or "none"]


def timed(recorder: Recorder, args: argparse.Namespace) -> None:
    """Make and validate every planned proxy; one summary table, each configuration's figures as lines."""
    work = Path(args.work)
    table = Table(title=f"synthetic proxies at {args.image_size} px, batch {args.batch_sizes}, {args.num_batches} timed "
                        f"steps after {args.warmup}")
    for column in SUMMARY_COLUMNS:
        table.add_column(column)
    recorder.say_load("before")
    for proxy in plan(args):
        spec, made = make_proxy(proxy, work, args.image_size)
        records = validate(spec, proxy, args, work / "results")
        for record in records:
            recorder.row(**{k: v for k, v in record.items() if not k.startswith("env.")}, benchmark_proxy=proxy.name)
        for s in (r for r in records if r["configuration"] == "summary"):
            name = proxy.name if not s.get("reference") else "synNet"
            recorder.row(**{**s, "configuration": "proxy-summary"}, benchmark_proxy=name,
                         synth_figures=goal_figures(made) if not s.get("reference") else None)
            table.add_row(*summary_row(name, proxy.targets, s))
        for r in records:
            if r["configuration"] not in ("summary", "synNet-vs-four-models"):
                recorder.say(f"  {r['proxy']} ({proxy.name}) {r['configuration']} batch {r['batch_size']}: proxy "
                             f"{num(r['proxy_ms_per_image'], '.2f')} ms/img, mix {num(r['mix_ms_per_image'], '.2f')} "
                             f"(x{num(r.get('proxy_to_mix_time_ratio'), '.2f')}); speed-up {num(r['proxy_speedup'], '.2f')} "
                             f"vs {num(r['mix_speedup'], '.2f')} ({num(r['speedup_error_percent'], '+.1f')}%); overhead "
                             f"share {num(r.get('overhead_share_proxy'), '.0%')} vs {num(r.get('overhead_share_mix'), '.0%')}")
    recorder.say_load("after")
    recorder.table(table)


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    recorder = Recorder(__file__, args.save_to)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.goals:
        goals(recorder, work, 224)
    else:
        timed(recorder, args)
    recorder.save()


if __name__ == "__main__":
    main()
