"""`keras:NAME`: a keras.applications model for --framework tensorflow (built by backends/tensorflow/models.py),
and the torchvision classifiers' Keras twins, which --framework tensorflow builds for their names.

Only the applications with a torchvision twin (the same architecture, below) are taken: the twin gives the
entry its input size and minimum, preprocessing and FLOPs (counted on the PyTorch twin by registry.forward_flops,
as for the registry's networks under TensorFlow; keras.applications' ResNets are v1, torchvision's v1.5, so
the Keras ones do slightly fewer FLOPs than counted). PyTorch has no build of them: a PyTorch command refuses
keras:NAME in one line (registry.resolve_with_size). keras.applications' MobileNetV3, EfficientNet and ConvNeXt
carry their own input scaling layers (include_preprocessing), a few elementwise operations more than the twin.
"""

from __future__ import annotations

from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.models.entry import ModelEntry, did_you_mean

PREFIX = "keras:"
# keras.applications (Keras 3.x) name -> torchvision classifier of the same architecture.
TWINS = {
    "ConvNeXtTiny": "convnext_tiny", "ConvNeXtSmall": "convnext_small", "ConvNeXtBase": "convnext_base",
    "ConvNeXtLarge": "convnext_large",
    "DenseNet121": "densenet121", "DenseNet169": "densenet169", "DenseNet201": "densenet201",
    **{f"EfficientNetB{i}": f"efficientnet_b{i}" for i in range(8)},
    "EfficientNetV2S": "efficientnet_v2_s", "EfficientNetV2M": "efficientnet_v2_m", "EfficientNetV2L": "efficientnet_v2_l",
    "InceptionV3": "inception_v3",
    "MobileNetV2": "mobilenet_v2", "MobileNetV3Large": "mobilenet_v3_large", "MobileNetV3Small": "mobilenet_v3_small",
    "ResNet50": "resnet50", "ResNet101": "resnet101", "ResNet152": "resnet152",
    "VGG16": "vgg16", "VGG19": "vgg19",
}
# keras.applications refuses inputs under 32 px (imagenet_utils.obtain_input_shape, min_size=32).
MIN_SIZE = 32


KERAS_OF = {torchvision_name: name for name, torchvision_name in TWINS.items()}


def application(entry: ModelEntry) -> str | None:
    """The keras.applications function that builds the entry under --framework tensorflow: a keras: entry's
    own, a torchvision classifier's twin (mobilenet_v3_large: MobileNetV3Large); None for the others."""
    if entry.source == "keras":
        return entry.name[len(PREFIX):]
    return KERAS_OF.get(entry.torchvision_name or "") if entry.source == "torchvision" else None


def entry(name: str, twin_entry) -> ModelEntry:
    """The entry of keras.applications.`name`; twin_entry(torchvision name) resolves its twin."""
    if name not in TWINS:
        hint = did_you_mean(name, {n.lower(): PREFIX + n for n in TWINS})
        raise UsageError(f"keras:{name} is not one of the keras.applications models cnnbench runs{hint}; those with a "
                         f"torchvision twin (which counts their FLOPs): {', '.join(sorted(TWINS))}")
    twin = twin_entry(TWINS[name])

    def build(image_size: int) -> nn.Module:
        raise UsageError(refusal(PREFIX + name))

    return ModelEntry(PREFIX + name, build, twin.input_size, max(MIN_SIZE, twin.min_input_size), twin.preprocessing,
                      twin.learning_rate, source="keras", resize_size=twin.resize_size, mean=twin.mean, std=twin.std,
                      notes={"source": "keras", "twin": twin.name})


def refusal(name: str) -> str:
    return (f"{name} is a keras.applications model: it runs with --framework tensorflow only; with PyTorch name its "
            f"torchvision twin ({TWINS.get(name[len(PREFIX):], 'a torchvision model')}) or timm:NAME")
