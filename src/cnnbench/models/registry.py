"""Name -> builder, default input size, expected preprocessing and training hyper-parameters.

Names match case-insensitively. A path to a JSON spec file (the synNet format) is also accepted,
so generated networks run through the same commands as the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.models import synnet, torchvision_models


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[int], nn.Module]  # image size -> a randomly initialised model with `num_classes` logits
    input_size: int
    # Smallest input the network accepts (densenet121 29, googlenet 15, measured); the ResNets take
    # anything, but below 32 px their last stage sees less than one pixel, so 32 is the floor.
    min_input_size: int
    # Which normalisation the model's weights expect; the data module maps this name to a transform.
    preprocessing: str
    # Learning rate as a function of the batch size (the original's per-model rule).
    learning_rate: Callable[[int], float]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_decay_power: float = 2.0
    num_classes: int = 1000  # logits of the head; synthetic labels are drawn below it
    # Training augmentation the weights' data wants (a spec file's `training` section); None: torchvision's
    # ImageNet recipe (RandomResizedCrop scale 0.08, flip 0.5). Command-line flags still win.
    min_crop_scale: float | None = None
    flip: float | None = None
    spec_path: Path | None = None
    torchvision_name: str | None = None
    notes: dict = field(default_factory=dict)


def _constant(value: float) -> Callable[[int], float]:
    return lambda batch_size: value


def _linear_scaling(batch_size: int) -> float:
    # ResNets: learning rate = batch size / 1024, the AI Matrix original's rule (0.1 at batch 102.4,
    # i.e. Goyal et al.'s 0.1 per 256 images, scaled down for the original's single-GPU batches). The
    # batch is the job's global one (training.initial_learning_rate), as nvcnn.py's total_batch_size.
    return batch_size / 1024


BUILTIN_SPEC = "synNet.json"


_REGISTRY: dict[str, ModelEntry] = {
    "densenet121": ModelEntry(
        "densenet121", torchvision_models.builder("densenet121"), 224, 29, "imagenet", _constant(0.001),
        torchvision_name="densenet121",
    ),
    # The original trained GoogLeNet with 0.04 (nvcnn.py's per-model table).
    "googlenet": ModelEntry(
        "googlenet", torchvision_models.builder("googlenet"), 224, 15, "imagenet", _constant(0.04),
        torchvision_name="googlenet",
    ),
    "resnet152": ModelEntry(
        "resnet152", torchvision_models.builder("resnet152"), 224, 32, "imagenet", _linear_scaling,
        torchvision_name="resnet152",
    ),
    "resnet50": ModelEntry(
        "resnet50", torchvision_models.builder("resnet50"), 224, 32, "imagenet", _linear_scaling,
        torchvision_name="resnet50",
    ),
}


def _spec_entry(path: Path) -> ModelEntry:
    spec = synnet.load_spec(path)
    training = spec.get("training") or {}
    lr = float(training.get("learning_rate", 0.001))
    return ModelEntry(
        name=spec.get("name") or path.stem,
        build=lambda image_size: synnet.build_from_spec(spec, image_size),
        input_size=int(spec["input"]["height"]),
        min_input_size=synnet.min_input_size(spec),
        preprocessing="minus_one_to_one",
        learning_rate=_constant(lr),
        momentum=_parse_momentum(training.get("optimizer"), 0.9),
        weight_decay=float(training.get("weight_decay", 1e-4)),
        lr_decay_power=float(training.get("lr_decay_power", 2.0)),
        num_classes=synnet.num_classes(spec),
        min_crop_scale=_optional_float(training, "min_crop_scale"),
        flip=_optional_float(training, "flip"),
        spec_path=path,
    )


def _optional_float(section: dict, key: str) -> float | None:
    return None if section.get(key) is None else float(section[key])


def _parse_momentum(optimizer: object, default: float) -> float:
    if isinstance(optimizer, dict):
        return float(optimizer.get("momentum", default))
    return default


def model_names() -> list[str]:
    return sorted([*_REGISTRY, "synNet"], key=str.lower)


def resolve_entry(name_or_path: str) -> ModelEntry:
    """Look a model up by name (any case) or load a spec file; an unknown name lists the known ones."""
    key = name_or_path.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key == "synnet":
        with resources.as_file(resources.files("cnnbench.models") / "specs" / BUILTIN_SPEC) as path:
            return _spec_entry(Path(path))
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise UsageError(f"model spec file {name_or_path} does not exist; give a JSON spec file or one of: {', '.join(model_names())}")
        return _spec_entry(path)
    raise UsageError(f"unknown model {name_or_path!r}; known models: {', '.join(model_names())} (or a path to a JSON spec file)")


# Builder options that differ from torchvision's defaults for a random-weights model: inception_v3 warns
# (FutureWarning, torchvision/models/inception.py) unless its initialisation is chosen explicitly.
_TORCHVISION_OPTIONS = {"inception_v3": {"init_weights": True}}


def torchvision_names() -> list[str]:
    """torchvision's image classification models. `list_models(module=torchvision.models)` keeps the builders
    of the package itself; detection, segmentation, video, optical flow and the quantized models live in
    its submodules and are left out (torchvision.models._api.list_models, torchvision 0.14 and later)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def resolve_any(name_or_path: str) -> ModelEntry:
    """`resolve_entry`, and beyond the registry any torchvision classification model by name (resnet18,
    mobilenet_v3_large, efficientnet_b0, convnext_tiny, ...) with random weights. What `cnnbench profile`
    accepts; the benchmark commands keep to the registry. An unknown name fails in one line that lists
    every accepted name (and the closest one, for a typo)."""
    key = name_or_path.lower()
    path = Path(name_or_path)
    if key in _REGISTRY or key == "synnet" or path.suffix.lower() == ".json" or path.exists():
        return resolve_entry(name_or_path)
    classifiers = torchvision_names()
    if key in classifiers:
        return _torchvision_entry(key)
    import difflib

    accepted = [*model_names(), *classifiers]
    close = difflib.get_close_matches(key, [name.lower() for name in accepted], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UsageError(f"unknown model {name_or_path!r}{hint}; accepted: the registered models ({', '.join(model_names())}), "
                     f"torchvision's classification models ({', '.join(classifiers)}) or a path to a JSON spec file")


def _torchvision_entry(name: str) -> ModelEntry:
    """A torchvision classifier with random weights at the input size of its published weights: the crop of
    their transforms (224 for most, inception_v3 299, efficientnet_b7 600) and their `min_size`."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    crop = getattr(weights.transforms(), "crop_size", [224])[0]
    min_size = max(weights.meta.get("min_size", (1, 1)))
    options = _TORCHVISION_OPTIONS.get(name, {})

    def build(image_size: int) -> nn.Module:
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=1000, **options,
                                                **_size_options(name, image_size))
        except (ValueError, AssertionError) as exc:  # MaxViT's partitions, ViT's patches: sizes they cannot take
            raise UsageError(f"--image-size {image_size} does not suit {name} ({one_line(exc)}); its published "
                             f"size is {crop}") from None

    return ModelEntry(name, build, int(crop), int(min_size), "imagenet", _constant(0.001), torchvision_name=name,
                      notes={"source": "torchvision"})


def _size_options(name: str, image_size: int) -> dict:
    """Vision transformers and MaxViT fix their input size when built (torchvision/models/vision_transformer.py
    `image_size`, maxvit.py `input_size`; 224 without weights, while vit_h_14's published weights take 518).
    The other classifiers pool globally and take any size."""
    if name.startswith("vit_"):
        return {"image_size": image_size}
    if name.startswith("maxvit_"):
        return {"input_size": (image_size, image_size)}
    return {}


def get_model(name_or_path: str, image_size: int | None = None) -> nn.Module:
    entry = resolve_entry(name_or_path)
    size = image_size or entry.input_size
    check_image_size(entry, size)
    return entry.build(size)


def resolve_with_size(model: str, image_size: int | None) -> tuple[ModelEntry, int]:
    """The model's entry and the image size a run uses (the option's, else the model's own), checked."""
    entry = resolve_entry(model)
    size = image_size or entry.input_size
    check_image_size(entry, size)
    return entry, size


def check_image_size(entry: ModelEntry, image_size: int) -> None:
    """Large enough for the network, and small enough that its tensors can be described at all (a
    spec's fully connected layer grows with the image's area; built on the meta device: shapes only)."""
    if image_size < entry.min_input_size:
        raise UsageError(
            f"--image-size {image_size} is too small for {entry.name}: it needs at least {entry.min_input_size} px "
            f"(its default is {entry.input_size})"
        )
    import torch

    try:
        with torch.device("meta"):
            entry.build(image_size)
    except NotImplementedError:
        # A builder that computes with tensor values cannot run on the meta device (torchvision's RegNets:
        # `torch.round(...).tolist()` of their widths); global pooling makes them take any size above the minimum.
        return
    except RuntimeError as exc:
        if "overflow" not in str(exc).lower():
            raise
        raise UsageError(f"--image-size {image_size} makes {entry.name}'s tensors larger than PyTorch can represent; "
                         f"use a smaller --image-size (its default is {entry.input_size})") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(entry: ModelEntry, image_size: int | None = None) -> int:
    """Forward FLOPs for one image, a multiply-add counted as 2 FLOPs (torch.utils.flop_counter's convention).

    Counted on the meta device: shapes only, no memory and no arithmetic.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = image_size or entry.input_size
    with torch.device("meta"):
        model = entry.build(size).eval()
        x = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())

