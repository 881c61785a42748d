"""torchvision's classifiers: the four classic networks of the registry, and any other by name.

All randomly initialised with 1000 classes; --pretrained loads torchvision's published weights
(recipes/weights.py, through `torchvision_name`).
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.models.entry import ModelEntry, default_learning_rate, normalization_for


def builder(name: str) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        # Global average pooling makes these networks independent of the input size.
        if name == "googlenet":
            # No auxiliary heads: they exist only to help 2014-era training converge and the
            # original's benchmark counts the main tower (6,624,904 parameters).
            return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=1000)
        return getattr(torchvision.models, name)(weights=None, num_classes=1000)

    return build


# Builder options that differ from torchvision's defaults for a random-weights model: inception_v3 warns
# (FutureWarning, torchvision/models/inception.py) unless its initialisation is chosen explicitly.
_OPTIONS = {"inception_v3": {"init_weights": True}}


def names() -> list[str]:
    """torchvision's image classification models. `list_models(module=torchvision.models)` keeps the builders
    of the package itself; detection, segmentation, video, optical flow and the quantized models live in
    its submodules and are left out (torchvision.models._api.list_models, torchvision 0.14 and later)."""
    return torchvision.models.list_models(module=torchvision.models)


def entry(name: str) -> ModelEntry:
    """A torchvision classifier with random weights at the input size of its published weights: the crop of
    their transforms (224 for most, inception_v3 299, efficientnet_b7 600), their resize and mean/std
    (weights.transforms(), torchvision/transforms/_presets.py ImageClassification) and their `min_size`."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    transforms = weights.transforms()
    crop = int(getattr(transforms, "crop_size", [224])[0])
    resize = getattr(transforms, "resize_size", None)
    min_size = max(weights.meta.get("min_size", (1, 1)))
    mean, std = tuple(getattr(transforms, "mean", ())), tuple(getattr(transforms, "std", ()))
    preprocessing, note = normalization_for(mean, std)
    options = _OPTIONS.get(name, {})

    def build(image_size: int) -> nn.Module:
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=1000, **options,
                                                **_size_options(name, image_size))
        except (ValueError, AssertionError) as exc:  # MaxViT's partitions, ViT's patches: sizes they cannot take
            raise UsageError(f"--image-size {image_size} does not suit {name} ({one_line(exc)}); its published "
                             f"size is {crop}") from None

    return ModelEntry(name, build, crop, int(min_size), preprocessing, default_learning_rate, torchvision_name=name,
                      source="torchvision", resize_size=int(resize[0]) if resize else None, mean=mean, std=std,
                      notes={"source": "torchvision", **({"preprocessing": note} if note else {})})


def _size_options(name: str, image_size: int) -> dict:
    """Vision transformers and MaxViT fix their input size when built (torchvision/models/vision_transformer.py
    `image_size`, maxvit.py `input_size`; 224 without weights, while vit_h_14's published weights take 518).
    The other classifiers pool globally and take any size."""
    if name.startswith("vit_"):
        return {"image_size": image_size}
    if name.startswith("maxvit_"):
        return {"input_size": (image_size, image_size)}
    return {}
