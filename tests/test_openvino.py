"""--engine openvino end to end on the CPU: guarded, recorded, cached; int8 on ONNX Runtime's calibration batches;
bf16 only where native; a missing package is one line with its install command."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from importlib import resources

import jsonschema
import openvino
import pytest
import torch

from cnnbench.engines import onnxruntime as ort_engine
from cnnbench.engines import openvino as ov_engine
from cnnbench.recipes.inference import GUARD_BOUNDS
from helpers import read_jsonl

QUICK = ["--random-weights", "--image-size", "16", "--batch-size", "4", "--num-batches", "3", "--warmup", "1",
         "--display-every", "1"]
NATIVE_BF16 = ov_engine.native_bf16(openvino.Core())
VERSION = importlib.metadata.version("openvino")


def _last() -> dict:
    return read_jsonl("results_infer/runs.jsonl")[-1]


def _infer(cli, spec, precision: str, *extra: str):
    code, out, err = cli("infer", spec, *QUICK, "--engine", "openvino", "--precision", precision, *extra)
    assert code == 0, err
    return out, _last()


def _assert_guarded(record: dict, precision: str) -> None:
    assert (record["engine"], record["precision"], record["status"]) == ("openvino", precision, "ok")
    assert record["guard_batches"] == 4 and record["guard_bound"] == GUARD_BOUNDS[precision]
    assert record["guard_relative_error"] <= GUARD_BOUNDS[precision] and record["guard_ok"] is True
    assert record["guard_top1_agreement"] >= (100.0 if precision == "fp32" else 75.0)


def test_fp32_is_guarded_recorded_and_cached(cli, tiny_spec, tmp_path):
    out, first = _infer(cli, tiny_spec, "fp32", "--cache-path", "cache")
    _assert_guarded(first, "fp32")
    assert "fp32 guard: top-1 agreement" in out
    # f32 asked and reported: on a CPU with native bf16 the plugin's default would have been bf16.
    assert first["openvino_inference_precision"] == "f32" and first["openvino"] == VERSION
    assert first["exporter"] == "torch.export + openvino.convert_model"
    assert first["cache_hit"] is False and first["engine_build_seconds"] > 0 and first["engine_load_seconds"] > 0
    assert first["steady_steps"] == 3 and first["images_per_sec"] > 0
    schema = json.loads((resources.files("cnnbench.core") / "record.schema.json").read_text())
    assert not [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(first)]

    out, second = _infer(cli, tiny_spec, "fp32", "--cache-path", "cache")
    assert second["cache_hit"] is True and second["engine_build_seconds"] == 0.0 and "cache hit" in out
    assert second["guard_relative_error"] == pytest.approx(first["guard_relative_error"])

    (weights,) = tmp_path.glob("cache/*/model.openvino-*.bin")
    weights.write_bytes(weights.read_bytes()[:100])
    out, third = _infer(cli, tiny_spec, "fp32", "--cache-path", "cache")
    assert f"cache entry {weights.relative_to(tmp_path)} is corrupt (checksum mismatch); rebuilding it" in out
    assert third["cache_hit"] is False and third["guard_ok"] is True


def test_int8_is_quantised_by_nncf_on_onnxruntimes_calibration_batches(cli, tiny_spec, tmp_path, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}

    def spy(module, engine: str):
        real = module.quantize_int8

        def quantize(*args, **kwargs):
            batches = args[2] if engine == "onnxruntime" else args[1]
            seen[engine] = [batch.clone() for batch in batches]
            return real(*args, **kwargs)
        monkeypatch.setattr(module, "quantize_int8", quantize)

    spy(ort_engine, "onnxruntime")
    spy(ov_engine, "openvino")
    calib = ["--calib-batches", "3", "--cache-path", "cache"]
    out, record = _infer(cli, tiny_spec, "int8", *calib)
    _assert_guarded(record, "int8")
    assert record["calibration_batches"] == 3 and record["nncf"] and record["openvino_inference_precision"] == "f32"
    assert "int8 calibrated on synthetic images" in out  # no --data-dir: the same warning as ONNX Runtime's
    assert cli("infer", tiny_spec, *QUICK, "--engine", "onnxruntime", "--precision", "int8", *calib)[0] == 0
    assert len(seen["openvino"]) == len(seen["onnxruntime"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["openvino"], seen["onnxruntime"]))
    # int8 weights: about a quarter of the fp32 IR's bytes (the fp32 IR is kept beside it, as the fp32 ONNX is)
    # One cache entry per model on the CPU (engines/table.shares_builds): the fp32 IR and its int8 calibration
    (fp32,) = tmp_path.glob(f"cache/*-openvino-*/model.openvino-{VERSION}.bin")
    (int8,) = tmp_path.glob("cache/*-openvino-*/*.int8.cal*.bin")
    assert int8.stat().st_size < fp32.stat().st_size / 2
    out, again = _infer(cli, tiny_spec, "int8", *calib)
    assert again["cache_hit"] is True and again["guard_relative_error"] == pytest.approx(record["guard_relative_error"])


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AVX512-BF16 or AMX): OpenVINO bf16 is refused")
def test_bf16_runs_at_bf16_where_the_cpu_has_it(cli, tiny_spec):
    _, record = _infer(cli, tiny_spec, "bf16")
    _assert_guarded(record, "bf16")
    assert record["openvino_inference_precision"] == "bf16"


def test_bf16_without_native_bf16_is_refused_in_one_line(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(ov_engine, "native_bf16", lambda core: False)
    code, _, err = cli("infer", tiny_spec, *QUICK, "--engine", "openvino", "--precision", "bf16")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs a CPU with native bf16 (AVX512-BF16 or AMX)" in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["openvino", "nncf"])
def test_a_missing_package_is_one_line_with_the_install_command(tiny_spec, module):
    # None in sys.modules: `import openvino` fails and find_spec finds nothing, as where it is not installed.
    program = (f"import sys; sys.modules[{module!r}] = None; from cnnbench.cli import main; "
               f"sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", program, "infer", str(tiny_spec), *QUICK, "--engine", "openvino"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"--engine openvino needs {module}" in line and "pip install -e '.[openvino]'" in line
