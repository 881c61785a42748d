"""The user's own network: `path/to/file.py:FUNCTION` or `package.module:FUNCTION` returning an nn.Module.

FUNCTION is called with `num_classes=1000` when its signature takes `num_classes` (else its head is its
own: the classes are read from the output of a forward pass), and with `image_size=` the run's size when
it takes `image_size`. The default input size is 224 (--image-size sets another); whether a size suits the
network is found by running it once on the meta device (shapes only), or on the CPU at batch 1 when the
network computes with tensor values. Learning rate: entry.default_learning_rate.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.models.entry import ModelEntry, default_learning_rate

DEFAULT_SIZE = 224
IDENTIFIER = r"[A-Za-z_]\w*"
FILE_REFERENCE = re.compile(rf"^(?P<path>.+\.py):(?P<function>{IDENTIFIER})$")
MODULE_REFERENCE = re.compile(rf"^(?P<module>{IDENTIFIER}(?:\.{IDENTIFIER})*):(?P<function>{IDENTIFIER})$")


def file_entry(path_text: str, function: str) -> ModelEntry:
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"model file {path_text} does not exist; give path/to/file.py:FUNCTION, FUNCTION returning "
                         "an nn.Module")
    # A name of its own per file, so two files called net.py do not replace each other in sys.modules.
    module_name = "cnnbench_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as an import would: dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: a syntax error, a missing import, anything it raises
        raise UsageError(f"model file {path_text} cannot be imported ({one_line(exc)})") from None
    return _entry(f"{path.name}:{function}", module, function, path_text, "file")


def module_entry(module_name: str, function: str) -> ModelEntry:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or its own import failed
        raise UsageError(f"model module {module_name} cannot be imported ({one_line(exc)}); give "
                         "package.module:FUNCTION of a module on the Python path, or path/to/file.py:FUNCTION") from None
    return _entry(f"{module_name}:{function}", module, function, module_name, "module")


def _entry(name: str, module, function: str, where: str, source: str) -> ModelEntry:
    factory = getattr(module, function, None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise UsageError(f"{where} has no function {function!r}; it defines: {', '.join(defined) or 'no functions'}")
    parameters = _parameters(factory)
    takes_classes = "num_classes" in parameters

    def build(image_size: int) -> nn.Module:
        kwargs = {"num_classes": 1000} if takes_classes else {}
        if "image_size" in parameters:
            kwargs["image_size"] = image_size
        try:
            model = factory(**kwargs)
        except Exception as exc:  # the user's code
            raise UsageError(f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed ({one_line(exc)})") from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"{name} returned {type(model).__name__}, not a torch.nn.Module; return the network")
        return model

    classes = 1000 if takes_classes else probe_classes(name, build, DEFAULT_SIZE, strict=False) or 1000
    return ModelEntry(name, build, DEFAULT_SIZE, 1, "imagenet", default_learning_rate, num_classes=classes,
                      source=source, probe=True, notes={"source": source, "where": where})


def _parameters(factory) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return set()


def probe_classes(name: str, build, image_size: int, strict: bool = True) -> int | None:
    """The logits per image of the model at image_size, from one forward pass on the meta device (the CPU at
    batch 1 where the model computes with tensor values); a model that cannot take the size, or whose output
    is not (batch, classes): a UsageError, or None when not strict."""
    import torch

    try:
        try:
            with torch.device("meta"):
                out = build(image_size).eval()(torch.empty(1, 3, image_size, image_size))
        except (NotImplementedError, RuntimeError):  # a value asked of a meta tensor (.item(), .tolist())
            with torch.no_grad():
                out = build(image_size).eval()(torch.zeros(1, 3, image_size, image_size))
    except UsageError:
        raise
    except Exception as exc:  # the model's own complaint about the shape
        if not strict:
            return None
        raise UsageError(f"--image-size {image_size} does not suit {name} ({one_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{name} returns {what}; a classifier must return (batch, classes) logits")
    return int(out.shape[1])


def parse(reference: str) -> tuple[str, str, str] | None:
    """('file', path, function), ('module', module, function) or None when the text is neither form."""
    match = FILE_REFERENCE.match(reference)
    if match:
        return "file", match["path"], match["function"]
    match = MODULE_REFERENCE.match(reference)
    if match:
        return "module", match["module"], match["function"]
    return None


def looks_like_reference(text: str) -> bool:
    """A file reference, or a dotted module one (`models.nets:build`): inside a list, where the original's
    scripts also separate names with ':', an undotted `name:function` cannot be told from two names."""
    kind = parse(text)
    return kind is not None and (kind[0] == "file" or "." in kind[1])

