"""What a new user installs: the extras (onnx or onnx-gpu, never both), the licence metadata, and commands
that need an optional package saying so in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in requirements}


def test_onnxruntime_and_onnxruntime_gpu_are_never_installed_together():
    extras = PROJECT["optional-dependencies"]
    assert "onnxruntime" in _names(extras["onnx"]) and "onnxruntime-gpu" in _names(extras["onnx-gpu"])
    for name, requirements in extras.items():
        assert not {"onnxruntime", "onnxruntime-gpu"} <= _names(requirements), name
    # ./setup.sh picks one of the two, and the test extra names neither
    assert not _names(extras["test"]) & {"onnxruntime", "onnxruntime-gpu"}


def test_torch_bounds_accept_a_patch_release_and_the_licence_is_declared():
    torch = next(r for r in PROJECT["dependencies"] if r.startswith("torch>"))
    assert "<2.15" in torch and "<=" not in torch
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    assert "License :: OSI Approved :: Apache Software License" in PROJECT["classifiers"]
    assert "Apache License" in (REPO / "LICENSE").read_text()


def test_data_sample_without_scikit_learn_is_one_line_naming_the_extra(tmp_path):
    # sys.modules[...] = None makes `import sklearn` fail as if it were not installed
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from cnnbench.cli import main\n"
            f"sys.exit(main(['data', 'sample', {str(tmp_path / 'digits')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "cnnbench: error: cnnbench data sample digits needs scikit-learn, whose bundled digits are the images: "
        "pip install -e '.[sample]' (./setup.sh --test installs it too)"]
    assert not (tmp_path / "digits").exists()
