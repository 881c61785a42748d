"""infer-all shares what its configurations of one model have in common (issue 26, item 5): one dynamic-batch
export and one int8 calibration per model and engine on the CPU, and one set of guard references per model and
batch, through a cache the sweep removes at its end unless --cache-path keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from cnnbench.core import config
from cnnbench.engines import table
from cnnbench.engines.onnx_export import BATCH_DIM, export_onnx
from cnnbench.recipes import estimate
from cnnbench.recipes.inference import SHARED_CALIBRATION_BATCH
from conftest import TINY_SPEC
from helpers import read_jsonl

STEPS = ["--num-batches", "2", "--warmup", "1", "--duration", "0.1", "--min-steady-steps", "1"]
RATES = estimate.Rates("cpu", train_gflops=50.0, infer_gflops=50.0)


@pytest.fixture
def root(tmp_path, monkeypatch, cpu_calibration):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_SPEC))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_table_says_which_engines_share_a_build_and_where():
    assert table.shares_builds("pytorch", "onnxruntime", "cpu") and table.shares_builds("pytorch", "openvino", "cpu")
    # CUDA keeps static shapes (TensorRT, CUDA graphs); eager and compile keep nothing on disk to share
    assert not table.shares_builds("pytorch", "onnxruntime", "cuda")
    assert not any(table.shares_builds("pytorch", name, "cpu") for name in ("eager", "compile"))
    assert not any(table.shares_builds("tensorflow", name, "cpu") for name in table.names("tensorflow"))


def test_a_dynamic_batch_export_names_its_batch_dimension(tiny_spec, tmp_path):
    from cnnbench.models.registry import resolve_entry

    model = resolve_entry(str(tiny_spec)).build(16).eval()
    export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "d.onnx", dynamic_batch=True)
    export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "s.onnx")
    dynamic, static = (onnx.load(tmp_path / f"{n}.onnx").graph.input[0].type.tensor_type.shape.dim[0] for n in "ds")
    assert dynamic.dim_param == BATCH_DIM and static.dim_value == 2


def test_an_inference_sweep_builds_each_model_once_and_removes_its_cache(cli, root):
    # One training checkpoint, batch 4's: by default (--weights-batch auto) every batch size reads it
    code, _, err = cli("train", "tiny.json", "--image-size", "16", "--batch-size", "4", "--num-batches", "2", "--warmup", "0")
    assert code == 0, err
    code, out, err = cli("infer-all", "--models", "tiny.json", "--batch-sizes", "2,4", "--image-size", "16",
                         "--engines", "onnxruntime", "--precisions", "fp32,int8", "--calib-batches", "2", *STEPS)
    assert code == 0, err
    records = read_jsonl(root / "results_infer" / "runs.jsonl")
    assert [(r["batch_size"], r["precision"], r["status"]) for r in records] == [
        (2, "fp32", "ok"), (2, "int8", "ok"), (4, "fp32", "ok"), (4, "int8", "ok")]
    assert {r["config.log_dir"] for r in records} == {f"log_{records[0]['model']}_4"}
    assert len({r["weights_digest"] for r in records}) == 1 and {r["weights_source"] for r in records} == {"checkpoint"}
    # batch 2's fp32 exports, its int8 quantises that export; batch 4 builds nothing
    built = [r["engine_build_seconds"] > 0 for r in records]
    assert built == [True, True, False, False] and [r["cache_hit"] for r in records] == [False, False, True, True]
    assert all(r["guard_ok"] for r in records)
    # int8 is calibrated once, on batches of SHARED_CALIBRATION_BATCH images whatever the run's batch
    calibrated = [(r["batch_size"], r.get("calibration_batches"), r.get("calibration_images")) for r in records
                  if r["precision"] == "int8"]
    assert calibrated == [(2, 2, 2 * SHARED_CALIBRATION_BATCH), (4, None, None)]
    # the guard's eager fp32 references: computed by the first checked engine of each batch, read by the next
    assert out.count("guard references: eager fp32 logits of") == 2
    assert "removed when the sweep ends" in out
    assert not list((root / "results_infer").glob(".sweep-*"))  # removed at the end


def test_a_given_cache_path_is_kept(cli, root):
    code, out, err = cli("infer-all", "--models", "tiny.json", "--batch-sizes", "2", "--image-size", "16",
                         "--engines", "onnxruntime", "--random-weights", "--cache-path", "builds", "--dry-run")
    assert code == 0, err
    commands = [line for line in out.splitlines() if line.strip().startswith("$ ")]
    assert "(--cache-path: kept)" in out and commands and all("--cache-path builds" in line for line in commands)


def test_dry_run_commands_carry_the_shared_cache(cli, root):
    code, out, _ = cli("infer-all", "--models", "tiny.json", "--batch-sizes", "2", "--image-size", "16",
                       "--engines", "onnxruntime", "--random-weights", "--dry-run")
    assert code == 0
    commands = [line for line in out.splitlines() if line.strip().startswith("$ ")]
    assert commands and all("--cache-path results_infer/.sweep-" in line for line in commands)


def _runs(cache_path, batches=(2, 4), precisions=("fp32", "int8")):
    base = config.InferConfig(model="resnet50", random_weights=True, cache_path=cache_path, engine="onnxruntime")
    return [_with(base, b, p) for b in batches for p in precisions]


def _with(base, batch, precision):
    import dataclasses

    return dataclasses.replace(base, measure=dataclasses.replace(base.measure, batch_size=batch),
                               placement=dataclasses.replace(base.placement, precision=precision))


def test_the_estimate_pays_for_a_shared_build_once():
    shared = estimate.sweep_seconds(_runs("c"), "infer", RATES)
    alone = estimate.sweep_seconds(_runs(None), "infer", RATES)
    # without a cache every configuration pays its own export (and int8 its calibration); with one, the first
    # fp32 pays the export, the first int8 the calibration, and batch 4 only its references and steps
    assert alone[0] > shared[0] * 0.99 and alone[2] > shared[2] and alone[3] > shared[3]
    export = estimate.ESTIMATES["export"].build_seconds
    assert alone[2] - shared[2] >= export * 0.99
    quantise = estimate.INT8_QUANTISE_SECONDS
    assert alone[3] - shared[3] >= export + quantise * 0.99  # batch 4's int8 pays neither export nor quantisation


def test_the_estimate_shares_builds_across_batch_sizes_only_for_the_same_weights():
    """infer-all after train-all reads one checkpoint per batch size (log_<model>_<batch>): different weights, so
    each batch size builds again; random weights are the same for all."""
    import dataclasses

    trained = [dataclasses.replace(r, random_weights=False, log_dir=f"log_resnet50_{r.measure.batch_size}") for r in _runs("c")]
    checkpoints = estimate.sweep_seconds(trained, "infer", RATES)
    random = estimate.sweep_seconds(_runs("c"), "infer", RATES)
    assert checkpoints[:2] == pytest.approx(random[:2])
    assert checkpoints[2] - random[2] >= estimate.ESTIMATES["export"].build_seconds * 0.99
