"""Every user mistake: one line saying what is wrong and what to do, exit code 2, no traceback."""

import pytest

from helpers import cnnbench_process


@pytest.fixture
def malformed_spec(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"input": {"height": 32, "width": 32, "channels": 3}, "groups": [{"name": "g", "layers": [{"type": "conv", "filters": 0, "kernel": [3, 3]}]}]}')
    return path


BAD_INPUTS = [
    (["train", "alexnett"], "unknown model 'alexnett' (did you mean alexnet?); accepted: the registered models (densenet121, googlenet, resnet152, resnet50, synNet)"),
    (["train", "resnet50", "--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
    (["train", "resnet50", "--num-batches", "0"], "--num-batches must be an integer of at least 1, got 0"),
    (["train", "synNet", "--image-size", "32"], "--image-size 32 is too small for synNet: it needs at least 64 px"),
    (["train", "resnet50", "--device", "cuda"], "CUDA is not available on this machine; use --device cpu or --device auto"),
    (["train", "resnet50", "--device", "cpu", "--precision", "tf32"], "--precision tf32 needs a CUDA device"),
    (["train", "resnet50", "--precision", "fp8"], "unknown --precision 'fp8'"),
    (["train", "resnet50", "--batch-size", "many"], "argument --batch-size: invalid int value: 'many'"),
    (["train", "resnet50", "--compile", "--warmup", "0"], "--compile needs --warmup 1 or more"),
    (["train-all", "--models", "resnet50,vgg16x"], "unknown model 'vgg16x' (did you mean vgg16?)"),
    (["train-all", "--batch-sizes", "16,x"], "--batch-sizes: 'x' is not a positive integer"),
    # issue 9: tracebacks that became one line
    (["train", "resnet50", "--batch-size", "99999999999999999999999"], "argument --batch-size: 99999999999999999999999 is out of range"),
    (["infer", "resnet50", "--engine", "compile", "--compile-mode", "bogus"], "argument --compile-mode: invalid choice: 'bogus'"),
    (["infer", "resnet50", "--weights", "w.pt", "--random-weights"], "--weights and --random-weights name different weights"),
    (["train-all", "--models", ""], "--models is empty"),
    (["infer-all", "--models", ",", "--random-weights"], "--models is empty"),
    (["train", "resnet50", "--memory-format", "nchwc"], "argument --memory-format: invalid choice: 'nchwc'"),
    (["train-all", "--time-budget", "0"], "--time-budget must be a positive number of seconds"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


def test_malformed_spec_file(cli, malformed_spec):
    code, _, err = cli("train", malformed_spec)
    assert code == 2 and "g layer 1 (conv): 'filters' must be a positive integer, got 0" in err


REG = "the registered models (densenet121, googlenet, resnet152, resnet50, synNet)"


def test_in_a_real_process_too():
    """The exit code and the single line hold for the installed command, not only in-process."""
    done = cnnbench_process("train", "alexnett")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"cnnbench: error: unknown model 'alexnett' (did you mean alexnet?); accepted: {REG}, ")
