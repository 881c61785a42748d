"""`cnnbench infer`: every CPU engine x precision checked against eager fp32, caching, weights, accuracy."""

import dataclasses

import numpy as np
import pytest
import torch

from cnnbench.data.evaluation import Accuracy, padded
from cnnbench.recipes.inference import GUARD_BOUNDS
from cnnbench.core.placement import Placement
from helpers import read_jsonl

QUICK = ["--image-size", "16", "--batch-size", "4", "--num-batches", "3", "--warmup", "1", "--display-every", "1"]

# Every engine/precision pair that runs on a CPU (the engine table's precisions), with eager fp32 as the reference.
CPU_PAIRS = [("eager", "fp32"), ("eager", "fp16"), ("eager", "bf16"), ("compile", "fp32"), ("compile", "bf16"),
             ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


@pytest.fixture
def trained(cli, tiny_spec):
    """A checkpoint written by `cnnbench train`, in the default log dir for batch 4."""
    code, _, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "4", "--num-batches", "5", "--warmup", "0")
    assert code == 0, err
    return tiny_spec


def _last():
    return read_jsonl("results_infer/runs.jsonl")[-1]


@pytest.mark.parametrize("engine, precision", CPU_PAIRS, ids=[f"{e}-{p}" for e, p in CPU_PAIRS])
def test_engine_agrees_with_eager_fp32(cli, trained, engine, precision):
    code, out, err = cli("infer", trained, *QUICK, "--engine", engine, "--precision", precision,
                         "--compile-mode", "default", "--calib-batches", "2")
    assert code == 0, err
    r = _last()
    assert (r["engine"], r["precision"], r["status"]) == (engine, precision, "ok")
    assert r["weights_source"] == "checkpoint"  # the checkpoint `cnnbench train` wrote loads
    assert r["steady_steps"] == 3 and r["warmup_steps"] == 1 and r["images_per_sec"] > 0
    assert r["device_memory_used_mib"] is None  # no CUDA device: NVML is not asked
    if (engine, precision) == ("eager", "fp32"):
        assert r["guard_batches"] == 0 and r["guard_relative_error"] is None  # the reference itself
        return
    assert r["guard_batches"] == 4
    assert r["guard_relative_error"] <= GUARD_BOUNDS[precision] and r["guard_ok"] is True
    assert r["guard_top1_agreement"] >= (100.0 if precision == "fp32" else 75.0)
    assert "fp32 guard: top-1 agreement" in out
    for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "system_images_per_sec", "engine_build_seconds", "peak_memory_mib"):
        assert r[key] is not None


def test_int8_is_calibrated_and_smaller(cli, trained):
    code, out, _ = cli("infer", trained, *QUICK, "--engine", "onnxruntime", "--precision", "int8", "--calib-batches", "3")
    assert code == 0
    r = _last()
    assert r["calibration_batches"] == 3
    assert r["int8_onnx_bytes"] < r["fp32_onnx_bytes"] / 2  # int8 weights: about a quarter of fp32's bytes
    assert "int8 calibrated on synthetic images" in out  # no --data-dir: the warning says accuracy is meaningless


def test_second_run_with_the_same_cache_path_is_a_hit(cli, trained, tmp_path):
    args = ["infer", trained, *QUICK, "--engine", "onnxruntime", "--precision", "int8", "--calib-batches", "2", "--cache-path", "cache"]
    assert cli(*args)[0] == 0
    first = _last()
    assert first["cache_hit"] is False and first["engine_build_seconds"] > 0
    code, out, _ = cli(*args)
    second = _last()
    assert second["cache_hit"] is True and second["engine_build_seconds"] == 0.0
    assert "cache hit" in out
    assert second["guard_relative_error"] == pytest.approx(first["guard_relative_error"])
    # a different calibration is a different artefact
    assert cli(*args[:-3], "3", *args[-2:])[0] == 0
    assert _last()["cache_hit"] is False


def test_corrupt_cache_entry_is_rebuilt_and_said(cli, trained, tmp_path):
    args = ["infer", trained, *QUICK, "--engine", "onnxruntime", "--cache-path", "cache"]
    assert cli(*args)[0] == 0
    (onnx_file,) = tmp_path.glob("cache/*/model.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    code, out, _ = cli(*args)
    assert code == 0
    assert f"cache entry {onnx_file.relative_to(tmp_path)} is corrupt (checksum mismatch); rebuilding it" in out
    r = _last()
    assert r["cache_hit"] is False and r["guard_ok"] is True


def test_compile_reports_build_time_apart(cli, trained):
    code, out, _ = cli("infer", trained, *QUICK, "--engine", "compile", "--compile-mode", "default")
    assert code == 0
    r = _last()
    assert r["compile_mode"] == "default" and r["engine_build_seconds"] > 0
    assert f"engine = compile: build {r['engine_build_seconds']:.2f} s" in out
    # That the build holds the compilation (the first compiled call, synchronised) and the warm-up does not
    # is checked in-process, against steady calls, by tests/test_engines.py.


def test_single_stream_is_batch_1_with_hand_checked_percentiles(cli, trained):
    code, out, _ = cli("infer", trained, *QUICK[:2], "--scenario", "single-stream", "--num-batches", "7", "--warmup", "2", "--random-weights")
    assert code == 0
    r = _last()
    assert r["batch_size"] == 1 and r["scenario"] == "single-stream" and r["steady_steps"] == 7
    ms = np.array(r["steady_seconds"]) * 1000
    for p in (50, 90, 99):
        assert r[f"latency_ms_p{p}"] == pytest.approx(np.percentile(ms, p))
    assert r["latency_ms_min"] == pytest.approx(ms.min()) and r["latency_ms_max"] == pytest.approx(ms.max())
    assert f"Single-stream 90th-percentile latency: {r['latency_ms_p90']:.2f} ms" in out


def test_guard_warns_when_an_engine_is_wrong(cli, trained, monkeypatch):
    monkeypatch.setitem(GUARD_BOUNDS, "bf16", 1e-9)
    code, out, _ = cli("infer", trained, *QUICK, "--precision", "bf16")
    assert code == 0
    assert "eager bf16 differs from eager fp32 beyond the bound: its figures should not be trusted" in out
    assert _last()["guard_ok"] is False



@pytest.fixture
def tf32_switches():
    """Set the process-wide TF32 switches: `set(matmul, cudnn)`; restored after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_switches(matmul: bool, cudnn: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    yield set_switches
    set_switches(*saved)


class _FlagRecorder(torch.nn.Module):
    """A linear "network" that notes the TF32 switches each forward pass runs under."""

    def __init__(self, image_size: int):
        super().__init__()
        self.fc = torch.nn.Linear(3 * image_size * image_size, 1000)
        self.seen = []

    def forward(self, x):
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.fc(x.flatten(1))


def test_a_tf32_run_s_guard_references_are_true_fp32(cli, tiny_spec, monkeypatch, tf32_switches):
    """tf32 needs CUDA: the run is given the placement a CUDA tf32 run resolves, on the CPU, and the global
    TF32 switches as apply_global_settings leaves them there (issue 10: the references ran under TF32)."""
    from cnnbench.recipes import inference

    model = _FlagRecorder(16)
    resolve = inference.preflight
    monkeypatch.setattr(inference, "preflight", lambda cfg: dataclasses.replace(
        resolve(cfg), placement=dataclasses.replace(resolve(cfg).placement, precision="tf32")))
    monkeypatch.setattr(inference, "load_model", lambda r, weights: (model.eval(), "digest"))
    tf32_switches(True, True)
    code, out, err = cli("infer", tiny_spec, "--random-weights", *QUICK, "--guard-batches", "2")
    assert code == 0, err
    assert (_last()["precision"], _last()["guard_batches"], _last()["guard_bound"]) == ("tf32", 2, GUARD_BOUNDS["tf32"])
    assert model.seen[:2] == [(False, False)] * 2  # the two references, before the engine runs
    assert len(model.seen) > 2 and set(model.seen[2:]) == {(True, True)}  # the engine itself keeps TF32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)  # restored


@pytest.mark.parametrize("before", [(True, True), (False, True), (True, False)])
def test_true_fp32_restores_the_switches_even_after_an_error(tf32_switches, before):
    tf32_switches(*before)
    with pytest.raises(RuntimeError, match="inside"):
        with Placement.true_fp32():
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
            raise RuntimeError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_the_device_s_memory_in_use_is_recorded_beside_the_allocator_s_peak(cli, tiny_spec, monkeypatch):
    # What NVML says (environment.device_memory_used, checked with a stand-in pynvml in test_environment.py)
    # goes into the record as it is, or None with a line saying why.
    from cnnbench.core import environment

    monkeypatch.setattr(environment, "device_memory_used", lambda device: (2048.0, None))
    code, out, err = cli("infer", tiny_spec, "--random-weights", *QUICK)
    assert code == 0, err
    assert _last()["device_memory_used_mib"] == 2048.0 and _last()["peak_memory_mib"] > 0
    assert "device_memory_used_mib not recorded" not in out
    monkeypatch.setattr(environment, "device_memory_used", lambda device: (None, environment.GPU_EXTRA_HINT))
    code, out, err = cli("infer", tiny_spec, "--random-weights", *QUICK)
    assert code == 0, err
    assert _last()["device_memory_used_mib"] is None
    assert "WARNING: device_memory_used_mib not recorded: nvidia-ml-py is not installed: pip install -e '.[gpu]'" in out

def test_accuracy_counts_exactly_with_a_partial_last_batch():
    # 10 images in batches of 4, 4, 2; class = index % 3; the "model" is right on images 0..6 only.
    labels = torch.arange(10) % 3 + 100
    logits = -torch.arange(1000.0).repeat(10, 1) / 1000  # distinct values: no ties in top-k
    logits[torch.arange(10), labels] = 1.0  # correct ...
    logits[7:, labels[7:]] = -5.0
    logits[7:, 999] = 5.0  # ... except the last three, whose top-1 is class 999 and top-5 999, 0, 1, 2, 3
    logits[7, labels[7]] = 4.0  # image 7's true class is second: a top-5 hit
    batches = [(logits[i:i + 4], labels[i:i + 4]) for i in (0, 4, 8)]
    acc = Accuracy()
    for x, y, n in padded(iter(batches), 4, torch.contiguous_format):
        assert x.shape[0] == 4  # the partial batch is padded to the static batch size
        acc.add(x, y, n)
    top1, top5, total = acc.result()
    assert total == 10  # padding is never counted
    assert top1 == pytest.approx(70.0) and top5 == pytest.approx(80.0)


def test_accuracy_on_real_data_is_the_same_for_folder_and_tfrecord(cli, tmp_path, tiny_spec):
    # JPEG files: the conversion copies their bytes, so both layouts decode to the same pixels.
    assert cli("data", "sample", "digits", "--image-size", "16", "--format", "jpeg")[0] == 0
    assert cli("data", "convert", "digits", "digits_tfr", "--shards", "3")[0] == 0
    code, _, err = cli("train", tiny_spec, "--data-dir", "digits", "--image-size", "16", "--batch-size", "32",
                       "--num-epochs", "2", "--warmup", "1", "--workers", "0", "--min-crop-scale", "0.5", "--flip", "0")
    assert code == 0, err
    for data in ("digits", "digits_tfr"):
        code, out, err = cli("infer", tiny_spec, "--data-dir", data, "--image-size", "16", "--batch-size", "32",
                             "--log-dir", "log_tinyNet_32", "--num-epochs", "1", "--warmup", "1", "--workers", "0")
        assert code == 0, err
    folder, tfrecord = read_jsonl("results_infer/runs.jsonl")
    assert folder["images_evaluated"] == tfrecord["images_evaluated"] == 360  # the whole validation split, 360 = 11 x 32 + 8
    assert folder["top1"] == pytest.approx(tfrecord["top1"]) and folder["top5"] == pytest.approx(tfrecord["top5"])
    assert folder["top1"] > 10  # better than chance on 10 classes after two epochs
    assert 0 <= folder["data_wait_share"] <= 1 and "Input wait:" in out


def test_weights_file_for_another_model_names_the_first_mismatch(cli, tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), tmp_path / "r50_10.pth")
    code, _, err = cli("infer", "resnet50", "--weights", "r50_10.pth", "--image-size", "32", "--batch-size", "2")
    assert code == 2
    assert "tensor 'fc.weight' has shape (10, 2048) in the file but (1000, 2048) in the model" in err
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    code, _, err = cli("infer", "resnet50", "--weights", "r18.pth", "--image-size", "32", "--batch-size", "2")
    assert code == 2 and "does not fit resnet50: tensor" in err


def test_torchvision_published_files_load_as_they_are(cli, tmp_path, monkeypatch):
    """A torchvision-format file in TORCH_HOME is what --pretrained loads offline (GoogLeNet: aux heads dropped)."""
    import torchvision
    from torchvision.models import GoogLeNet_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    filename = GoogLeNet_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    code, _, err = cli("infer", "googlenet", "--pretrained", "--image-size", "32", "--batch-size", "2")
    assert code == 2 and f"offline, put {filename}" in err and "torch_home" in err
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    published = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    torch.save(published, checkpoints / filename)
    code, out, err = cli("infer", "googlenet", "--pretrained", *QUICK[2:], "--image-size", "32")
    assert code == 0, err
    assert _last()["weights_source"] == "pretrained"


def test_oom_in_inference_is_recorded(cli, trained, monkeypatch):
    import cnnbench.engines as engines

    def explode(self, images):
        raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(engines.EagerEngine, "__call__", explode)
    code, _, err = cli("infer", trained, *QUICK)
    assert code == 3 and "out of memory at batch size 4" in err
    assert _last()["status"] == "oom"


BAD = [
    (["infer", "resnet50", "--batch-size", "2"], "no weights for resnet50: no checkpoint in log_resnet50_2; run ./train.sh resnet50 first"),
    (["infer", "resnet50", "--weights", "nothing.pth"], "--weights nothing.pth does not exist"),
    (["infer", "resnet50", "--random-weights", "--engine", "tensorrt"], "--engine tensorrt needs TensorRT and onnxruntime-gpu"),
    (["infer", "resnet50", "--random-weights", "--precision", "int8"], "--engine eager cannot run --precision int8 on cpu; pairs that work: eager: fp32, fp16, bf16;"),
    (["infer", "resnet50", "--random-weights", "--device", "cpu", "--precision", "tf32"], "--precision tf32 needs a CUDA device"),
    (["infer", "resnet50", "--random-weights", "--engine", "onnxruntime", "--precision", "bf16"], "--engine onnxruntime cannot run --precision bf16 on cpu"),
    (["infer", "resnet50", "--random-weights", "--engine", "tvm"], "unknown --engine 'tvm'"),
    (["infer", "resnet50", "--random-weights", "--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
    (["infer", "resnet50", "--random-weights", "--scenario", "server"], "--scenario server runs through MLCommons LoadGen; add --loadgen"),
    (["infer", "resnet50", "--random-weights", "--scenario", "batch"], "argument --scenario: invalid choice: 'batch'"),
    (["infer", "synNet", "--pretrained"], "torchvision publishes no weights for synNet"),
    (["infer-all", "--models", "googlenet", "--batch-sizes", "2"], "no weights for googlenet: no checkpoint in log_googlenet_2"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_inference_input(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


@pytest.mark.usefixtures("cpu_calibration")  # the suite's calibration, shared
def test_infer_all_sweeps_engines_and_precisions(cli, trained, tmp_path, monkeypatch):
    monkeypatch.setattr("cnnbench.core.environment.cpu_flags", lambda: frozenset({"avx2"}))  # no native bf16 (test_bf16_default.py)
    # No --engines / --precisions: on a CPU, eager fp32 and onnxruntime fp32 and int8 (tests/test_sweep.py)
    code, out, err = cli("infer-all", "--models", trained, "--batch-sizes", "4", *QUICK[:2], "--num-batches", "2",
                         "--warmup", "1", "--calib-batches", "2")
    assert code == 0, err
    assert "Sweep finished in" in out and "(estimated" in out
    files = {p.name for p in (tmp_path / "results_infer").iterdir()}
    assert {"result_tinyNet_4.txt", "result_tinyNet_4_onnxruntime_fp32.txt", "result_tinyNet_4_onnxruntime_int8.txt"} <= files
    records = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
    assert [(r["engine"], r["precision"], r["status"], r["memory_format"]) for r in records] == [
        ("eager", "fp32", "ok", "nhwc"), ("onnxruntime", "fp32", "ok", "nchw"), ("onnxruntime", "int8", "ok", "nchw")]
    table = (tmp_path / "results_infer" / "results.csv").read_text()
    assert table.count("System performance, unit is images/second") == 3  # a table pair per engine/precision
    assert "(onnxruntime int8)" in table


def test_the_guard_judges_all_zero_reference_logits_without_dividing_by_zero():
    from cnnbench.recipes.inference import GUARD_BOUNDS, judge_guard

    zeros = torch.zeros(4, 10)
    same = judge_guard("onnxruntime", "int8", zeros.clone(), zeros, batches=1)
    assert same["guard_relative_error"] == 0.0 and same["guard_ok"] is True and same["guard_top1_agreement"] == 100.0
    off = judge_guard("onnxruntime", "int8", torch.full((4, 10), 0.5), zeros, batches=1)
    assert off["guard_relative_error"] == 1.0 > GUARD_BOUNDS["int8"] and off["guard_ok"] is False
