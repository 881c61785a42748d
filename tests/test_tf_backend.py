"""--framework tensorflow end to end (issue 15): training, TensorFlow's checkpoints, its inference engines
checked against TensorFlow fp32, data parallelism, sweeps with one pair of tables per framework, scripts
and bad input. Runs in this process where it can (TensorFlow is imported once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, cnnbench_process, read_jsonl, run_process

from cnnbench.backends.tensorflow import runtime

TF = ("--framework", "tensorflow")
SHORT = ("--batch-size", "4", "--warmup", "1", "--num-batches", "3", "--display-every", "1")


@pytest.fixture(autouse=True)
def _float32_policy():
    """The Keras policy is process-wide: a run that failed half-way must not hand bf16 to the next test."""
    yield
    runtime.reset()


def test_training_lowers_the_loss_saves_a_checkpoint_and_resumes(cli, tiny_spec):
    # A fixed synthetic batch: 12 steps of SGD fit it, so the loss falls whatever the random start.
    code, out, err = cli("train", tiny_spec, *TF, "--batch-size", "8", "--warmup", "2", "--num-batches", "10",
                         "--learning-rate", "0.05")
    assert code == 0, err
    first = read_jsonl("results_train/runs.jsonl")[-1]
    import tensorflow as tf

    assert (first["framework"], first["framework_version"]) == ("tensorflow", tf.__version__)
    assert first["final_loss"] < 0.8 * first["initial_loss"], (first["initial_loss"], first["final_loss"])
    assert first["steady_steps"] == 10 and first["end_step"] == 12 and first["status"] == "ok"
    assert first["checkpoint"].endswith("tensorflow")
    code, out, err = cli("train", tiny_spec, *TF, "--batch-size", "8", "--warmup", "1", "--num-batches", "2", "--resume")
    assert code == 0, err
    second = read_jsonl("results_train/runs.jsonl")[-1]
    assert second["resumed"] and second["start_step"] == 12 and second["end_step"] == 15
    assert "Resuming from checkpoint" in out


@pytest.mark.parametrize("options, precision", [
    (("--precision", "bf16"), "bf16"),
    (("--precision", "fp16"), "fp16"),   # Keras' LossScaleOptimizer, as PyTorch's GradScaler
    (("--compile",), "fp32"),            # XLA: jit_compile=True, its compilation in the warm-up step
])
def test_reduced_precision_and_xla_training_steps_train(cli, tiny_spec, options, precision):
    code, out, err = cli("train", tiny_spec, *TF, "--batch-size", "8", "--warmup", "1", "--num-batches", "6",
                         "--learning-rate", "0.05", *options)
    assert code == 0, err
    r = read_jsonl("results_train/runs.jsonl")[-1]
    assert r["precision"] == precision and r["status"] == "ok"
    assert r["final_loss"] < r["initial_loss"], (r["initial_loss"], r["final_loss"])
    if "--compile" in options:
        assert r["compile"] is True and r["compile_seconds"] == r["warmup_seconds"][0] > 0


def test_inference_starts_from_the_training_checkpoint_with_its_weights(tiny_spec, tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from cnnbench.core.config import InferConfig
    from cnnbench.models.registry import resolve_entry
    from cnnbench.backends.tensorflow import models
    from cnnbench.backends.tensorflow.training import save_checkpoint
    from cnnbench.recipes import inference

    def load_model(cfg):  # as inference.run loads it: the weights the backend picks, the seed set first
        r = inference.preflight(cfg)
        weights = r.backend.inference_weights(cfg, r.entry, r.log_dir)
        r.backend.seed(cfg.seed)
        return inference.load_model(r, weights)

    entry = resolve_entry(str(tiny_spec))
    keras.utils.set_random_seed(7)
    trained = models.build(entry, 16)
    save_checkpoint(tmp_path / "log", tf.train.Checkpoint(model=trained), entry.name, 5)
    cfg = InferConfig(model=str(tiny_spec), framework="tensorflow", log_dir=str(tmp_path / "log"))
    loaded, digest = load_model(cfg)
    for a, b in zip(trained.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = InferConfig(model=str(tiny_spec), framework="tensorflow", random_weights=True, log_dir=str(tmp_path / "none"),
                        seed=1)
    fresh, fresh_digest = load_model(other)
    assert fresh_digest != digest


@pytest.mark.parametrize("engine, precision, low, high", [
    ("compile", "fp32", 0.0, 1e-4),   # XLA: summation order only
    ("tflite", "fp32", 0.0, 1e-4),
    ("eager", "bf16", 1e-4, 5e-2),    # a Keras mixed_bfloat16 copy of the fp32 weights: really reduced
    ("compile", "bf16", 1e-4, 5e-2),  # the same under XLA (issue 26: TensorFlow at bf16 on CPUs)
    ("tflite", "int8", 1e-3, 0.15),   # full-integer int8: really quantised, within the guard's int8 bound
])
def test_each_engine_is_guarded_against_tensorflow_fp32(cli, tiny_spec, engine, precision, low, high):
    code, out, err = cli("infer", tiny_spec, *TF, "--engine", engine, "--precision", precision, "--random-weights",
                         *SHORT, "--guard-batches", "2", "--calib-batches", "2")
    assert code == 0, err
    r = read_jsonl("results_infer/runs.jsonl")[-1]
    assert (r["framework"], r["engine"], r["precision"]) == ("tensorflow", engine, precision)
    assert r["guard_ok"] is True and low <= r["guard_relative_error"] <= high, r["guard_relative_error"]
    assert r["guard_batches"] == 2 and r["steady_steps"] == 3 and r["images_per_sec"] > 0
    assert "TensorFlow fp32" not in err  # within the bound: no warning
    if precision == "int8":
        assert "int8 calibrated on synthetic images" in out + err


def test_bf16_computes_in_bfloat16_with_float32_weights_on_a_cpu(tiny_spec):
    """Training's policy (runtime.configure) and inference's bf16 engine (a mixed copy of the fp32 model):
    Keras' mixed_bfloat16, layers computing in bfloat16 over float32 variables, logits back in float32; the
    process-wide policy is float32 again once the engine is built."""
    import keras
    import numpy as np
    import torch

    from cnnbench.backends.tensorflow import engines, models
    from cnnbench.core.placement import Placement
    from cnnbench.models.registry import resolve_entry

    entry, bf16 = resolve_entry(str(tiny_spec)), Placement(torch.device("cpu"), "bf16", True)
    runtime.configure(bf16)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    trained = models.build(entry, 16)
    convs = [layer for layer in trained.layers if "conv" in type(layer).__name__.lower()]
    assert convs and all(layer.compute_dtype == "bfloat16" and layer.variable_dtype == "float32" for layer in convs)
    runtime.reset()
    fp32 = models.build(entry, 16)
    engine = engines.FunctionEngine(fp32, entry, 16, bf16, xla=False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert engine.model.dtype_policy.name == "mixed_bfloat16" and fp32.dtype_policy.name == "float32"
    images = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    logits = engine(images)
    assert logits.dtype.name == "float32" and np.allclose(logits.numpy(), fp32(images).numpy(), rtol=0.1, atol=0.05)


def test_tflite_artefact_is_cached_and_reused(cli, tiny_spec):
    args = ("infer", tiny_spec, *TF, "--engine", "tflite", "--precision", "int8", "--random-weights", *SHORT,
            "--guard-batches", "1", "--calib-batches", "2", "--cache-path", "cache")
    assert cli(*args)[0] == 0 and cli(*args)[0] == 0
    first, second = read_jsonl("results_infer/runs.jsonl")[-2:]
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert second["guard_relative_error"] == pytest.approx(first["guard_relative_error"], rel=1e-6)
    assert second["guard_relative_error"] is not None


def test_real_data_training_evaluates_and_inference_counts_every_image(cli, tmp_path, tiny_spec):
    assert cli("data", "sample", "digits", "--image-size", "16", "--format", "jpeg")[0] == 0
    validation = sum(1 for p in (tmp_path / "digits").glob("val*/*/*") if p.is_file())
    code, out, err = cli("train", tiny_spec, *TF, "--data-dir", "digits", "--batch-size", "16", "--warmup", "1",
                         "--num-batches", "2", "--eval-at-end", "--image-size", "16")
    assert code == 0, err
    trained = read_jsonl("results_train/runs.jsonl")[-1]
    assert validation > 0 and trained["images_evaluated"] == validation and 0 <= trained["top1"] <= 100
    assert trained["data_wait_share"] is not None and trained["corrupt_images"] == 0
    code, out, err = cli("infer", tiny_spec, *TF, "--data-dir", "digits", "--num-epochs", "1", "--batch-size", "16",
                         "--warmup", "1", "--guard-batches", "0", "--image-size", "16")
    assert code == 0, err
    r = read_jsonl("results_infer/runs.jsonl")[-1]
    # The training's checkpoint, the same images: inference counts exactly what the evaluation counted.
    assert r["weights_source"] == "checkpoint" and r["images_evaluated"] == validation
    assert (r["top1"], r["top5"]) == (trained["top1"], trained["top5"])


def test_mirrored_strategy_trains_the_global_batch_over_two_cpu_replicas(tiny_spec, tmp_path):
    # Its own process: logical CPU devices must be made before TensorFlow starts, which this one did.
    done = cnnbench_process("train", tiny_spec, *TF, "--num-accelerators", "2", *SHORT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    r = read_jsonl(tmp_path / "results_train/runs.jsonl")[-1]
    assert r["num_accelerators"] == 2 and r["framework"] == "tensorflow"
    mean_step = sum(r["steady_seconds"]) / len(r["steady_seconds"])
    assert r["images_per_sec_from_mean_time"] == pytest.approx(8 / mean_step)  # two replicas x batch 4
    assert "MirroredStrategy over 2 cpu devices" in done.stdout


def test_a_sweep_of_both_frameworks_writes_a_pair_of_tables_each(cli, tiny_spec, cpu_calibration):
    code, out, err = cli("infer-all", "--frameworks", "pytorch,tensorflow", "--models", str(tiny_spec), "--batch-sizes", "2",
                         "--engines", "eager", "--precisions", "fp32", "--random-weights", "--plan", "quick")
    assert code == 0, err
    records = read_jsonl("results_infer/runs.jsonl")
    assert sorted(r["framework"] for r in records) == ["pytorch", "tensorflow"]
    tables = open("results_infer/results.csv").read()
    for title in ("System performance", "Approximate accelerator performance"):
        assert f"{title}, unit is images/second (eager fp32)" in tables
        assert f"{title}, unit is images/second (tensorflow eager fp32)" in tables
    assert {p.name for p in Path("results_infer").glob("result_*.txt")} == {
        "result_tinyNet_2.txt", "result_tinyNet_2_tensorflow.txt"}
    assert cli("report", "results_infer", "--out", "report.html")[0] == 0
    html = Path("report.html").read_text()
    assert "tensorflow eager/fp32 accelerator" in html and "eager/fp32 accelerator" in html.replace("tensorflow eager", "")


@pytest.mark.parametrize("args, message", [
    (("infer", "--engine", "onnxruntime"), "--engine onnxruntime runs PyTorch models; with --framework tensorflow use"),
    (("infer", "--engine", "eager", "--precision", "int8"), "TensorFlow's int8 runs in --engine tflite"),
    (("infer", "--engine", "tflite", "--precision", "bf16"), "--engine tflite with --framework tensorflow runs fp32, int8"),
    (("infer", "--compile-mode", "default"), "--compile-mode is torch.compile's"),
    (("infer", "--pretrained"), "--pretrained runs with --framework pytorch only"),
    (("infer",), "no TensorFlow checkpoint in"),
    (("train", "--memory-format", "nchw"), "runs channels-last (NHWC)"),
    (("train", "densenet121", "--image-size", "30"), "--image-size 30 is too small for densenet121 with --framework tensorflow"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tiny_spec, args, message):
    kind, *rest = args
    model = [] if rest and not rest[0].startswith("-") else [str(tiny_spec)]
    code, out, err = cli(kind, *model, *rest, *TF, *(["--random-weights"] if "checkpoint" not in message and kind == "infer" else []))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_tflite_needs_the_tensorflow_framework(cli, tiny_spec):
    code, out, err = cli("infer", tiny_spec, "--engine", "tflite", "--random-weights")
    assert code == 2 and "--engine tflite is TensorFlow's; add --framework tensorflow" in err


def test_without_tensorflow_the_line_says_how_to_install_it(cli, tiny_spec, monkeypatch):
    import importlib.util

    from cnnbench.backends import tensorflow

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    code, out, err = cli("train", tiny_spec, *TF)
    assert code == 2 and err.strip() == f"cnnbench: error: {tensorflow.INSTALL}"


def test_scripts_take_framework_from_the_environment(tmp_path):
    fake = tmp_path / "fake-cnnbench"  # records its arguments: the scripts' calls are what is checked
    fake.write_text("#!/bin/sh\necho \"$@\" >> " + str(tmp_path / "calls") + "\n")
    fake.chmod(0o755)
    bad = run_process([str(REPO / "train.sh"), "resnet50"], env={"FRAMEWORK": "jax", "CNNBENCH": str(fake)}, cwd=tmp_path)
    assert bad.returncode == 2 and "FRAMEWORK must be pytorch, tensorflow or both" in bad.stderr
    done = run_process([str(REPO / "train.sh"), "resnet50"], env={"FRAMEWORK": "pytorch,tensorflow", "CNNBENCH": str(fake)},
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    # PyTorch, the default, adds no option: the original's command lines stay as they were.
    assert ["--framework tensorflow" in c for c in calls] == [False] * 3 + [True] * 3
    done = run_process([str(REPO / "infer-all.sh")], env={"FRAMEWORK": "tensorflow", "CNNBENCH": str(fake)}, cwd=tmp_path)
    assert done.returncode == 0 and "--frameworks tensorflow" in (tmp_path / "calls").read_text().splitlines()[-1]


def test_compare_sets_the_frameworks_side_by_side(cli, tmp_path):
    from cnnbench.core import store

    base = {"kind": "infer", "model": "resnet50", "batch_size": 16, "image_size": 224, "engine": "eager",
            "precision": "fp32", "scenario": "offline", "device": "cpu", "status": "ok", "images_per_sec": 10.0,
            "images_per_sec_stderr": 0.1, "framework": "pytorch", "framework_version": "2.14.1"}
    store.save_record(tmp_path / "pt", base)
    store.save_record(tmp_path / "tf", {**base, "images_per_sec": 13.0, "framework": "tensorflow",
                                          "framework_version": "2.21.0"})
    code, out, err = cli("compare", tmp_path / "pt", tmp_path / "tf")
    assert code == 0, err
    assert "infer resnet50 batch 16 eager/fp32" in out and "faster" in out
    assert "framework" in out and "tensorflow" in out and "pytorch" in out


def test_no_backend_imports_another_backend_or_a_recipe():
    """The seam (issue 21): a framework's package reaches the rest of cnnbench below the recipes only; the
    recipes, written once, call it through backends/base.py. Read from the source, imports inside functions too."""
    import ast

    root = REPO / "src" / "cnnbench" / "backends"
    forbidden = {"pytorch": ("cnnbench.recipes", "cnnbench.tools", "cnnbench.backends.tensorflow"),
                 "tensorflow": ("cnnbench.recipes", "cnnbench.tools", "cnnbench.backends.pytorch")}
    seen = 0
    for package, banned in forbidden.items():
        for path in sorted((root / package).glob("*.py")):
            seen += 1
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    assert not name.startswith(banned), f"{path.relative_to(REPO)} imports {name}"
    assert seen >= 10
    base = (root / "base.py").read_text()
    assert "import torch" not in base and "import tensorflow" not in base
