"""What a resolved model is (ModelEntry), wherever it came from, and the rules shared by the sources.

Sources (ModelEntry.source, written to every record as `model_source`):
  registry     the original's four networks and synNet (registry.py), the original's learning rates
  spec         a JSON spec file (synNet's format), the learning rate of its `training` section
  torchvision  any torchvision classification model by name (torchvision_models.py)
  timm         `timm:NAME` (timm_models.py, the `.[timm]` extra)
  keras        `keras:NAME`, a keras.applications model for --framework tensorflow (no PyTorch build)
  file         `path/to/file.py:FUNCTION` (user_models.py)
  module       `package.module:FUNCTION` (user_models.py)
  python       an nn.Module instance given to cnnbench.train / cnnbench.infer (registry.register_instance)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

SOURCES = ("registry", "spec", "torchvision", "timm", "keras", "file", "module", "python")


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
    source: str = "registry"  # one of SOURCES
    # The published weights' evaluation transform at input_size (torchvision's weights.transforms(), timm's
    # pretrained_cfg): the resize before the centre crop and the per-channel mean and std on [0, 1] pixels.
    # None where the source publishes none (the registry keeps its presets in data/preprocess.py).
    resize_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # () -> (description, state_dict) of the source's own published weights (timm's); None: --pretrained
    # goes to torchvision's weights API through torchvision_name (recipes/weights.py).
    pretrained: Callable[[], tuple[str, dict]] | None = None
    # Whether only a forward pass tells that an image size suits the model (timm's and the user's models,
    # whose constraints are not tabled here): check_image_size then runs one on the meta device.
    probe: bool = False


def constant(value: float) -> Callable[[int], float]:
    return lambda batch_size: value


def default_learning_rate(batch_size: int) -> float:
    """The rule for every model outside the registry and spec files (torchvision, timm, the user's own):
    0.1 per 256 images, scaled linearly with the global batch, with SGD, momentum 0.9 and weight decay 1e-4.

    Source: torchvision's classification reference recipe (github.com/pytorch/vision,
    references/classification/README.md and train.py: --lr 0.1, --momentum 0.9, --wd 1e-4 at batch 32 on
    8 GPUs, 256 images per step) with Goyal et al. 2017's linear scaling rule ("Accurate, Large Minibatch SGD",
    lr = 0.1 x batch / 256). The registry's ResNets keep the original's batch / 1024 instead; the polynomial
    decay after it (lr_decay_power 2) is the project's, as for every model.
    """
    return 0.1 * batch_size / 256


# ImageNet statistics of torchvision's and most of timm's weights (data/normalization.py has them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def normalization_for(mean, std) -> tuple[str, str | None]:
    """The data module's normalisation name for a mean and std on [0, 1] pixels, and a note when none is
    exact. (x - 0.5) / 0.5 on [0, 1] is synNet's x / 127.5 - 1 on [0, 255], so Inception-style weights
    (timm's ViTs, Inception) map exactly; other statistics (CLIP's, for one) are approximated by ImageNet's,
    which changes no timing and, with --pretrained, slightly shifts accuracy."""
    def close(a, b) -> bool:
        return a is not None and len(a) == 3 and all(abs(x - y) < 1e-4 for x, y in zip(a, b))

    if close(mean, IMAGENET_MEAN) and close(std, IMAGENET_STD):
        return "imagenet", None
    if close(mean, HALF) and close(std, HALF):
        return "minus_one_to_one", None
    return "imagenet", f"its weights' mean {tuple(mean or ())} and std {tuple(std or ())} are approximated by ImageNet's"


def did_you_mean(text: str, known: dict[str, str]) -> str:
    """' (did you mean A, B or C?)' for the names closest to text among known (lower-case key -> name as
    written): difflib's best match and any within 0.05 of its similarity, three at most; '' when none is
    close (similarity under 0.6, difflib.get_close_matches' cutoff)."""
    key = text.lower()
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known), reverse=True)
    close = [known[k] for score, k in scored[:3] if score >= max(0.6, scored[0][0] - 0.05)] if scored else []
    if not close:
        return ""
    return f" (did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?)"
