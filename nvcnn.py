#!/usr/bin/env python3
"""The original's entry point: nvcnn.py command lines, run through cnnbench.

    python nvcnn.py --model=resnet50 --batch_size=64 --num_gpus=1 --num_batches=500 --display_every=100 --log_dir=./log_resnet50_64
    python nvcnn.py --model=resnet50 --batch_size=64 --log_dir=./log_resnet50_64 --eval --use_trt --trt_precision=int8

Without --eval it trains (`cnnbench train`); with --eval it runs inference (`cnnbench infer`) from the
checkpoint in --log_dir. --use_trt selects TensorRT where it is installed, otherwise the fastest engine
available on the device, and says which ran and why. Unknown flags are an error, as in the original.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
DEFAULT_CACHE = ".cnnbench_cache"


def _ensure_cnnbench() -> None:
    """Run under the repository's .venv when cnnbench is not importable from this interpreter.

    Whether this process already runs in the venv is told by sys.prefix, not by the executable: a venv's
    bin/python is a symlink to the very interpreter that `python3` on PATH may be, so resolved executables
    compare equal outside the venv too (issue 23), while sys.prefix is the venv's folder only inside it
    (https://docs.python.org/3/library/venv.html#how-venvs-work)."""
    try:
        import cnnbench  # noqa: F401
    except ImportError:
        venv = ROOT / ".venv"
        venv_python = venv / "bin" / "python"
        if venv_python.exists() and Path(sys.prefix).resolve() != venv.resolve():
            os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
        sys.exit("nvcnn.py: cnnbench is not installed; run ./setup.sh first")


def usage_error(message: str) -> NoReturn:
    """One line and exit 2, the exit code of every usage error (argparse's, and cnnbench's UsageError)."""
    print(f"nvcnn.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    # The defaults are cnnbench's own, read from its configuration tree (the one place they are written); late:
    # cnnbench is importable only once _ensure_cnnbench has run.
    from cnnbench.core import config

    p = argparse.ArgumentParser(prog="nvcnn.py", description="The AI Matrix original's command line, run by cnnbench.")
    p.add_argument("--model", required=True)
    p.add_argument("--batch_size", type=int, default=config.MeasureConfig.batch_size)
    p.add_argument("--num_gpus", type=int, default=1)
    p.add_argument("--num_batches", type=int, default=config.ORIGINAL_NUM_BATCHES)
    p.add_argument("--display_every", type=int, default=config.MeasureConfig.display_every)
    p.add_argument("--log_dir", default=None)
    p.add_argument("--eval", action="store_true", help="inference from the checkpoint in --log_dir")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_epochs", type=int, default=None)
    p.add_argument("--use_trt", action="store_true")
    p.add_argument("--trt_precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--cache", action="store_true", help=f"keep built engines (in --cache_path, default {DEFAULT_CACHE})")
    p.add_argument("--cache_path", default=None)
    p.add_argument("--calib_num_batches", type=int, default=config.InferConfig.calib_batches)
    p.add_argument("--framework", choices=["pytorch", "tensorflow"], default="pytorch",
                   help="cnnbench's framework (the original was TensorFlow's; pytorch by default)")
    return p


def translate(argv: list[str], device_type: str, providers: list[str]) -> tuple[list[str], str | None]:
    """nvcnn.py arguments -> cnnbench arguments, and a note saying which engine --use_trt chose."""
    a = parser().parse_args(argv)
    if a.num_gpus < 1:
        usage_error(f"--num_gpus {a.num_gpus}: give 1 or more")
    out = ["infer" if a.eval else "train", a.model, "--batch-size", str(a.batch_size),
           "--num-batches", str(a.num_batches), "--display-every", str(a.display_every)]
    if a.log_dir:
        out += ["--log-dir", a.log_dir]
    if a.data_dir:
        out += ["--data-dir", a.data_dir]
    if a.num_epochs:
        out += ["--num-epochs", str(a.num_epochs)]
    if a.framework != "pytorch":
        out += ["--framework", a.framework]
    note = None
    if a.eval:
        if a.num_gpus > 1:
            note = f"--num_gpus {a.num_gpus}: inference runs on one accelerator, as in the original"
        if a.use_trt:
            # the engine table's optimized engine of the device, as `infer-all --engines optimized` picks it;
            # providers: ONNX Runtime's, as this machine offers them
            from cnnbench.engines import table

            engine, why = table.optimized(a.framework, device_type, providers)
            note = f"--use_trt: running engine {engine} ({why})"
            out += ["--engine", engine, "--precision", a.trt_precision, "--calib-batches", str(a.calib_num_batches)]
        elif a.trt_precision != "fp32":
            usage_error("--trt_precision needs --use_trt (as in the original)")
        if a.cache or a.cache_path:
            out += ["--cache-path", a.cache_path or DEFAULT_CACHE]
    else:
        if a.use_trt:
            usage_error("--use_trt applies to inference; add --eval")
        if a.num_gpus > 1:
            out += ["--num-accelerators", str(a.num_gpus)]
    return out, note


def main() -> int:
    _ensure_cnnbench()
    import torch

    from cnnbench.cli import main as cnnbench_main

    from cnnbench.engines import installed_providers

    argv, note = translate(sys.argv[1:], "cuda" if torch.cuda.is_available() else "cpu", installed_providers())
    if note:
        print(f"nvcnn.py: {note}")
    print("nvcnn.py: running cnnbench " + " ".join(argv))
    return cnnbench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
