"""The four classic networks, from torchvision's builders: 1000 classes, random initialisation."""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn


def builder(name: str) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        # Global average pooling makes these networks independent of the input size.
        if name == "googlenet":
            # No auxiliary heads: they exist only to help 2014-era training converge and the
            # original's benchmark counts the main tower (6,624,904 parameters).
            return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=1000)
        return getattr(torchvision.models, name)(weights=None, num_classes=1000)

    return build
