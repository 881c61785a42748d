"""cnnbench on torch 2.11 / torchvision 0.26 (the lent GPU machines) as on torch 2.14 / torchvision 0.29 (.venv).

Compared on their Python sources (the PyPI wheels of 2.11.0 and 0.26.0 against those installed here), the
two differ, where cnnbench looks, in what the newer ones add and in torchvision.io's deprecation warning
(docs/torch-versions.md). So:
- the torch 2.11 machines' codecs, the one place where cnnbench takes a fallback, are simulated here:
  TorchCodec absent, or present but built for another torch, with torchvision 0.26's codecs, which do not
  warn (0.29's warn DeprecationWarning at every call);
- no cnnbench, benchmark or test source may use an API that torch 2.11 lacks (`NEWER_THAN_TORCH_2_11`),
  which CI, on torch 2.14, would not notice.
"""

from __future__ import annotations

import ast
import importlib.machinery
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from cnnbench.data import codec
from cnnbench.data.loader import RealDataSource
from cnnbench.data.preprocess import preprocess_for
from helpers import REPO

# ---------------------------------------------------------------- no API newer than torch 2.11

# Added after torch 2.11.0: present in 2.14.1's sources, absent from 2.11.0's (the files named).
NEWER_THAN_TORCH_2_11 = {
    # torch/compiler/__init__.py
    "torch.compiler.precompile", "torch.compiler.PrecompileError", "torch.compiler.nonstrict_trace",
    "torch.compiler.set_default_backend", "torch.compiler.get_default_backend",
    "torch.compiler.cudagraph_mark_warmup_incomplete",
    # torch/backends/cuda/__init__.py, torch/backends/cudnn/__init__.py
    "torch.backends.cuda.cublas_workspace_size", "torch.backends.cuda.cublaslt_workspace_size",
    "torch.backends.cuda.blas_workspace_size", "torch.backends.cuda.is_ck_sdpa_available",
    "torch.backends.cudnn.depthwise_kernel",
    # torch/random.py
    "torch.thread_safe_generator", "torch.random.thread_safe_generator",
}
# Keyword arguments added after torch 2.11.0, by the callable's name: torch/__init__.py (torch.compile),
# torch/nn/parallel/distributed.py (DistributedDataParallel), torch/distributed/launcher/api.py (LaunchConfig).
NEWER_KEYWORDS = {
    "compile": {"name", "recompile_limit", "isolate_recompiles", "dynamic_shapes"},
    "DistributedDataParallel": {"forward_sync_buffers", "batched_grad_copy"},
    "LaunchConfig": {"shutdown_timeout"},
}
# Environment variables read only after torch 2.11.0: torch/distributed/launcher/api.py (the agent's
# wait between SIGTERM and SIGKILL; 2.11 waits a fixed 30 s), local_elastic_agent.py.
NEWER_VARIABLES = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT"}
# torchvision 0.29's geometry functions also take the interpolation as a string ("bilinear"); 0.26's
# take only InterpolationMode (torchvision/transforms/v2/functional/_geometry.py, _check_interpolation).
INTERPOLATION = "interpolation"


def _matches(dotted: str, name: str) -> bool:
    """Whether `dotted`, an attribute chain as written (torch.compiler.precompile, or compiler.precompile
    after `from torch import compiler`), may be `name`. Imports of the name itself are checked apart."""
    return name == dotted or ("." in dotted and name.endswith("." + dotted))


def newer_api_uses(source: str, where: str = "<source>") -> list[str]:
    """Each use in `source` of an API that torch 2.11 / torchvision 0.26 lacks, as 'where:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            found += [f"{where}:{node.lineno}: {dotted}" for name in NEWER_THAN_TORCH_2_11 if _matches(dotted, name)]
        elif isinstance(node, ast.Constant) and node.value in NEWER_VARIABLES:
            found.append(f"{where}:{node.lineno}: {node.value}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{where}:{node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                      if f"{node.module}.{alias.name}" in NEWER_THAN_TORCH_2_11]
        elif isinstance(node, ast.Call):
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for keyword in node.keywords:
                if keyword.arg in NEWER_KEYWORDS.get(callee, ()):
                    found.append(f"{where}:{node.lineno}: {callee}(..., {keyword.arg}=...)")
                elif keyword.arg == INTERPOLATION and isinstance(keyword.value, ast.Constant) \
                        and isinstance(keyword.value.value, str):
                    found.append(f"{where}:{node.lineno}: {callee}(..., interpolation={keyword.value.value!r})")
    return found


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.compiler.precompile(f)",
    "from torch import compiler\ncompiler.set_default_backend('eager')",
    "from torch.compiler import nonstrict_trace",
    "torch.backends.cudnn.depthwise_kernel = 'auto'",
    "torch.compile(model, mode='max-autotune', recompile_limit=4)",
    "DistributedDataParallel(module, forward_sync_buffers=False)",
    "LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, shutdown_timeout=5)",
    "F.resize(image, [256], interpolation='bilinear')",
    "os.environ.setdefault('TORCH_ELASTIC_SHUTDOWN_TIMEOUT', '5')",
])
def test_the_check_finds_each_kind_of_newer_api(snippet):
    assert len(newer_api_uses(snippet)) == 1


@pytest.mark.parametrize("snippet", [
    "torch.compile(model, mode='max-autotune')",  # what 2.11 takes
    "re.compile(pattern, flags=re.I)",  # another compile
    "torch.compiler.save_cache_artifacts()",
    "F.resize(image, [256], interpolation=InterpolationMode.BILINEAR, antialias=True)",
    "DistributedDataParallel(module, device_ids=None, gradient_as_bucket_view=True)",
])
def test_the_check_passes_what_torch_2_11_has(snippet):
    assert newer_api_uses(snippet) == []


def test_no_source_uses_an_api_newer_than_torch_2_11():
    """cnnbench, its benchmarks and its tests all run on the GPU machines' torch 2.11."""
    files = [REPO / "nvcnn.py", *(REPO / "src").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"),
             *(REPO / "tests").rglob("*.py")]
    files.remove(Path(__file__).resolve())  # this file names them, as strings, to look for them
    uses = [use for path in files for use in newer_api_uses(path.read_text(), str(path.relative_to(REPO)))]
    assert uses == [], "torch 2.11 / torchvision 0.26 lack these (feature-detect them, with a fallback):\n" + "\n".join(uses)


# ---------------------------------------------------------------- codecs as on the torch 2.11 machines


class _UnloadableModule(types.ModuleType):
    """A torchcodec module whose compiled library does not load: every name raises, as a wheel built for
    another torch does on first use (torchcodec 0.17 is built against torch 2.14, 0.16 against 2.11)."""

    def __getattr__(self, name):
        raise RuntimeError("Could not load libtorchcodec (simulated: built for another torch)")


def _torchcodec_absent(monkeypatch) -> str:
    # None in sys.modules: importlib.util.find_spec answers None and an import raises ImportError.
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    return "torchcodec is not installed"


def _torchcodec_for_another_torch(monkeypatch) -> str:
    package = types.ModuleType("torchcodec")
    package.__spec__ = importlib.machinery.ModuleSpec("torchcodec", None, is_package=True)
    monkeypatch.setitem(sys.modules, "torchcodec", package)
    for name in ("torchcodec.decoders", "torchcodec.encoders"):
        monkeypatch.setitem(sys.modules, name, _UnloadableModule(name))
    return "torchcodec does not load: RuntimeError: Could not load libtorchcodec"


def _torchvision_0_26_io(monkeypatch) -> None:
    """torchvision 0.26's decode_image / encode_jpeg / encode_png: 0.29's, less the DeprecationWarning."""
    import torchvision.io

    def without_warning(function):
        def quiet(*args, **kwargs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return function(*args, **kwargs)
        return quiet

    for name in ("decode_image", "encode_jpeg", "encode_png"):
        monkeypatch.setattr(torchvision.io, name, without_warning(getattr(torchvision.io, name)))


@pytest.fixture
def choose_codec_again():
    """codec.torchcodec_problem is computed once per process: forget it before and after each case."""
    codec.torchcodec_problem.cache_clear()
    yield
    codec.torchcodec_problem.cache_clear()


TORCHCODEC_STATES = {"absent": _torchcodec_absent, "built for another torch": _torchcodec_for_another_torch}


@pytest.mark.parametrize("io_release", ["installed", "0.26"])
@pytest.mark.parametrize("torchcodec", sorted(TORCHCODEC_STATES))
def test_without_a_working_torchcodec_images_go_through_torchvision_io(monkeypatch, choose_codec_again, torchcodec, io_release):
    reason = TORCHCODEC_STATES[torchcodec](monkeypatch)
    if io_release == "0.26":
        _torchvision_0_26_io(monkeypatch)
    assert codec.backend() == codec.TORCHVISION
    assert codec.describe().startswith("torchvision.io ") and reason in codec.describe()
    rows, columns = torch.arange(12).view(1, 12, 1), torch.arange(10).view(1, 1, 10)
    image = (torch.tensor([20, 60, 100]).view(3, 1, 1) + 6 * rows + 4 * columns).to(torch.uint8)  # smooth: JPEG keeps it
    with warnings.catch_warnings():
        # A user's -W error: with 0.29's warning (silenced around the call only) or 0.26's none, no error.
        warnings.simplefilter("error")
        png, jpeg = codec.encode_png(image), codec.encode_jpeg(image, quality=95)
        assert torch.equal(codec.decode_rgb(png, "x.png")[0], image)  # PNG is lossless
        decoded, problem = codec.decode_rgb(jpeg, "x.jpg")
        assert problem is None and decoded.shape == (3, 12, 10)
        assert (decoded.int() - image.int()).abs().float().mean() < 3  # JPEG at quality 95: close, not exact
        assert codec.decode_rgb(b"\xff\xd8 not a jpeg", "x.jpg")[1].startswith("cannot decode image x.jpg: ")


def test_an_image_folder_is_read_without_torchcodec(monkeypatch, choose_codec_again, tmp_path):
    """The torch 2.11 machines' case end to end: the folder written and read through torchvision.io."""
    _torchcodec_absent(monkeypatch)
    images = {}
    for label, name in enumerate(("ant", "bee")):
        for i in range(2):
            image = torch.full((3, 16, 16), 60 * label + 20 * i, dtype=torch.uint8)
            path = tmp_path / "val" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(codec.encode_png(image))
            images[(label, i)] = image
    preprocess = preprocess_for("resnet50", "imagenet", 16, preset="aimatrix")  # raw 0..255 floats
    source = RealDataSource(tmp_path, "val", 4, preprocess, "cpu", workers=0)
    assert "decoding with torchvision.io " in source.describe()
    batch, labels = next(source.epoch_batches())
    assert labels.tolist() == [0, 0, 1, 1]
    # Uniform images survive the resize and crop exactly: each comes back as the value it was written with.
    assert batch[:, 0, 0, 0].tolist() == [float(images[key][0, 0, 0]) for key in sorted(images)]
