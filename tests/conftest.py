from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from cnnbench.cli import main  # imports torch, which reads CUDA_VISIBLE_DEVICES only when CUDA initialises


def pytest_configure(config):
    """The suite runs on the CPU whatever the machine has (CI has no GPU; a developer's machine may): every
    GPU is hidden from this process and the cnnbench processes the tests start, before torch initialises
    CUDA. Only the GPU suite (`pytest -m gpu`, tests/test_gpu.py) sees the machine's GPUs."""
    if config.getoption("markexpr").strip() != "gpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Peaks (efficiency.py) come from a cache of the session, not the user's ~/.cache/cnnbench, seeded with
    # stand-in CPU figures: a record's MFU is not what the suite checks (test_efficiency measures peaks and
    # checks the arithmetic), and measuring them costs every session 20 s (fp16's CPU product alone 18 s).
    if "CNNBENCH_CACHE_DIR" not in os.environ:
        global _session_cache
        _session_cache = tempfile.mkdtemp(prefix="cnnbench-test-cache-")
        os.environ["CNNBENCH_CACHE_DIR"] = _session_cache
        import torch

        from cnnbench.core import efficiency

        # for this process's threads and for 1 (the processes of a 2-process run on 2 cores): a peak measured
        # while the suite keeps the machine busy is never cached, and would be measured in every such process.
        threads = torch.get_num_threads()
        for count in dict.fromkeys((threads, 1)):
            torch.set_num_threads(count)
            for precision in ("fp32", "bf16", "fp16", "int8"):
                efficiency.remember(torch.device("cpu"), precision, 0.1, "test suite stand-in (conftest.py), not a measurement")
        torch.set_num_threads(threads)


_session_cache: str | None = None


def pytest_unconfigure(config):
    if _session_cache:
        shutil.rmtree(_session_cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory: default log_* and results_* paths land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def cpu_calibration():
    """The suite's one CPU calibration of the sweeps' time estimate (a ResNet-50 step in a child process:
    seconds), taken with this process refusing to run a ResNet and recording the commands it starts.
    estimate caches it for the process, so every in-process sweep that asks for this fixture reuses it;
    tests/test_sweep.py checks what it recorded. Returns (rates, commands started)."""
    import subprocess

    import torch
    import torchvision

    from cnnbench.recipes import estimate

    def refused(self, x):
        raise AssertionError("ResNet-50 ran in the sweep's own process")

    commands, run = [], subprocess.run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.models.ResNet, "forward", refused)
        patch.setattr(subprocess, "run", lambda command, **kw: commands.append(command) or run(command, **kw))
        estimate._measured_in_child.cache_clear()  # measured here, whatever ran before
        rates = estimate.calibrate(torch.device("cpu"), "train")
    return rates, commands


@pytest.fixture
def cli(capsys):
    """Run `cnnbench ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


TINY_SPEC = {
    "name": "tinyNet",
    "input": {"height": 16, "width": 16, "channels": 3},
    "conv_defaults": {"batch_norm": {"momentum_tf": 0.9, "epsilon": 0.0001}},
    "groups": [
        {"name": "g1", "layers": [{"type": "conv", "filters": 8, "kernel": [3, 3]}, {"type": "maxpool"}]},
        {"name": "g2", "layers": [{"type": "conv", "filters": 8, "kernel": [2, 2]}, {"type": "maxpool"}]},
    ],
    "head": {"fully_connected": {"outputs": 1000}},
    "training": {"learning_rate": 0.05},
}


@pytest.fixture
def tiny_spec(tmp_path):
    """A two-group network of the synNet form: trains and exports in a fraction of a second at 16 px."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_SPEC))
    return path
