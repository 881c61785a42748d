"""Shared helpers of the test suite (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Tiny settings shared by end-to-end tests: small images, batch 2, a handful of steps.
TINY = ["--image-size", "64", "--batch-size", "2", "--num-batches", "3", "--warmup", "1", "--display-every", "1"]


def run_process(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def cnnbench_process(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_process([sys.executable, "-m", "cnnbench", *map(str, args)], **kwargs)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
