"""PyTorch against TensorFlow on this machine: every model, training and inference, at fp32 and at bf16, in one run
(issues 15 and 26).

    .venv/bin/python benchmarks/frameworks.py                      # the five models, this CPU
    .venv/bin/python benchmarks/frameworks.py --models resnet50 --seconds 4 --image-size 64   # a smoke run
    flock /tmp/cnnbench-bench.lock .venv/bin/python benchmarks/frameworks.py --models resnet50 --kinds infer \
        --precisions fp32,bf16 --seconds 5                     # the reduced run in docs/tensorflow.md

Each configuration is its own `cnnbench train|infer` process (random weights, synthetic input, the same
seed), so each framework starts as a user's run does; the figure is cnnbench's own: mean images/s over
the steady steps (after --warmup steps, which hold TensorFlow's tracing and XLA's compilation), with
its spread. The configurations:
  train   pytorch eager fp32 and bf16 (autocast); tensorflow eager (a tf.function) fp32 and bf16
          (Keras mixed_bfloat16), XLA (--compile) fp32
  infer   pytorch eager fp32 and bf16, compile fp32 and bf16, its CPU's fastest fp32/int8 engine (onnxruntime
          fp32 and int8) and OpenVINO bf16 (refused, a row saying so, on a CPU without native bf16); tensorflow eager fp32 and bf16, compile (XLA) fp32 and bf16, tflite int8 (full-integer
          post-training quantisation)
Ratios, per precision: each TensorFlow configuration over PyTorch eager at the same precision (fp32 over
eager fp32, bf16 over eager bf16; tflite int8 over onnxruntime int8); a second table gives, per model and
precision, the best of each framework and their ratio. Every bf16 inference row carries its fp32 guard's
verdict (against the framework's own fp32 model). int8 engines are calibrated on synthetic images: speed
only. The machine's cores may be shared: `uptime` is printed before and after, and the 1-minute load
average before each run is saved with it. Output saved under benchmarks/results/ (record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.table import Table

from record import Recorder, add_save_option

MODELS = ("googlenet", "resnet50", "resnet152", "densenet121", "synNet")
# (kind, framework, engine, precision); train rows use the engine column for --compile.
CONFIGS = (
    ("train", "pytorch", "eager", "fp32"),
    ("train", "tensorflow", "eager", "fp32"),
    ("train", "tensorflow", "compile", "fp32"),
    ("train", "pytorch", "eager", "bf16"),
    ("train", "tensorflow", "eager", "bf16"),
    ("infer", "pytorch", "eager", "fp32"),
    ("infer", "pytorch", "compile", "fp32"),
    ("infer", "pytorch", "onnxruntime", "fp32"),
    ("infer", "pytorch", "onnxruntime", "int8"),
    ("infer", "pytorch", "eager", "bf16"),
    ("infer", "pytorch", "compile", "bf16"),
    ("infer", "pytorch", "openvino", "bf16"),  # the default CPU set's bf16 pair where bf16 is native (issue 26)
    ("infer", "tensorflow", "eager", "fp32"),
    ("infer", "tensorflow", "compile", "fp32"),
    ("infer", "tensorflow", "eager", "bf16"),
    ("infer", "tensorflow", "compile", "bf16"),
    ("infer", "tensorflow", "tflite", "int8"),
)
# What each TensorFlow configuration is compared with: PyTorch eager at the same precision.
BASELINE = {("eager", "fp32"): ("eager", "fp32"), ("compile", "fp32"): ("eager", "fp32"),
            ("eager", "bf16"): ("eager", "bf16"), ("compile", "bf16"): ("eager", "bf16"),
            ("tflite", "int8"): ("onnxruntime", "int8")}


def command(args, tmp: Path, model: str, kind: str, framework: str, engine: str, precision: str) -> list[str]:
    line = [sys.executable, "-m", "cnnbench", kind, model, "--framework", framework, "--precision", precision,
            "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--duration", str(args.seconds),
            "--num-batches", "100000", "--min-steady-steps", "3", "--display-every", "100000",
            "--results-dir", str(tmp / "results"), "--log-dir", str(tmp / f"log-{model}-{kind}-{framework}-{engine}")]
    if args.image_size:
        line += ["--image-size", str(args.image_size)]
    if kind == "train":
        return line + (["--compile"] if engine == "compile" else [])
    return line + ["--engine", engine, "--random-weights", "--guard-batches", "1", "--calib-batches", "2"]


def measure(args, tmp: Path, rec: Recorder) -> list[dict]:
    """Every configuration of every model; a failed one is a row with its error's last line, not the end."""
    rows = []
    for model in args.models.split(","):
        for kind, framework, engine, precision in CONFIGS:
            if kind not in args.kinds.split(",") or precision not in args.precisions.split(","):
                continue
            load = os.getloadavg()[0]
            done = subprocess.run(command(args, tmp, model, kind, framework, engine, precision), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            records = [json.loads(line) for line in (tmp / "results" / "runs.jsonl").read_text().splitlines()] \
                if (tmp / "results" / "runs.jsonl").exists() else []
            row = {"model": model, "kind": kind, "framework": framework, "engine": engine, "precision": precision,
                   "load_average_before": load}
            if done.returncode == 0 and records:
                r = records[-1]
                row.update(images_per_sec=r["images_per_sec"], stderr=r.get("images_per_sec_stderr"), steps=r["steady_steps"],
                           framework_version=r["framework_version"], guard_ok=r.get("guard_ok"),
                           guard_relative_error=r.get("guard_relative_error"))
            else:
                row.update(images_per_sec=None, error=(done.stdout.strip().splitlines() or ["?"])[-1])
            rec.say(f"{model} {kind} {framework} {engine} {precision}: "
                    + (f"{row['images_per_sec']:.2f} img/s" if row["images_per_sec"] else f"FAILED: {row['error']}"))
            rec.row(kind="run", **{("run_kind" if k == "kind" else k): v for k, v in row.items()})
            rows.append(row)
    return rows


def ratio(rows: list[dict], row: dict) -> float | None:
    if row["framework"] != "tensorflow" or (row["engine"], row["precision"]) not in BASELINE:
        return None
    engine, precision = BASELINE[row["engine"], row["precision"]] if row["kind"] == "infer" else ("eager", row["precision"])
    base = next((r for r in rows if (r["model"], r["kind"], r["framework"], r["engine"], r["precision"])
                 == (row["model"], row["kind"], "pytorch", engine, precision)), None)
    if not base or not base["images_per_sec"] or not row["images_per_sec"]:
        return None
    return row["images_per_sec"] / base["images_per_sec"]


def table(rec: Recorder, args, rows: list[dict]) -> None:
    t = Table(title=f"PyTorch and TensorFlow, batch {args.batch_size}, {args.image_size or 'each model’s own'} px, "
                    f"synthetic input, this CPU")
    for column in ("model", "kind", "framework", "engine", "precision", "img/s", "stderr", "TF / PyTorch", "vs", "guard"):
        t.add_column(column)
    for row in rows:
        r = ratio(rows, row)
        vs = "" if r is None else (f"eager {row['precision']}" if row["kind"] == "train" else " ".join(BASELINE[row["engine"], row["precision"]]))
        guard = "" if row.get("guard_ok") is None else ("ok" if row["guard_ok"] else "FAILED") + f" ({row['guard_relative_error']:.1e})"
        t.add_row(row["model"], row["kind"], row["framework"], "XLA" if row["kind"] == "train" and row["engine"] == "compile"
                  else row["engine"], row["precision"],
                  "-" if row["images_per_sec"] is None else f"{row['images_per_sec']:.2f}",
                  "-" if row.get("stderr") is None else f"{row['stderr']:.2f}", "" if r is None else f"{r:.2f}x", vs, guard)
        if r is not None:
            rec.row(kind="ratio", model=row["model"], run_kind=row["kind"], engine=row["engine"], precision=row["precision"],
                    ratio=r, against=vs)
    rec.table(t)


def best_per_precision(rec: Recorder, rows: list[dict]) -> None:
    """Per model, kind and precision: each framework's fastest configuration (its guard passed, where it has
    one) and TensorFlow's over PyTorch's."""
    t = Table(title="The best of each framework per precision (TF / PyTorch)")
    for column in ("model", "kind", "precision", "PyTorch best", "img/s", "TensorFlow best", "img/s", "TF / PyTorch"):
        t.add_column(column)
    keys = dict.fromkeys((r["model"], r["kind"], r["precision"]) for r in rows)
    for model, kind, precision in keys:
        best = {}
        for framework in ("pytorch", "tensorflow"):
            ran = [r for r in rows if (r["model"], r["kind"], r["precision"], r["framework"]) == (model, kind, precision, framework)
                   and r["images_per_sec"] and r.get("guard_ok") is not False]
            best[framework] = max(ran, key=lambda r: r["images_per_sec"], default=None)
        pt, tf = best["pytorch"], best["tensorflow"]
        r = tf["images_per_sec"] / pt["images_per_sec"] if pt and tf else None
        t.add_row(model, kind, precision, pt["engine"] if pt else "-", f"{pt['images_per_sec']:.2f}" if pt else "-",
                  tf["engine"] if tf else "-", f"{tf['images_per_sec']:.2f}" if tf else "-", "-" if r is None else f"{r:.2f}x")
        rec.row(kind="best", model=model, run_kind=kind, precision=precision, pytorch_engine=pt and pt["engine"],
                pytorch_images_per_sec=pt and pt["images_per_sec"], tensorflow_engine=tf and tf["engine"],
                tensorflow_images_per_sec=tf and tf["images_per_sec"], ratio=r)
    rec.table(t)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--kinds", default="train,infer", help="a reduced run: train, infer or both")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="a reduced run: some of fp32, bf16, int8")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=None, help="default: each model's own (224)")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing (tracing, XLA compilation)")
    p.add_argument("--seconds", type=float, default=10.0, help="steady seconds of each configuration (at least 3 steps)")
    add_save_option(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    rec = Recorder(__file__, args.save_to)
    rec.say_load("before")
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp), rec)
    table(rec, args, rows)
    best_per_precision(rec, rows)
    rec.say_load("after")
    rec.save()


if __name__ == "__main__":
    main()
