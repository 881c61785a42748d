"""Issue 22: one resolver for every model source (models/registry.py) - the user's own network from a file or a
module, timm:NAME, any torchvision classifier, keras:NAME's refusal under PyTorch, an unknown name's
suggestions - through the commands, and model_source in the records, the tables and compare."""

import json
import textwrap
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from cnnbench.core import store, tables
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import forward_flops, is_reference, model_list, resolve_entry, resolve_with_size
from cnnbench.tools import compare
from helpers import cnnbench_process, read_jsonl

SMALL = ["--batch-size", "2", "--image-size", "32", "--num-batches", "3", "--warmup", "1", "--device", "cpu"]

NET = textwrap.dedent("""
    from torch import nn

    def build(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))

    def seven_classes():  # no num_classes: its own head decides
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))

    def fixed_size():  # a flattening head: 32 px only
        return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 32 * 32, 5))

    def not_a_model():
        return 3

    def raises():
        raise RuntimeError("no such layer")
""")


@pytest.fixture
def net(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "net.py").write_text(NET)
    return "nets/net.py"


def last_record(folder: str) -> dict:
    return read_jsonl(f"{folder}/runs.jsonl")[-1]


def schema_errors(record: dict) -> list[str]:
    schema = json.loads((resources.files("cnnbench.core") / store.SCHEMA_FILE).read_text())
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(record)]


def test_a_users_file_trains_from_the_command_line(cli, net):
    code, out, err = cli("train", f"{net}:build", *SMALL)
    assert code == 0, err
    record = last_record("results_train")
    assert (record["model"], record["model_source"], record["status"]) == ("net.py:build", "file", "ok")
    assert record["learning_rate"] == pytest.approx(0.1 * 2 / 256)  # the documented default rule
    # FLOPs counted as for any model: conv 3x3x3x8 at 32x32 + the linear layer 8x1000 (num_classes=1000 given)
    assert record["forward_gflops_per_image"] * 1e9 == pytest.approx(2 * (27 * 8 * 32 * 32 + 8 * 1000), rel=0.01)
    assert not schema_errors(record)


def test_a_function_without_num_classes_keeps_its_head(net):
    entry, size = resolve_with_size(f"{net}:seven_classes", 32)
    assert entry.num_classes == 7 and size == 32 and entry.source == "file"
    assert resolve_with_size(f"{net}:fixed_size", 32)[0].num_classes == 5
    with pytest.raises(UsageError, match=r"^--image-size 48 does not suit net.py:fixed_size \(RuntimeError"):
        resolve_with_size(f"{net}:fixed_size", 48)


def test_a_module_on_the_path_infers(cli, tmp_path, net, monkeypatch):
    (tmp_path / "nets" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = cli("infer", "nets.net:build", "--random-weights", *SMALL)
    assert code == 0, err
    record = last_record("results_infer")
    assert (record["model"], record["model_source"]) == ("nets.net:build", "module")


@pytest.mark.parametrize("model, message", [
    ("nets/missing.py:build", "model file nets/missing.py does not exist; give path/to/file.py:FUNCTION"),
    ("nets/net.py:absent", "nets/net.py has no function 'absent'; it defines: build, fixed_size, not_a_model, raises, "
                           "seven_classes"),
    ("nets/net.py:not_a_model", "net.py:not_a_model returned int, not a torch.nn.Module; return the network"),
    ("nets/net.py:raises", "net.py:raises() failed (RuntimeError: no such layer)"),
    ("nets/net.py", "model nets/net.py: name the function that builds the network, as nets/net.py:FUNCTION"),
    ("no_such_package.nets:build", "model module no_such_package.nets cannot be imported (ModuleNotFoundError"),
    ("nets/broken.py:build", "model file nets/broken.py cannot be imported (SyntaxError"),
])
def test_a_bad_file_or_function_is_one_line(cli, net, model, message):
    Path("nets", "broken.py").write_text("def build(:\n")
    code, out, err = cli("train", model, *SMALL)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert not Path("results_train").exists()


def test_timm_resnet10t_infers(cli):
    code, out, err = cli("infer", "timm:resnet10t", "--random-weights", *SMALL)
    assert code == 0, err
    record = last_record("results_infer")
    assert (record["model"], record["model_source"], record["image_size"]) == ("timm:resnet10t", "timm", 32)
    assert record["forward_gflops_per_image"] > 0 and not schema_errors(record)


def test_timm_entries_read_the_pretrained_cfg():
    entry = resolve_entry("timm:resnet10t")
    # timm's pretrained_cfg for resnet10t.c3_in1k: input 176, crop_pct 0.875, ImageNet mean/std; output stride 32
    assert (entry.input_size, entry.resize_size, entry.min_input_size) == (176, 201, 32)
    assert entry.preprocessing == "imagenet" and entry.mean == (0.485, 0.456, 0.406)
    vit = resolve_entry("timm:vit_tiny_patch16_224")  # fixed input size: built for the run's size, mean/std 0.5
    assert vit.preprocessing == "minus_one_to_one" and vit.min_input_size == 16
    assert resolve_with_size("timm:vit_tiny_patch16_224", 64)[1] == 64
    with pytest.raises(UsageError, match=r"^unknown timm model timm:resnt10t \(did you mean timm:resnet10t\?\)"):
        resolve_entry("timm:resnt10t")


def test_timm_pretrained_offline_is_one_line():
    done = cnnbench_process("infer", "timm:resnet10t", "--pretrained", *SMALL, env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("cnnbench: error: --pretrained: cannot fetch timm's weights for resnet10t from "
                           "timm/resnet10t.c3_in1k (")
    assert "use --weights FILE" in line


@pytest.mark.parametrize("command", ["train", "infer"])
def test_torchvision_names_run(cli, command):
    model = "resnet18" if command == "train" else "mobilenet_v3_small"
    extra = ["--random-weights"] if command == "infer" else []
    code, _, err = cli(command, model, *extra, *SMALL)
    assert code == 0, err
    record = last_record(f"results_{command}")
    assert (record["model"], record["model_source"], record["status"]) == (model, "torchvision", "ok")
    assert record["forward_gflops_per_image"] * 1e9 == forward_flops(resolve_entry(model), 32)
    assert not schema_errors(record)


def test_torchvision_entries_know_their_published_transform():
    resnet18, regnet = resolve_entry("resnet18"), resolve_entry("regnet_y_400mf")
    assert (resnet18.input_size, resnet18.resize_size, resnet18.mean) == (224, 256, (0.485, 0.456, 0.406))
    assert regnet.resize_size == 232  # its DEFAULT weights are IMAGENET1K_V2
    assert resnet18.learning_rate(256) == pytest.approx(0.1) and resnet18.source == "torchvision"
    assert forward_flops(regnet, 32) > 0  # counted on the CPU: RegNets cannot be built on the meta device
    with pytest.raises(UsageError, match="--image-size 64 is too small for vit_b_16: it needs at least 224 px"):
        resolve_with_size("vit_b_16", 64)


def test_the_registered_five_keep_their_rules():
    assert resolve_entry("resnet50").source == "registry" and resolve_entry("synNet").source == "registry"
    assert resolve_entry("resnet50").learning_rate(64) == 64 / 1024 and resolve_entry("googlenet").learning_rate(64) == 0.04


@pytest.mark.usefixtures("cpu_calibration")  # the suite's calibration, shared
def test_infer_all_sweeps_torchvision_and_timm_models(cli, tmp_path):
    code, out, err = cli("infer-all", "--models", "mobilenet_v3_small,timm:resnet10t", "--batch-sizes", "2",
                         "--image-size", "32", "--num-batches", "2", "--warmup", "1", "--random-weights",
                         "--engines", "eager", "--precisions", "fp32")
    assert code == 0, err
    records = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
    assert [(r["model"], r["model_source"], r["status"]) for r in records] == [
        ("mobilenet_v3_small", "torchvision", "ok"), ("timm:resnet10t", "timm", "ok")]
    table = (tmp_path / "results_infer" / "results.csv").read_text()
    assert "\nmobilenet_v3_small," in table and "\ntimm:resnet10t," in table


@pytest.mark.parametrize("model, message", [
    ("resnt18", "unknown model 'resnt18' (did you mean resnet18?); accepted: the registered models (densenet121, "
                "googlenet, resnet152, resnet50, synNet), any torchvision classification model"),
    ("convnext-tiny", "unknown model 'convnext-tiny' (did you mean convnext_tiny?)"),
    ("keras:ResNet50", "keras:ResNet50 is a keras.applications model: it runs with --framework tensorflow only"),
])
def test_unknown_and_foreign_names_are_one_line_with_suggestions(cli, model, message):
    code, out, err = cli("train", model, *SMALL)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_keras_names_resolve_through_their_torchvision_twins():
    entry, size = resolve_with_size("keras:InceptionV3", None, "tensorflow")
    assert (entry.name, entry.source, size, entry.min_input_size) == ("keras:InceptionV3", "keras", 299, 75)
    assert forward_flops(entry, 299) == forward_flops(resolve_entry("inception_v3"), 299)
    with pytest.raises(UsageError, match=r"^keras:Xceptoin is not one of the keras.applications models cnnbench runs"):
        resolve_entry("keras:Xceptoin")


@pytest.mark.parametrize("model, source", [("keras:MobileNetV3Small", "keras"), ("mobilenet_v3_small", "torchvision")])
def test_keras_models_and_torchvision_twins_infer_with_tensorflow(cli, model, source):
    pytest.importorskip("tensorflow")
    code, _, err = cli("infer", model, "--framework", "tensorflow", "--random-weights", *SMALL)
    assert code == 0, err
    record = last_record("results_infer")
    assert (record["model"], record["model_source"], record["framework"]) == (model, source, "tensorflow")
    assert record["forward_gflops_per_image"] * 1e9 == forward_flops(resolve_entry("mobilenet_v3_small"), 32)


def test_lists_keep_references_whole():
    assert model_list("resnet50:googlenet;timm:resnet10t,nets/net.py:build,nets.net:build synNet-resnet18") == [
        "resnet50", "googlenet", "timm:resnet10t", "nets/net.py:build", "nets.net:build", "synNet", "resnet18"]
    assert is_reference("timm:resnet10t") and not is_reference("timm:resnet10t:0.5") and not is_reference("resnet50:0.4")


def test_synth_validate_takes_any_model(tiny_spec):
    from cnnbench.tools.synth_validation import runnable

    assert [name for _, name, _ in runnable("resnet18:0.5,timm:resnet10t:0.5", str(tiny_spec))] == [
        "tinyNet", "resnet18", "timm:resnet10t"]


def test_tables_and_compare_keep_sources_apart():
    run = {"kind": "infer", "batch_size": 2, "status": "ok", "images_per_sec": 1.0, "system_images_per_sec": 1.0}
    registered = {**run, "model": "synNet", "config.model": "synNet"}  # before issue 22: no model_source
    copied = {**run, "model": "synNet", "model_source": "spec", "config.model": "my/synNet.json"}
    assert compare.key_of(registered) != compare.key_of(copied)
    assert compare.key_of(registered) == compare.key_of({**registered, "model_source": "registry"})
    assert compare.label(compare.key_of(copied)) == "infer synNet batch 2, spec file"
    rows = [line.split(",")[0] for line in tables.tables_csv([registered, copied]).splitlines()]
    assert "synNet (registry)" in rows and "synNet (spec)" in rows


# Issue 22 #4: an engine that cannot take a model. torch.linalg.eigvalsh has no ONNX operator (neither torch.onnx
# exporter takes it) and no OpenVINO conversion rule: a real refusal, not a simulated one.
SPECTRAL = textwrap.dedent("""
    import torch
    from torch import nn

    class Spectral(nn.Module):  # the head reads the eigenvalues of a channel Gram matrix
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            f = torch.relu(self.conv(x)).flatten(2)
            return self.fc(torch.linalg.eigvalsh(f @ f.transpose(1, 2) / f.shape[-1]))

    def build(num_classes=10):
        return Spectral(num_classes)
""")


@pytest.fixture
def spectral(tmp_path):
    (tmp_path / "spectral.py").write_text(SPECTRAL)
    return "spectral.py:build"


@pytest.mark.parametrize("engine, step, reason", [
    ("onnxruntime", "the ONNX export failed", "Exporting the operator 'aten::linalg_eigvalsh' to ONNX opset version 18 "
                                              "is not supported"),
    ("openvino", "the OpenVINO conversion failed", "No conversion rule found for operations: aten::linalg_eigvalsh"),
])
def test_an_engine_that_cannot_take_the_model_says_so_in_one_line(cli, spectral, engine, step, reason):
    from cnnbench.core import errors

    code, out, err = cli("infer", spectral, "--engine", engine, "--random-weights", *SMALL)
    assert code == errors.EXIT_ENGINE_REFUSED == 5
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"cnnbench: error: --engine {engine} cannot take model spectral.py:build: {step} (")
    assert reason in err and "nothing was measured; --engine eager runs any model PyTorch runs" in err


def test_a_failed_int8_quantisation_is_the_engines_refusal(monkeypatch, net):
    import cnnbench
    from cnnbench.engines import onnxruntime

    def broken(*args, **kwargs):  # what onnxruntime.quantization raises on a graph it cannot calibrate
        raise ValueError("no calibration range for tensor /conv/Conv_output_0")

    monkeypatch.setattr(onnxruntime, "quantize_int8", broken)
    with pytest.raises(cnnbench.EngineRefused) as refused:
        cnnbench.infer(f"{net}:build", engine="onnxruntime", precision="int8", random_weights=True, calib_batches=1,
                       batch_size=2, image_size=32, num_batches=2, warmup=1, device="cpu")
    assert str(refused.value) == (
        "--engine onnxruntime cannot take model net.py:build: ONNX Runtime's int8 quantisation failed (ValueError: no "
        "calibration range for tensor /conv/Conv_output_0); nothing was measured; --engine eager runs any model "
        "PyTorch runs")
    assert (refused.value.engine, refused.value.model, refused.value.exit_code) == ("onnxruntime", "net.py:build", 5)


@pytest.mark.usefixtures("cpu_calibration")  # the suite's calibration, shared
def test_a_sweep_records_the_refusal_and_goes_on(cli, tmp_path, spectral, net):
    code, out, err = cli("infer-all", "--models", f"{spectral},{net}:build", "--batch-sizes", "2", "--image-size", "32",
                         "--num-batches", "2", "--warmup", "1", "--random-weights", "--engines", "onnxruntime",
                         "--precisions", "fp32", "--device", "cpu")
    assert code == 0, err
    records = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
    assert [(r["model"], r["status"]) for r in records] == [("spectral.py:build", "failed"), ("net.py:build", "ok")]
    assert records[0]["reason"].startswith("exit code 5: cnnbench: error: --engine onnxruntime cannot take model "
                                           "spectral.py:build: the ONNX export failed (UnsupportedOperatorError: ")
