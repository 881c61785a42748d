"""Keras builds of the registry's models for `--framework tensorflow`: randomly initialised, channels last
(input N x size x size x 3), raw logits (N x classes) that are float32 whatever the Keras dtype policy, so
`mixed_float16` and `mixed_bfloat16` work; every other layer takes its dtype from the global policy.

  resnet50, resnet152, densenet121   keras.applications (weights=None), BatchNorm set to PyTorch's
                                     epsilon 1e-5 and momentum 0.1 (Keras 0.9)
  googlenet                          built here after torchvision's layer structure
  spec files (synNet and others)     built here from synnet's normalised spec, every layer type it has
  keras:NAME, and torchvision names   keras.applications.NAME (weights=None), those with a torchvision twin
  with a Keras twin                  (models/keras_models.py TWINS), BatchNorm set as for the ResNets

Trainable parameters, Keras vs PyTorch, 1000 classes (measured with Keras 3.15 and torchvision 0.29; the
tests assert every number):

  model        Keras        PyTorch      why they differ
  resnet50     25,583,592   25,557,032   keras.applications' ResNet convolutions have biases (+26,560, all
                                         of them conv biases, though BatchNorm follows every conv)
  resnet152    60,268,520   60,192,808   the same conv biases (+75,712)
  densenet121   7,978,856    7,978,856   equal: the same layers, convolutions without bias
  googlenet     6,624,904    6,624,904   equal: built here layer for layer
  synNet       21,619,109   21,619,109   equal: built here from the same spec (at 224 px: its head
                                         flattens, so the count grows with the image)

Keras' `count_params()` also counts BatchNormalization's moving mean and variance, which PyTorch keeps as
buffers; `trainable_parameters` counts what PyTorch's `parameters()` does. Differences that leave the
counts alone: keras.applications' ResNets are ResNet v1 (the stride of a downsampling block on its first
1x1 conv) where torchvision's are v1.5 (on the 3x3), so the Keras ones do fewer FLOPs in those blocks;
DenseNet's first max pool pads with zeros in Keras and -inf in PyTorch, the same values after its ReLU.

A max pool that pads (torchvision's ceil_mode, a spec's explicit padding) pads by mirroring: with at most
half a window padded on a side (synnet refuses more, as PyTorch does; ceil_mode adds at most stride - 1),
every window that takes a mirrored pixel also holds the pixel it mirrors, so the maximum is PyTorch's
-inf-padded one, and int8 quantization (TFLite) sees no infinite range.
"""

from __future__ import annotations

import math
import re

from cnnbench.core.errors import UsageError
from cnnbench.models import keras_models, synnet
from cnnbench.models.registry import ModelEntry, check_image_size
from cnnbench.backends.tensorflow import require

APPLICATIONS = {"resnet50": "ResNet50", "resnet152": "ResNet152", "densenet121": "DenseNet121"}
# keras.applications refuses inputs under 32 px (imagenet_utils.obtain_input_shape, min_size=32).
APPLICATIONS_MIN_SIZE = 32
NO_BUILD = ("no TensorFlow build of {}: --framework tensorflow runs resnet50, resnet152, densenet121, googlenet, "
            "spec files, keras:NAME and the torchvision models with a keras.applications twin")
# synnet's activation names -> Keras'; hard_silu is x * relu6(x + 3) / 6, PyTorch's Hardswish.
KERAS_ACTIVATIONS = {"relu": "relu", "relu6": "relu6", "hardswish": "hard_silu", "silu": "silu"}
# torchvision's Inception(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) after its name, the
# input channels left out (Keras knows them); between them the max pools as (name, window, stride).
GOOGLENET_BLOCKS = (
    ("inception3a", 64, 96, 128, 16, 32, 32), ("inception3b", 128, 128, 192, 32, 96, 64), ("maxpool3", 3, 2),
    ("inception4a", 192, 96, 208, 16, 48, 64), ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64), ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128), ("maxpool4", 2, 2),
    ("inception5a", 256, 160, 320, 32, 128, 128), ("inception5b", 384, 192, 384, 48, 128, 128),
)


def build(entry: ModelEntry, image_size: int):
    """A randomly initialised keras.Model of the entry at image_size x image_size x 3: float32 logits
    (N, entry.num_classes). The registry's four classic networks, spec files and keras.applications models
    (keras:NAME and torchvision's names with a Keras twin, keras_models.application) have one."""
    check_buildable(entry, image_size)
    check_image_size(entry, image_size)  # the PyTorch commands' check, with their messages
    if entry.spec_path is not None:
        return _from_spec(synnet.load_spec(entry.spec_path), image_size, entry.name)
    if entry.name == "googlenet":
        return _googlenet(image_size, entry.num_classes)
    return _application(entry, image_size)


def check_buildable(entry: ModelEntry, image_size: int | None = None) -> None:
    """The one line saying the entry has no Keras build here (a torchvision-only model), or, given the size,
    that keras.applications refuses it (under 32 px, where PyTorch's densenet121 takes 29): before any work."""
    if entry.spec_path is None and entry.name not in (*APPLICATIONS, "googlenet") and not keras_models.application(entry):
        raise UsageError(NO_BUILD.format(entry.name))
    if entry.spec_path is None and (entry.name in APPLICATIONS or keras_models.application(entry)) and image_size is not None \
            and image_size < APPLICATIONS_MIN_SIZE:
        raise UsageError(f"--image-size {image_size} is too small for {entry.name} with --framework tensorflow: "
                         f"keras.applications builds it from {APPLICATIONS_MIN_SIZE} px")


def trainable_parameters(model) -> int:
    """What PyTorch's `sum(p.numel() for p in model.parameters())` counts: BatchNorm's moving statistics,
    which `count_params()` includes, are buffers there."""
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


def _keras():
    require()
    import keras

    # A KERAS_BACKEND of jax or torch would build a model that TensorFlow's loops cannot run.
    if keras.backend.backend() != "tensorflow":
        raise UsageError(f"--framework tensorflow needs Keras' TensorFlow backend, but Keras is set to "
                         f"{keras.backend.backend()} (KERAS_BACKEND or ~/.keras/keras.json); set KERAS_BACKEND=tensorflow")
    return keras


def _logits(inputs, x, name: str):
    """The model, its output cast to float32: under a mixed policy the classifier computes in 16 bits, and a
    float32 linear activation keeps the logits (and the loss computed from them) float32."""
    keras = _keras()
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=re.sub(r"[^\w.-]", "_", name))  # Keras refuses '/' in names


def _application(entry: ModelEntry, image_size: int):
    keras = _keras()
    base = getattr(keras.applications, APPLICATIONS.get(entry.name) or keras_models.application(entry))(
        weights=None, include_top=True, classes=entry.num_classes, classifier_activation=None,
        input_shape=(image_size, image_size, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # torchvision's nn.BatchNorm2d defaults; keras.applications has 1.001e-5 (once cuDNN's floor for
            # TF's fused kernel, which Keras 3 no longer uses) and momentum 0.99. Both are read at call time.
            layer.epsilon, layer.momentum = 1e-5, 0.9
    if entry.name not in APPLICATIONS:  # nested: its own layers may be named logits too (MobileNetV3's classifier)
        inputs = keras.Input((image_size, image_size, 3))
        return _logits(inputs, base(inputs), entry.name)
    return _logits(base.input, base.output, entry.name)


# ---------------------------------------------------------------- GoogLeNet


def _googlenet(image_size: int, num_classes: int):
    """torchvision's GoogLeNet without auxiliary heads or transform_input: the same layers, channels last.
    Layers carry torchvision's module names (conv1, maxpool1, inception3a, ...) for each block's output."""
    keras = _keras()
    inputs = keras.Input((image_size, image_size, 3))
    x = _basic_conv(inputs, 64, 7, stride=2, padding=3, name="conv1")
    x = _ceil_max_pool(x, 3, 2, name="maxpool1")
    x = _basic_conv(x, 64, 1, name="conv2")
    x = _basic_conv(x, 192, 3, padding=1, name="conv3")
    x = _ceil_max_pool(x, 3, 2, name="maxpool2")
    for name, *sizes in GOOGLENET_BLOCKS:
        x = _ceil_max_pool(x, *sizes, name=name) if name.startswith("maxpool") else _inception(x, name, *sizes)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    x = keras.layers.Dense(num_classes, kernel_initializer=_googlenet_init(), name="fc")(x)
    return _logits(inputs, x, "googlenet")


def _googlenet_init():
    # torchvision's init_weights: trunc_normal_(std=0.01, a=-2, b=2), cut at 200 sigma, i.e. a plain normal.
    return _keras().initializers.RandomNormal(stddev=0.01)


def _basic_conv(x, filters: int, kernel: int, name: str, stride: int = 1, padding: int = 0):
    """torchvision's BasicConv2d: conv without bias, BatchNorm (eps 0.001, PyTorch's momentum 0.1), ReLU."""
    layers = _keras().layers
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, kernel_initializer=_googlenet_init(),
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=0.001, momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=name)(x)


def _inception(x, name: str, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int, pool_proj: int):
    """torchvision's Inception block; its "5x5" branch is a 3x3 conv as in torchvision (vision issue 906)."""
    branch1 = _basic_conv(x, ch1x1, 1, name=f"{name}_branch1")
    branch2 = _basic_conv(_basic_conv(x, ch3x3red, 1, name=f"{name}_branch2a"), ch3x3, 3, padding=1,
                          name=f"{name}_branch2b")
    branch3 = _basic_conv(_basic_conv(x, ch5x5red, 1, name=f"{name}_branch3a"), ch5x5, 3, padding=1,
                          name=f"{name}_branch3b")
    pooled = _ceil_max_pool(x, 3, 1, padding=1, name=f"{name}_branch4_pool")
    branch4 = _basic_conv(pooled, pool_proj, 1, name=f"{name}_branch4")
    return _keras().layers.Concatenate(name=name)([branch1, branch2, branch3, branch4])


def _ceil_max_pool(x, window: int, stride: int, padding: int = 0, name: str | None = None):
    """PyTorch's MaxPool2d(window, stride, padding, ceil_mode=True): the output size rounds up, the last
    window reaching past the input (padding the bottom/right), unless it would start in the right padding."""
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size + 2 * padding - window) // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        pads.append((padding, (out - 1) * stride + window - size - padding))
    return _max_pool(x, (window, window), (stride, stride), tuple(pads), name)


def _max_pool(x, window: tuple[int, int], stride: tuple[int, int], pads: tuple, name: str | None = None):
    """MaxPooling2D after padding ((top, bottom), (left, right)) by mirroring: PyTorch's -inf padding for
    pads of at most half the window (module docstring)."""
    keras = _keras()
    if any(p for pair in pads for p in pair):
        x = keras.ops.pad(x, [(0, 0), *pads, (0, 0)], mode="symmetric")
    return keras.layers.MaxPooling2D(window, stride, name=name)(x)


# ---------------------------------------------------------------- spec files


def _from_spec(spec: dict, image_size: int, name: str):
    """The spec's network in Keras, layer for layer as synnet.build_from_spec builds it in PyTorch (which has
    checked every shape at this size), so the trainable parameters and the output are the same."""
    keras = _keras()
    inputs = keras.Input((image_size, image_size, spec["input"]["channels"]))
    x = _SpecBuilder(spec).sequence([layer for group in spec["groups"] for layer in group["layers"]], inputs)
    fc = spec["head"]["fully_connected"]
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(fc["outputs"], use_bias=fc["bias"], name="fc")(x)  # glorot_uniform, zero bias: synnet's
    return _logits(inputs, x, name)


class _SpecBuilder:
    """synnet._Builder's walk through a normalised spec, making Keras layers instead of PyTorch modules."""

    def __init__(self, spec: dict):
        bn = spec["conv_defaults"]["batch_norm"]
        self.bn = bn if isinstance(bn, dict) else synnet.DEFAULT_BATCH_NORM
        self.layers = _keras().layers
        self.steps = {"conv": self.conv, "maxpool": self.pool, "avgpool": self.pool, "globalpool": self.globalpool,
                      "batch_norm": self.batch_norm, "activation": self.activation, "residual": self.residual,
                      "dense": self.dense, "branches": self.branches, "gate": self.gate}

    def sequence(self, layers: list[dict], x):
        for layer in layers:
            x = self.steps[layer["type"]](layer, x)
        return x

    def conv(self, layer: dict, x):
        channels, filters, padding = x.shape[-1], layer["filters"], layer["padding"]
        if padding not in ("same", "valid"):  # pixels on each side, as Conv2d's own padding
            x = self.layers.ZeroPadding2D(tuple(padding))(x)
            padding = "valid"
        # Keras' 'same' is TensorFlow's, the spec's convention (odd pixel at the bottom/right, as synnet pads).
        options = {"strides": tuple(layer["stride"]), "padding": padding, "use_bias": layer["bias"]}
        groups = channels if layer["groups"] == "depthwise" else layer["groups"]
        if groups == channels > 1:
            x = self.layers.DepthwiseConv2D(tuple(layer["kernel"]), depth_multiplier=filters // channels,
                                            depthwise_initializer=_depthwise_init(channels, filters // channels),
                                            **options)(x)
        else:
            x = self.layers.Conv2D(filters, tuple(layer["kernel"]), groups=groups, **options)(x)
        if layer["batch_norm"]:
            x = self.batch_norm(layer, x)
        return self.activation({"function": layer["activation"]}, x)

    def pool(self, layer: dict, x):
        window, stride = tuple(layer["window"]), tuple(layer["stride"])
        rows, columns = (0, 0) if layer["padding"] == "valid" else layer["padding"]
        if layer["type"] == "maxpool":
            return _max_pool(x, window, stride, ((rows, rows), (columns, columns)))
        if rows or columns:  # zeros that count in the mean: AvgPool2d's default count_include_pad=True
            x = self.layers.ZeroPadding2D((rows, columns))(x)
        return self.layers.AveragePooling2D(window, stride)(x)

    def globalpool(self, layer: dict, x):
        cls = self.layers.GlobalAveragePooling2D if layer["pool"] == "avg" else self.layers.GlobalMaxPooling2D
        return cls(keepdims=True)(x)  # 1x1 pixels, as AdaptiveAvgPool2d(1): later layers still see an image

    def batch_norm(self, layer: dict, x):
        # Keras' momentum is TF's decay, the spec's momentum_tf; no affine: neither scale nor offset.
        return self.layers.BatchNormalization(epsilon=self.bn["epsilon"], momentum=self.bn["momentum_tf"],
                                              center=self.bn["affine"], scale=self.bn["affine"])(x)

    def activation(self, layer: dict, x):
        function = layer["function"]
        return x if function == "none" else self.layers.Activation(KERAS_ACTIVATIONS[function])(x)

    def gate(self, layer: dict, x):
        # synnet.Gate: pool, reduce (1x1, bias), activation, expand (1x1, bias), sigmoid or hardsigmoid (Keras 3's
        # hard_sigmoid is relu6(x + 3) / 6, PyTorch's), times the input.
        channels = x.shape[-1]
        scale = self.layers.GlobalAveragePooling2D(keepdims=True)(x)
        scale = self.layers.Conv2D(synnet.squeezed(channels, layer["reduction"]), 1)(scale)
        scale = self.activation({"function": layer["activation"]}, scale)
        scale = self.layers.Conv2D(channels, 1)(scale)
        scale = self.layers.Activation({"sigmoid": "sigmoid", "hardsigmoid": "hard_sigmoid"}[layer["function"]])(scale)
        return self.layers.Multiply()([scale, x])

    def residual(self, layer: dict, x):
        body = self.sequence(layer["body"], x)
        shortcut = x
        if layer["projection"] is not False:
            shortcut = self.conv(synnet.projection_conv(layer["projection"], body.shape[-1]), x)
        return self.activation({"function": layer["activation"]}, self.layers.Add()([body, shortcut]))

    def dense(self, layer: dict, x):
        for _ in range(layer["repeat"]):
            x = self.layers.Concatenate()([x, self.sequence(layer["body"], x)])
        return x

    def branches(self, layer: dict, x):
        outputs = [self.sequence(branch, x) for branch in layer["branches"]]  # an empty branch passes x through
        return outputs[0] if len(outputs) == 1 else self.layers.Concatenate()(outputs)


def _depthwise_init(channels: int, multiplier: int):
    """Glorot-uniform with PyTorch's fans for a depthwise conv. Its weight (channels x multiplier, 1, kh, kw)
    has fan_in kh*kw and fan_out channels*multiplier*kh*kw, where Keras' kernel (kh, kw, channels, multiplier)
    gives kh*kw*channels and kh*kw*multiplier; the scale makes Keras' limit sqrt(3 * scale / fan_avg) PyTorch's."""
    scale = (channels + multiplier) / (1 + channels * multiplier)
    return _keras().initializers.VarianceScaling(scale=scale, mode="fan_avg", distribution="uniform")
