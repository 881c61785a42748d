"""OpenVINO against ONNX Runtime on this CPU: ResNet-50 and DenseNet-121, batch 16, 224 px, in one run (issue 21).

    .venv/bin/python benchmarks/openvino_onnxruntime.py         # both models, the measurement in docs/engines.md
    .venv/bin/python benchmarks/openvino_onnxruntime.py --models resnet50 --image-size 32 --seconds 2 --warmup 1 --repeats 1   # a smoke run

Each configuration is its own `cnnbench infer` process (random weights, synthetic input, the same seed), so
each engine starts as a user's run does; the figure is cnnbench's own: mean images/s over the steady steps
(after --warmup steps). Every run is checked against eager fp32 on the same inputs (the fp32 guard) and says its
verdict. The configurations:
  onnxruntime fp32, int8 (ONNX Runtime's static QDQ quantisation, uint8 activations: the CPU's default)
  openvino    fp32, int8 (NNCF post-training quantisation), bf16 (where the CPU has native bf16)
Both int8 engines are calibrated on the same --calib-batches synthetic batches: their accuracy means nothing,
their guard verdicts and speed do.

--repeats rounds, each running every configuration once in the same order, so that a change in the machine's
load between rounds reaches every configuration alike (on a machine whose cores other work shares, one run of
each measures the load as much as the engine). The first round builds cold (export or conversion,
quantisation: build s); later rounds reuse the artefact cache. A row's figure is the median of its rounds'
images/s, with their min..max (the spread between processes) and the median run's standard error over its
steps. Ratios: over onnxruntime fp32 of the same model, and OpenVINO int8 over ONNX Runtime int8. The 1-minute
load average before and after each run is saved with it. Output saved under benchmarks/results/ (record.py).
The script is not named openvino.py: run from benchmarks/, that name would shadow the openvino package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

MODELS = ("resnet50", "densenet121")
CONFIGS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"), ("openvino", "bf16"))
FIELDS = ("images_per_sec", "images_per_sec_stderr", "images_per_sec_jitter", "steady_steps", "latency_ms_p90", "guard_ok",
          "guard_relative_error", "guard_top1_agreement", "guard_bound", "engine_build_seconds", "engine_load_seconds",
          "cache_hit", "openvino", "nncf", "onnxruntime", "openvino_inference_precision", "exporter")


def command(args, tmp: Path, model: str, engine: str, precision: str) -> list[str]:
    line = [sys.executable, "-m", "cnnbench", "infer", model, "--engine", engine, "--precision", precision,
            "--random-weights", "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
            "--duration", str(args.seconds), "--num-batches", "100000", "--min-steady-steps", "3",
            "--display-every", "100000", "--guard-batches", str(args.guard_batches), "--calib-batches", str(args.calib_batches),
            "--results-dir", str(tmp / "results"), "--cache-path", str(tmp / f"cache-{model}-{engine}-{precision}")]
    return line + (["--image-size", str(args.image_size)] if args.image_size else [])


def run_one(args, tmp: Path, model: str, engine: str, precision: str, round_: int) -> dict:
    """One process's row; a failed or refused one is a row with its last line, not the end."""
    load = os.getloadavg()[0]
    runs = tmp / "results" / "runs.jsonl"
    before = len(runs.read_text().splitlines()) if runs.exists() else 0
    # cwd: the temporary folder, so that no file of the caller's folder shadows a package the run imports.
    done = subprocess.run(command(args, tmp, model, engine, precision), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=tmp)
    records = [json.loads(line) for line in runs.read_text().splitlines()[before:]] if runs.exists() else []
    row = {"model": model, "engine": engine, "precision": precision, "round": round_, "load_average_before": load,
           "load_average_after": os.getloadavg()[0]}
    if done.returncode != 0 or not records:
        return {**row, "images_per_sec": None, "error": (done.stdout.strip().splitlines() or ["?"])[-1]}
    return {**row, **{key: records[-1].get(key) for key in FIELDS}}


def measure(args, tmp: Path, rec: Recorder) -> list[dict]:
    runs = []
    for round_ in range(1, args.repeats + 1):
        for model in args.models.split(","):
            for engine, precision in CONFIGS:
                r = run_one(args, tmp, model, engine, precision, round_)
                rec.say(f"round {round_} {model} {engine} {precision}: " + (
                    f"{r['images_per_sec']:.2f} img/s, guard {'ok' if r['guard_ok'] else 'FAILED'}" if r["images_per_sec"]
                    else f"not run: {r['error']}") + f" (load average before {r['load_average_before']:.2f}, after "
                    f"{r['load_average_after']:.2f})")
                rec.row(kind="run", **r)
                runs.append(r)
    return runs


def summarise(runs: list[dict], model: str, engine: str, precision: str) -> dict:
    """A configuration over its rounds: median images/s, min and max, the median run's figures, the cold build."""
    mine = [r for r in runs if (r["model"], r["engine"], r["precision"]) == (model, engine, precision)]
    ok = sorted((r for r in mine if r["images_per_sec"] is not None), key=lambda r: r["images_per_sec"])
    out = {"model": model, "engine": engine, "precision": precision, "rounds": len(ok),
           "load_average": statistics.mean(r["load_average_before"] for r in mine)}
    if not ok:
        return {**out, "images_per_sec": None, "error": mine[-1]["error"]}
    median = ok[(len(ok) - 1) // 2]  # the lower median: a run that happened, with its own step figures
    return {**out, "images_per_sec": statistics.median(r["images_per_sec"] for r in ok), "min": ok[0]["images_per_sec"],
            "max": ok[-1]["images_per_sec"], "stderr": median["images_per_sec_stderr"],
            "p90_ms": median["latency_ms_p90"], "guard_ok": all(r["guard_ok"] for r in ok),
            "guard_relative_error": max(r["guard_relative_error"] for r in ok),
            "guard_top1_agreement": min(r["guard_top1_agreement"] for r in ok),
            "build_seconds": mine[0].get("engine_build_seconds"), "failed_rounds": len(mine) - len(ok)}


def report(args, rec: Recorder, runs: list[dict]) -> None:
    rows = [summarise(runs, model, engine, precision) for model in args.models.split(",") for engine, precision in CONFIGS]
    speed = {(r["model"], r["engine"], r["precision"]): r["images_per_sec"] for r in rows}
    size = f"{args.image_size} px" if args.image_size else "224 px"
    table = Table(title=f"OpenVINO against ONNX Runtime, CPU, batch {args.batch_size}, {size}, {args.repeats} rounds of about "
                        f"{args.seconds:g} s of steady steps (random weights, synthetic input)")
    for col in ("model", "engine", "precision", "img/s (median)", "min..max", "+/- (median run)", "p90 ms", "x ort fp32",
                "guard", "max rel. err", "min top-1 %", "build s (cold)", "load avg"):
        table.add_column(col)
    for r in rows:
        if r["images_per_sec"] is None:
            table.add_row(r["model"], r["engine"], r["precision"], "-", "-", "-", "-", "-", f"not run: {r['error']}", "-",
                          "-", "-", f"{r['load_average']:.1f}")
            rec.row(kind="summary", **r)
            continue
        base = speed[r["model"], "onnxruntime", "fp32"]
        ratio = r["images_per_sec"] / base if base else None
        table.add_row(r["model"], r["engine"], r["precision"], f"{r['images_per_sec']:.1f}", f"{r['min']:.1f}..{r['max']:.1f}",
                      f"{r['stderr']:.1f}", f"{r['p90_ms']:.0f}", f"{ratio:.2f}" if ratio else "-",
                      "ok" if r["guard_ok"] else "FAILED", f"{r['guard_relative_error']:.1e}",
                      f"{r['guard_top1_agreement']:.1f}", f"{r['build_seconds']:.1f}", f"{r['load_average']:.1f}")
        rec.row(kind="summary", x_onnxruntime_fp32=ratio, **r)
    rec.table(table)
    for model in args.models.split(","):
        ov, ort = speed[model, "openvino", "int8"], speed[model, "onnxruntime", "int8"]
        if ov and ort:
            rec.say(f"{model}: OpenVINO int8 at {ov / ort:.2f}x ONNX Runtime int8 (medians)")
            rec.row(kind="ratio", model=model, what="openvino int8 / onnxruntime int8", value=ov / ort)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registered names or spec files")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's (224 px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="steady-state seconds of each run (at least 3 steps)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="rounds over every configuration (median reported)")
    p.add_argument("--guard-batches", type=int, default=2)
    p.add_argument("--calib-batches", type=int, default=10, help="int8 calibration batches, the same for both engines")
    add_save_option(p)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rec.say(f"CPU cores usable: {len(os.sched_getaffinity(0))}; other processes on this machine share them (load average "
            f"before and after each run)")
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(args, Path(tmp), rec)
    report(args, rec, runs)
    rec.save()


if __name__ == "__main__":
    main()
