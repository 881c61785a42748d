"""benchmarks/input_pipeline.py --device cuda, CPU against GPU JPEG decoding (issue 10): what a CPU can check.

Without CUDA the mode must skip in one line with exit 0 (benchmarks/gpu_checks.py runs it on any machine).
Its gpu-decode pipeline is device-agnostic (decode_jpeg takes device="cpu" too), so here it runs on the
CPU against cnnbench's own pipeline; only the nvJPEG decode itself and the timings need the GPU.
"""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from helpers import REPO, read_jsonl, run_process

sys.path.insert(0, str(REPO / "benchmarks"))
import input_pipeline as ip  # noqa: E402  (a script beside record.py, not a package module)

from cnnbench.data import codec  # noqa: E402
from cnnbench.data.loader import RealDataSource  # noqa: E402
from cnnbench.data.normalization import Normalizer  # noqa: E402
from cnnbench.data.preprocess import preprocess_for  # noqa: E402

CPU = torch.device("cpu")
PREPROCESS = preprocess_for("resnet50", "imagenet", 224)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """30 digit JPEGs of 96 px (3 a class) and their paths in ImageFolder's order."""
    root = tmp_path_factory.mktemp("jpegs") / "digits"
    return root, ip.write_files(root, 96, 3)


def test_cuda_mode_without_cuda_prints_one_line_and_exits_0(tmp_path):
    saved = tmp_path / "saved"
    done = run_process([sys.executable, str(REPO / "benchmarks" / "input_pipeline.py"), "--device", "cuda", "--save-to", str(saved)],
                       env={"CUDA_VISIBLE_DEVICES": ""}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["input_pipeline: GPU decode comparison skipped (no CUDA: torch.cuda.is_available() is False)"]
    assert not saved.exists()  # nothing measured, nothing saved


@pytest.mark.parametrize("name", [name for name, _ in ip.decoder_candidates()])
def test_device_decode_on_the_cpu_gives_cnnbench_pipelines_batch(jpegs, name):
    root, files = jpegs
    source = RealDataSource(root, "train", 8, PREPROCESS, "cpu", workers=0, train=False)
    reference = next(iter(source.epoch_batches()))[0]
    decode = dict(ip.decoder_candidates())[name]
    other = ip.device_decode_batch(files[:8], decode, CPU, PREPROCESS, Normalizer(PREPROCESS.normalization, CPU))
    check = ip.compare_batches(reference, other)
    assert check["shape"] == [8, 3, 224, 224] and check["dtype"] == "float32" and check["passed"]
    # Same libjpeg-turbo and the same CPU resize: identical, not merely close (tests/test_data_pipeline.py
    # checks that TorchCodec and torchvision.io decode to the same pixels).
    assert torch.equal(reference, other), check


def test_a_batch_of_one_size_is_resized_at_once_like_image_by_image_and_mixed_sizes_work():
    generator = torch.Generator().manual_seed(0)
    same = [torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8, generator=generator) for _ in range(3)]
    mixed = same[:2] + [torch.randint(0, 256, (3, 240, 320), dtype=torch.uint8, generator=generator)]
    normalizer = Normalizer(PREPROCESS.normalization, CPU)
    for images in (same, mixed):
        one_by_one = normalizer(torch.stack([PREPROCESS(image) for image in images]))
        assert torch.equal(ip.preprocess_on_device(images, PREPROCESS, normalizer), one_by_one)


def test_the_check_reports_small_differences_and_fails_only_gross_ones():
    reference = Normalizer("imagenet", CPU)(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    one_level = reference + 1 / (0.225 * 255)  # about one pixel level everywhere: the nvJPEG/libjpeg-turbo scale
    near = ip.compare_batches(reference, one_level)
    assert near["passed"] and 0 < near["mean_diff_percent_of_range"] < 1
    unnormalised = ip.compare_batches(reference, reference * 0.225 * 255)  # a normalisation left out
    assert not unnormalised["passed"] and unnormalised["mean_diff_percent_of_range"] > ip.MISMATCH_PERCENT
    wrong_shape = ip.compare_batches(reference, reference[:, :, :4])
    assert not wrong_shape["passed"] and wrong_shape["other_shape"] == [4, 3, 4, 8]


def test_a_decoder_that_fails_is_passed_over_and_none_left_means_skip(jpegs, monkeypatch):
    def broken(data, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    sample = ip.read_bytes(jpegs[1][:2])
    monkeypatch.setattr(ip, "decoder_candidates", lambda: [("broken", broken), ("torchvision.io", ip.decode_torchvision)])
    name, decode, problems = ip.choose_decoder(sample, CPU)
    assert name == "torchvision.io" and problems == ["broken: RuntimeError: decode_jpegs_cuda: torchvision not compiled with nvJPEG support"]
    monkeypatch.setattr(ip, "decoder_candidates", lambda: [("broken", broken)])
    assert ip.choose_decoder(sample, CPU)[:2] == (None, None)


def test_files_repeat_past_what_the_digits_hold(tmp_path):
    files = ip.write_files(tmp_path / "digits", 8, 150)  # the training split holds ~143 a class
    per_class = {path.parent.name: 0 for path in files}
    for path in files:
        per_class[path.parent.name] += 1
    assert set(per_class.values()) == {150}
    copy = next(path for path in files if path.name.startswith("copy"))
    assert copy.read_bytes() in {path.read_bytes() for path in copy.parent.glob("[0-9]*.jpg")}


def test_the_comparison_end_to_end_on_the_cpu_saves_its_rows(tmp_path):
    args = argparse.Namespace(device="cuda", images_per_class=2, image_size=64, batch_size=8, rounds=1, workers=[0],
                              save_to=str(tmp_path / "saved"))
    assert ip.compare_decoding(args, CPU) == 0
    saved = next((tmp_path / "saved").glob("input_pipeline-*.jsonl"))
    rows = read_jsonl(saved)
    assert [r["kind"] for r in rows] == ["setup", "pipeline", "pipeline", "check", "summary"]
    assert [r["pipeline"] for r in rows if r["kind"] == "pipeline"] == ["cpu-decode, 0 workers", f"gpu-decode, {rows[0]['gpu_decoder']}"]
    summary = rows[-1]
    assert summary["check_passed"] and summary["speedup"] > 0 and summary["against"] == "0 workers"
    assert saved.read_text().count("speedup") == 1  # benchmarks/gpu_checks.py picks the summary row by that key
    assert rows[0]["gpu_decoder"] == ("torchcodec" if codec.backend() == codec.TORCHCODEC else "torchvision.io")
