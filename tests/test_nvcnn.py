"""nvcnn.py: the original's command lines, mapped onto cnnbench."""

import importlib.util
import sys

import pytest

from helpers import REPO, read_jsonl, run_process

spec = importlib.util.spec_from_file_location("nvcnn", REPO / "nvcnn.py")
nvcnn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nvcnn)


def test_training_command_line():
    argv, note = nvcnn.translate(["--model=resnet50", "--batch_size=32", "--num_gpus=1", "--num_batches=500",
                                  "--display_every=100", "--log_dir=./log_resnet50_32"], "cpu", [])
    assert argv == ["train", "resnet50", "--batch-size", "32", "--num-batches", "500", "--display-every", "100",
                    "--log-dir", "./log_resnet50_32"]
    assert note is None


def test_several_gpus_map_to_num_accelerators():
    argv, _ = nvcnn.translate(["--model=googlenet", "--num_gpus=4"], "cuda", [])
    assert argv[-2:] == ["--num-accelerators", "4"]


def test_eval_with_data_and_epochs():
    argv, _ = nvcnn.translate(["--model=resnet50", "--eval", "--data_dir=/data/imagenet", "--num_epochs=1"], "cuda", [])
    assert argv[0] == "infer" and argv[-4:] == ["--data-dir", "/data/imagenet", "--num-epochs", "1"]
    assert "--engine" not in argv  # no --use_trt: the native engine


@pytest.mark.parametrize("device, providers, engine, why", [
    ("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "tensorrt", "TensorRT is installed"),
    ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "onnxruntime", "TensorRT is not installed"),
    ("cuda", ["CPUExecutionProvider"], "compile", "TensorRT is not installed; torch.compile"),
    ("cpu", ["CPUExecutionProvider"], "onnxruntime", "TensorRT is not available on the CPU"),
])
def test_use_trt_picks_tensorrt_or_the_fastest_engine_and_says_why(device, providers, engine, why):
    argv, note = nvcnn.translate(["--model=resnet50", "--eval", "--use_trt", "--trt_precision=int8", "--calib_num_batches=5",
                                  "--cache", "--log_dir=ck"], device, providers)
    assert argv[argv.index("--engine") + 1] == engine
    assert argv[argv.index("--precision") + 1] == "int8" and argv[argv.index("--calib-batches") + 1] == "5"
    assert argv[argv.index("--cache-path") + 1] == ".cnnbench_cache"
    assert note.startswith(f"--use_trt: running engine {engine} (") and why in note


def test_unknown_flag_is_an_error():
    done = run_process([sys.executable, str(REPO / "nvcnn.py"), "--model=resnet50", "--variable_update=replicated"])
    assert done.returncode == 2 and "unrecognized arguments: --variable_update=replicated" in done.stderr


def test_train_then_eval_end_to_end(tmp_path, tiny_spec, monkeypatch, capsys):
    common = [f"--model={tiny_spec}", "--batch_size=4", "--num_batches=2", "--display_every=1", "--log_dir=ck"]
    done = run_process([sys.executable, str(REPO / "nvcnn.py"), *common], cwd=tmp_path)
    assert done.returncode == 0 and "Images/sec:" in done.stdout, done.stderr
    assert (tmp_path / "ck" / "checkpoint.pt").exists()
    # The evaluation through nvcnn.main in this process (the script as a process is the training above and
    # test_unknown_flag_is_an_error): the same translation and cnnbench run, one process start-up fewer.
    monkeypatch.setattr(sys, "argv", ["nvcnn.py", *common, "--eval", "--use_trt"])
    assert nvcnn.main() == 0, capsys.readouterr().err
    assert "nvcnn.py: --use_trt: running engine onnxruntime" in capsys.readouterr().out
    record = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")[-1]
    assert record["engine"] == "onnxruntime" and record["weights_source"] == "checkpoint"
