"""The one model resolver of every command: a name or reference -> a ModelEntry (entry.py).

Accepted, in this order (names match case-insensitively where they are names):
  the registered five (the original's four networks and synNet)      source "registry"
  a JSON spec file (synNet's format)                                  source "spec"
  `timm:NAME` (the .[timm] extra, timm_models.py)                     source "timm"
  `keras:NAME`, keras.applications for --framework tensorflow         source "keras"
  `path/to/file.py:FUNCTION`, `package.module:FUNCTION` (user_models) source "file" / "module"
  any torchvision classification model (torchvision_models.py)        source "torchvision"
  `python:NAME`, an nn.Module instance given to cnnbench.train/infer  source "python"
    (register_instance: held in this process only; a child process cannot resolve it)
An unknown name fails in one line with the closest known names (registry, torchvision and timm's).
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

from torch import nn

from cnnbench.core.errors import UsageError
from cnnbench.models import entry as entry_module
from cnnbench.models import keras_models, synnet, timm_models, torchvision_models, user_models
from cnnbench.models.entry import ModelEntry, constant as _constant

__all__ = ["ModelEntry", "resolve_entry", "register_instance", "unregister_instance", "resolve_any", "resolve_with_size", "check_image_size", "forward_flops",
           "count_parameters", "get_model", "model_names", "model_list", "is_reference"]


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


def _spec_entry(path: Path, source: str = "spec") -> ModelEntry:
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
        source=source,
    )


def _optional_float(section: dict, key: str) -> float | None:
    return None if section.get(key) is None else float(section[key])


def _parse_momentum(optimizer: object, default: float) -> float:
    if isinstance(optimizer, dict):
        return float(optimizer.get("momentum", default))
    return default


def model_names() -> list[str]:
    """The registered five (what `cnnbench models` and the sweeps' defaults list)."""
    return sorted([*_REGISTRY, "synNet"], key=str.lower)


KERAS_REFERENCE = re.compile(r"^keras:[A-Za-z]\w*$")
TIMM_REFERENCE = re.compile(r"^timm:[\w.\-]+$")


INSTANCE_PREFIX = "python:"
_INSTANCES: dict[str, ModelEntry] = {}  # python:NAME -> the entry of an nn.Module instance (cnnbench.api)


def register_instance(module: nn.Module, name: str | None = None) -> str:
    """A reference, `python:NAME`, that the resolver turns into an entry building copies of `module` (the Python
    API's in-memory model). NAME: `name`, else the class's name, with -2, -3, ... where another instance holds
    it. Each build is a deep copy, so a run trains or converts its own copy and leaves the caller's module (and
    the fp32 reference the guard builds) as they were; its weights are the module's own (entry.pretrained).
    The instance lives in this process only: nothing is pickled, and a child process (a sweep's, a launched
    data-parallel job's) cannot resolve it (one line says so)."""
    import copy

    if not isinstance(module, nn.Module):
        raise UsageError(f"model must be a name or reference string or a torch.nn.Module, not {type(module).__name__}")
    base = name or type(module).__name__
    if not re.fullmatch(r"[\w.\-]+", base):
        raise UsageError(f"model name {base!r}: use letters, digits, '_', '.' and '-' (it names files and table rows)")
    reference, n = INSTANCE_PREFIX + base, 1
    while reference in _INSTANCES:
        n += 1
        reference = f"{INSTANCE_PREFIX}{base}-{n}"

    def build(image_size: int) -> nn.Module:
        return copy.deepcopy(module)

    def own_weights() -> tuple[str, dict]:
        return f"the module's own weights ({type(module).__name__} instance)", module.state_dict()

    _INSTANCES[reference] = ModelEntry(reference.removeprefix(INSTANCE_PREFIX), build, user_models.DEFAULT_SIZE, 1,
                                       "imagenet", entry_module.default_learning_rate, source="python", probe=True,
                                       pretrained=own_weights, notes={"source": "python", "where": "cnnbench.api"})
    return reference


def unregister_instance(reference: str) -> None:
    """Forget an instance registered by register_instance (the API does once its run is over)."""
    _INSTANCES.pop(reference, None)


def resolve_entry(name: str) -> ModelEntry:
    """The one resolver: a registered name (any case), a spec file, timm:NAME, keras:NAME, a user's
    file.py:FUNCTION or package.module:FUNCTION, an nn.Module instance registered in this process
    (python:NAME), or a torchvision classifier; else one line with the closest names."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    if name.startswith(INSTANCE_PREFIX):
        raise UsageError(f"model {name}: an nn.Module given to the Python API exists only in the process that was given "
                         "it (cnnbench.train / cnnbench.infer run it there); a child process cannot resolve it: give "
                         "a sweep a file.py:FUNCTION or package.module:FUNCTION reference instead")
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key == "synnet":
        with resources.as_file(resources.files("cnnbench.models") / "specs" / BUILTIN_SPEC) as path:
            return _spec_entry(Path(path), source="registry")
    if key.startswith(timm_models.PREFIX):
        return timm_models.entry(name[len(timm_models.PREFIX):])
    if key.startswith(keras_models.PREFIX):
        return keras_models.entry(name[len(keras_models.PREFIX):], resolve_entry)
    reference = user_models.parse(name)
    if reference:
        kind, where, function = reference
        return user_models.file_entry(where, function) if kind == "file" else user_models.module_entry(where, function)
    path = Path(name)
    if path.suffix.lower() == ".py":
        raise UsageError(f"model {name}: name the function that builds the network, as {name}:FUNCTION")
    if key in torchvision_models.names() and path.suffix.lower() != ".json":  # before a folder that has its name
        return torchvision_models.entry(key)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise UsageError(f"model spec file {name} does not exist; give a JSON spec file or one of: {', '.join(model_names())}")
        return _spec_entry(path)
    raise _unknown(name)


# The name profiling and synth used for the resolver when the benchmark commands kept to the registry.
resolve_any = resolve_entry


def _unknown(name: str) -> UsageError:
    """The closest known names (registry, torchvision, and timm's written timm:NAME when timm is installed,
    compared without the prefix so that a typo of a timm architecture finds it)."""
    known = {n.lower(): timm_models.PREFIX + n for n in timm_models.names()}
    known.update({n: n for n in torchvision_models.names()})
    known.update({n.lower(): n for n in model_names()})
    hint = entry_module.did_you_mean(name.lower().removeprefix(timm_models.PREFIX), known)
    return UsageError(f"unknown model {name!r}{hint}; accepted: the registered models ({', '.join(model_names())}), "
                      "any torchvision classification model (torchvision.models.list_models()), timm:NAME (timm.list_models(), "
                      f"{timm_models.INSTALL}), keras:NAME with --framework tensorflow, path/to/file.py:FUNCTION, "
                      "package.module:FUNCTION or a path to a JSON spec file")


def is_reference(text: str) -> bool:
    """Whether text is one model reference that contains ':' (timm:NAME, keras:NAME, file.py:FUNCTION,
    package.module:FUNCTION), so that lists which also use ':' as a separator (the original's --models, synth's
    MODEL:WEIGHT targets) keep it whole."""
    return bool(TIMM_REFERENCE.match(text) or KERAS_REFERENCE.match(text) or user_models.looks_like_reference(text))


def model_list(text: str, what: str = "--models") -> list[str]:
    """A comma-separated model list. The original's scripts also separate with ; : - and spaces, and so does
    this, except inside a spec file's path (a '/' or .json) and a reference with ':' (is_reference)."""
    items: list[str] = []
    for piece in re.split(r"[,;\s]+", text):
        if "/" in piece or piece.endswith(".json") or is_reference(piece):
            items.append(piece)
        else:
            items += re.split(r"[:\-]", piece)
    items = [t for t in items if t]
    if not items:
        raise UsageError(f"{what} is empty; give a comma-separated list")
    return items


def get_model(name: str, image_size: int | None = None) -> nn.Module:
    entry = resolve_entry(name)
    size = image_size or entry.input_size
    check_image_size(entry, size)
    return entry.build(size)


def resolve_with_size(model: str, image_size: int | None, framework: str = "pytorch") -> tuple[ModelEntry, int]:
    """The model's entry and the image size a run uses (the option's, else the model's own), checked. A model
    whose classes only a forward pass tells (the user's) gets them at this size. keras:NAME only with
    framework tensorflow, whose backend checks what it can build."""
    entry = resolve_entry(model)
    size = image_size or entry.input_size
    if entry.source == "keras" and framework != "tensorflow":
        raise UsageError(keras_models.refusal(entry.name))
    if entry.source in ("file", "module", "python"):  # one forward pass checks the size and counts the classes
        return dataclasses.replace(entry, num_classes=user_models.probe_classes(entry.name, entry.build, size)), size
    check_image_size(entry, size)
    return entry, size


def check_image_size(entry: ModelEntry, image_size: int) -> None:
    """Large enough for the network, and small enough that its tensors can be described at all (a
    spec's fully connected layer grows with the image's area; built on the meta device: shapes only).
    timm's and the user's models run one forward pass there: nothing tables their constraints."""
    if image_size < entry.min_input_size:
        raise UsageError(
            f"--image-size {image_size} is too small for {entry.name}: it needs at least {entry.min_input_size} px "
            f"(its default is {entry.input_size})"
        )
    if entry.source == "keras":
        return  # no PyTorch build; the TensorFlow backend checks its own
    if entry.probe:
        user_models.probe_classes(entry.name, entry.build, image_size)
        return
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

    Counted on the meta device: shapes only, no memory and no arithmetic; a keras: entry on its torchvision
    twin. A model that computes with tensor values while built or run (torchvision's RegNets round their
    widths with .tolist(); a user's network may branch on a value) cannot run there: it is counted on the CPU
    at batch 1, the same count.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = image_size or entry.input_size
    if entry.source == "keras":  # no PyTorch build: its torchvision twin's count (keras_models.py)
        entry = resolve_entry(entry.notes["twin"])
    counter = FlopCounterMode(display=False)
    try:
        with torch.device("meta"):
            model = entry.build(size).eval()
            x = torch.empty(1, 3, size, size)
            with counter, torch.no_grad():
                model(x)
    except (NotImplementedError, RuntimeError):  # a value asked of a meta tensor (.item(), .tolist())
        counter = FlopCounterMode(display=False)
        model, x = entry.build(size).eval(), torch.zeros(1, 3, size, size)
        with counter, torch.no_grad():
            model(x)
    return int(counter.get_total_flops())
