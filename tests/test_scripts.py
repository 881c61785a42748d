"""The original's root scripts: arguments (against a stand-in cnnbench), end to end with tiny settings,
and the set-up steps of a fresh clone (setup.sh's torch check, test.sh's ensure_venv)."""

import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from helpers import REPO, read_jsonl, run_process

QUICK = ["--image-size", "32", "--num-batches", "1", "--warmup", "0"]


def test_train_sh_sweeps_16_32_64_for_one_model(tmp_path, tiny_spec):
    # The tiny spec rather than a registered model: three real runs, a few seconds less each (a registered
    # name reaches `cnnbench train` the same way, the stand-in tests below).
    done = run_process([str(REPO / "train.sh"), tiny_spec, *QUICK[2:], "--image-size", "16"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert [(r["model"], r["batch_size"], r["status"]) for r in records] == [("tinyNet", b, "ok") for b in (16, 32, 64)]
    assert all((tmp_path / f"log_tinyNet_{b}" / "checkpoint.pt").exists() for b in (16, 32, 64))


def test_train_all_sh_runs_the_installed_cnnbench_train_all(tmp_path, tiny_spec):
    # The script's own command line, exactly, is the stand-in test below (test_sweep_scripts_accept_the_double_dash_too);
    # that command line builds the tables end to end in tests/test_results.py (the same `train-all --plan auto
    # --num-accelerators 1`, in-process, sharing the suite's calibration). Here the real cnnbench behind the
    # script takes those options and plans the sweep, stopping at an unknown model before it calibrates or runs.
    done = run_process([str(REPO / "train-all.sh"), "--models", f"{tiny_spec},vgg16x", "--batch-sizes", "2",
                        "--image-size", "16", "--num-batches", "1", "--warmup", "0"], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("cnnbench: error: unknown model 'vgg16x' (did you mean vgg16?); accepted: the registered "
                           "models (densenet121, googlenet, resnet152, resnet50, synNet), any torchvision")
    assert not (tmp_path / "results_train").exists()


def test_run_sh_runs_the_training_sweep_then_the_inference_sweep_with_the_same_options(tmp_path, calls):
    # Each sweep end to end: train-all in tests/test_results.py, infer-all in tests/test_inference.py.
    done = run_process([str(REPO / "run.sh"), "--quick", "--models", "googlenet"], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [["train-all", "--plan", "auto", "--num-accelerators", "1", "--quick", "--models", "googlenet"],
                            ["infer-all", "--plan", "auto", "--quick", "--models", "googlenet"],
                            ["report", "--out", "report.html"]]


def test_train_sh_passes_num_accelerators_to_each_run(tmp_path, calls):
    # A job of N processes end to end: tests/test_distributed.py (the sweep over accelerator counts, the
    # 2-rank job that trains like one process of twice the batch). Trailing options come last, so they win.
    done = run_process([str(REPO / "train.sh"), "googlenet", "--batch-size", "2"], env={**calls.env, "NUM_ACCELERATORS": "2"},
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [["train", "googlenet", "--batch-size", batch, "--num-accelerators", "2", "--batch-size", "2"]
                            for batch in ("16", "32", "64")]


@pytest.mark.parametrize("value, message", [
    ("two", "NUM_ACCELERATORS must be a positive integer, got 'two'"),
    ("0", "NUM_ACCELERATORS must be a positive integer, got '0'"),
    ("-1", "NUM_ACCELERATORS must be a positive integer, got '-1'"),
])
def test_num_accelerators_is_checked(tmp_path, value, message):
    done = run_process([str(REPO / "train.sh"), "googlenet", *QUICK], env={"NUM_ACCELERATORS": value}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == message
    assert not (tmp_path / "results_train").exists()


# NUM_ACCELERATORS=2 ./train.sh end to end: tests/test_distributed.py (it launches two gloo processes).


# --- arguments, against a stand-in cnnbench (CNNBENCH) that only records how it was called ---------------

SEPARATOR = "\x1f"  # between one call's arguments in the stand-in's log: no argument holds it


@pytest.fixture
def calls(tmp_path):
    """Environment for a script that runs a stand-in cnnbench; calls.read() -> each call's arguments."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "cnnbench-stub"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s{SEPARATOR}" "$@" >> "{log}"\nprintf "\\n" >> "{log}"\n')
    stub.chmod(0o755)

    class Calls:
        env = {"CNNBENCH": str(stub), "NUM_ACCELERATORS": "1"}

        @staticmethod
        def read():
            lines = log.read_text().splitlines() if log.exists() else []
            return [line.rstrip(SEPARATOR).split(SEPARATOR) for line in lines]

    return Calls


@pytest.mark.parametrize("args, expected", [
    # issue 9: long options after the script's own used to fail with "illegal option -- -"
    (["my-spec.json", "-b", "2", "--device", "cpu"], [["infer", "my-spec.json", "--batch-size", "2", "--device", "cpu"]]),
    # after --, the original's way; a spec path keeps its hyphens
    (["specs/tiny-net.json", "-b", "2", "--", "--device", "cpu"],
     [["infer", "specs/tiny-net.json", "--batch-size", "2", "--device", "cpu"]]),
    (["-m", "resnet50-googlenet;specs/a-b.json", "-b", "16:32", "--", "--random-weights"],
     [["infer", m, "--batch-size", b, "--random-weights"]
      for m in ("resnet50", "googlenet", "specs/a-b.json") for b in ("16", "32")]),
    (["-mdensenet121", "-b16"], [["infer", "densenet121", "--batch-size", "16"]]),
])
def test_infer_sh_passes_cnnbench_options_through_and_keeps_spec_paths_whole(tmp_path, calls, args, expected):
    done = run_process([str(REPO / "infer.sh"), *args], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == expected


@pytest.mark.parametrize("args, reason", [
    (["-x"], "infer.sh: unknown option -x (options of cnnbench infer go after --)"),
    (["-b"], "infer.sh: option -b needs a value"),
    (["resnet50", "googlenet"], "infer.sh: unexpected argument 'googlenet' (several models: -m 'a,b')"),
])
def test_infer_sh_usage_errors_exit_2_before_running_anything(tmp_path, calls, args, reason):
    done = run_process([str(REPO / "infer.sh"), *args], env=calls.env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == reason and "Usage:" in done.stderr
    assert calls.read() == []


@pytest.mark.parametrize("script, usage", [
    ("infer.sh", "[MODEL] [-m models] [-b batch_sizes] [-- cnnbench infer options]"),
    ("train.sh", "MODEL [-- cnnbench train options]"),
])
def test_help_says_where_cnnbench_options_go(tmp_path, calls, script, usage):
    done = run_process([str(REPO / script), "--help"], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == f"Usage: {REPO / script} {usage}"
    assert calls.read() == []


@pytest.mark.parametrize("args", [["specs/tiny-net.json", "--", "--device", "cpu"], ["specs/tiny-net.json", "--device", "cpu"]])
def test_train_sh_passes_options_with_or_without_double_dash(tmp_path, calls, args):
    done = run_process([str(REPO / "train.sh"), *args], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [["train", "specs/tiny-net.json", "--batch-size", b, "--num-accelerators", "1", "--device", "cpu"]
                            for b in ("16", "32", "64")]


@pytest.mark.parametrize("args", [[], ["--device", "cpu"]])
def test_train_sh_without_a_model_is_a_usage_error(tmp_path, calls, args):
    done = run_process([str(REPO / "train.sh"), *args], env=calls.env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("train.sh: the first argument must be the model\nUsage:")
    assert calls.read() == []


@pytest.mark.parametrize("script, command", [("train-all.sh", ["train-all", "--plan", "auto", "--num-accelerators", "1"]),
                                             ("infer-all.sh", ["infer-all", "--plan", "auto"])])
def test_sweep_scripts_accept_the_double_dash_too(tmp_path, calls, script, command):
    done = run_process([str(REPO / script), "--", "--models", "googlenet"], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [[*command, "--models", "googlenet"]]


def test_infer_sh_runs_a_spec_file_whose_path_has_a_hyphen(tmp_path, tiny_spec):
    spec = tmp_path / "my-specs" / "tiny-net.json"
    spec.parent.mkdir()
    shutil.copy(tiny_spec, spec)
    done = run_process([str(REPO / "infer.sh"), str(spec), "-b", "2", "--", "--device", "cpu", "--random-weights",
                        "--num-batches", "1", "--warmup", "0"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
    assert [(r["batch_size"], r["status"]) for r in records] == [(2, "ok")]


# --- a fresh clone's set-up ---------------------------------------------------------------------------------

def _venv_python_wrapper(root):
    """root/.venv/bin/python running the repository's venv: torch is there, but no pip to install with."""
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)


@pytest.mark.parametrize("bounds, accepted", [(None, True), ("torch<2.4", False), ("torch~=2.4", True), ("torch~=2.4.0", False)])
def test_setup_keeps_torch_only_within_pyproject_bounds(tmp_path, bounds, accepted):
    shutil.copy(REPO / "setup.sh", tmp_path / "setup.sh")
    pyproject = (REPO / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject if bounds is None else pyproject.replace('"torch>=', f'"{bounds}", "unused>='))
    _venv_python_wrapper(tmp_path)
    done = run_process([str(tmp_path / "setup.sh"), "--check-torch"], cwd=tmp_path)
    version = metadata.version("torch")
    if accepted:
        assert done.returncode == 0 and done.stdout.startswith(f"setup: keeping torch {version} (torch")
    else:
        assert done.returncode == 1
        assert done.stdout.startswith(f"setup: torch {version} is outside pyproject.toml's {bounds}: ./setup.sh would install torch==")


def _fake_distribution(site: Path, name: str, version: str) -> None:
    """An installed distribution's metadata and nothing else: what importlib.metadata reads for its version."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize("torch_version, vision_version, accepted", [
    ("2.11.0a0+a6d0f0ba.nv26.10", "0.26.0a0+4b1d2c3", True),  # NVIDIA's container builds: pre-releases, kept
    ("2.14.2", "0.29.2", True),                               # a patch release of the tested one
    ("2.15.0", "0.30.0", False),                              # the next minor: outside the bounds
    ("2.15.0a0+git1234", "0.30.0a0", False),                  # a pre-release of the next minor is not below it
])
def test_setup_checks_versions_with_packaging_and_keeps_prereleases(tmp_path, torch_version, vision_version, accepted):
    shutil.copy(REPO / "setup.sh", tmp_path / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    site = tmp_path / "site"
    _fake_distribution(site, "torch", torch_version)
    _fake_distribution(site, "torchvision", vision_version)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/usr/bin/env bash\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    done = run_process([str(tmp_path / "setup.sh"), "--check-torch"], cwd=tmp_path)
    assert done.returncode == (0 if accepted else 1), done.stdout + done.stderr
    if accepted:
        assert done.stdout.startswith(f"setup: keeping torch {torch_version} (torch>=")
    else:
        assert f"torch {torch_version} is outside pyproject.toml's torch>=" in done.stdout


def _python_with_torch(root):
    """A virtual environment without pip whose python imports this suite's torch (as a GPU machine's
    python3, itself a virtual environment, holds its own CUDA torch)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrow.pth").write_text(f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    return root / "bin" / "python"


@pytest.mark.slow
def test_setup_reuses_the_torch_of_a_python_that_has_one_without_network(tmp_path):
    python = _python_with_torch(tmp_path / "gpu-python")
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.sh", clone / "setup.sh")
    # a requirement nothing can install offline: named, and the set-up still completes
    pyproject = (REPO / "pyproject.toml").read_text().replace('"numpy",', '"numpy", "cnnbench-absent-requirement",')
    (clone / "pyproject.toml").write_text(pyproject)
    done = run_process([str(clone / "setup.sh")], env={"PYTHON": str(python), "PIP_NO_INDEX": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"uses {python}'s own packages: keeping torch {metadata.version('torch')}" in done.stdout
    assert "installing torch==" not in done.stdout  # nothing downloaded, nothing reinstalled
    assert "setup: could not install cnnbench-absent-requirement" in done.stdout
    assert f"setup: cnnbench uses torch {metadata.version('torch')}" in done.stdout
    models = run_process([str(clone / ".venv" / "bin" / "cnnbench"), "models"], cwd=tmp_path)
    assert models.returncode == 0 and "resnet50" in models.stdout
    where = run_process([str(clone / ".venv" / "bin" / "python"), "-c", "import cnnbench; print(cnnbench.__file__)"])
    assert where.stdout.strip() == str(clone / "src" / "cnnbench" / "__init__.py")  # the clone's code, not another


def test_test_sh_sets_up_a_fresh_clone_once_then_runs_pytest(tmp_path):
    (tmp_path / "scripts").mkdir()
    for name in ("test.sh", "scripts/common.sh"):
        shutil.copy(REPO / name, tmp_path / name)
    # a stand-in setup.sh: makes a .venv whose python imports cnnbench and pytest, and whose pytest echoes
    (tmp_path / "setup.sh").write_text(
        "#!/usr/bin/env bash\nset -e\ncd \"$(dirname \"$0\")\"\necho 'stand-in setup'\n"
        f"mkdir -p .venv/bin\nprintf '#!/usr/bin/env bash\\nexec {sys.executable} \"$@\"\\n' > .venv/bin/python\n"
        "printf '#!/usr/bin/env bash\\necho pytest \"$@\"\\n' > .venv/bin/pytest\nchmod +x .venv/bin/python .venv/bin/pytest\n")
    (tmp_path / "setup.sh").chmod(0o755)
    first = run_process([str(tmp_path / "test.sh"), "-k", "median"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["test.sh: .venv cannot import cnnbench, pytest, xdist, jsonschema, scipy, mlperf_loadgen, onnxruntime, "
                                         "openvino, timm, tensorflow yet; "
                                         "running ./setup.sh --test first",
                                         "stand-in setup", "pytest -q -n 2 --dist loadscope -m not gpu and not timing -k median",
                                         "pytest -q -m timing -k median"]  # two workers, then the timing tests alone
    again = run_process([str(tmp_path / "test.sh")], cwd=tmp_path)
    assert again.stdout.splitlines() == ["pytest -q -n 2 --dist loadscope -m not gpu and not timing", "pytest -q -m timing"]
    gpu = run_process([str(tmp_path / "test.sh"), "-m", "gpu"], cwd=tmp_path)  # one process: it reads the whole device
    assert gpu.stdout.splitlines() == ["pytest -q -m gpu"]


def test_ensure_chromium_says_loudly_when_it_cannot_install(tmp_path):
    # Not root and chromium not on PATH: no install is tried, one warning line says the browser test will skip.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("basename", "tail"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    done = run_process(["/bin/bash", "-c", f"source {REPO / 'scripts' / 'common.sh'}; ensure_chromium; echo next"],
                       env={"PATH": str(bin_dir)})
    assert done.returncode == 0 and done.stdout.splitlines() == ["next"]
    assert "WARNING: chromium is not installed and could not be" in done.stderr and "SKIPPED" in done.stderr


def test_ci_runs_the_readme_s_test_command():
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "exec ./test.sh"


@pytest.mark.parametrize("script, options", [
    ("infer-all-synthetic-input.sh", ["--engines", "eager", "--precisions", "fp32"]),
    ("infer-all-trt-synthetic-input-fp32.sh", ["--engines", "optimized", "--precisions", "fp32"]),
    ("infer-all-trt-synthetic-input-fp16.sh", ["--engines", "optimized", "--precisions", "fp16"]),
    ("infer-all-trt-synthetic-input-int8.sh", ["--engines", "optimized", "--precisions", "int8"]),
])
def test_the_original_synthetic_input_scripts(tmp_path, calls, script, options):
    done = run_process([str(REPO / script), "--", "--models", "googlenet"], env=calls.env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [["infer-all", "--plan", "auto", *options, "--models", "googlenet"]]


@pytest.mark.parametrize("script, options", [
    ("infer-all-accuracy.sh", ["--engines", "eager", "--precisions", "fp32"]),
    ("infer-all-trt-accuracy.sh", ["--engines", "optimized", "--precisions", "fp32,fp16,int8"]),
])
def test_the_original_accuracy_scripts_read_data_dir(tmp_path, calls, script, options):
    done = run_process([str(REPO / script)], env={**calls.env, "DATA_DIR": ""}, cwd=tmp_path)
    assert done.returncode == 2 and calls.read() == []
    assert done.stderr.strip().splitlines() == [f"{script}: DATA_DIR is not set; point it at ImageNet TFRecord shards or "
                                                f"image folders, e.g. DATA_DIR=/data/imagenet {REPO / script}"]
    done = run_process([str(REPO / script), "--models", "resnet50"], env={**calls.env, "DATA_DIR": "/data/imagenet"},
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls.read() == [["infer-all", "--plan", "auto", *options, "--data-dir", "/data/imagenet", "--num-epochs", "1",
                             "--models", "resnet50"]]


def test_engines_optimized_is_the_engine_use_trt_chooses_and_says_which(capsys):
    import torch

    from cnnbench.recipes import sweep
    from cnnbench.core.config import InferSweepConfig

    pairs = sweep.engine_pairs(InferSweepConfig(engines="optimized,eager", precisions="fp32,fp16,int8"), torch.device("cpu"))
    assert pairs == [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("eager", "fp32"), ("eager", "fp16")]
    assert "--engines optimized: running engine onnxruntime (TensorRT is not available on the CPU" in capsys.readouterr().out
