"""Which weights an inference run uses, in order of precedence, and loading them safely.

1. --weights FILE: a state_dict (torchvision's published files load as they are) or a cnnbench checkpoint;
2. --pretrained: torchvision's ImageNet weights through its weights API (cached under TORCH_HOME), timm's own for timm:NAME;
3. the training checkpoint in --log-dir (default: where `cnnbench train` saved it);
4. --random-weights: a pure speed run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnbench.backends.pytorch import checkpoints
from cnnbench.core.errors import UsageError
from cnnbench.models.registry import ModelEntry


@dataclass
class Weights:
    source: str  # "file" | "pretrained" | "checkpoint" | "random"
    description: str
    state_dict: dict | None


# What to change when the weights do not fit the model, by where they came from.
MISMATCH_ADVICE = {
    "file": "give --weights a state_dict or checkpoint written for {model}",
    "checkpoint": "the checkpoint was written for another form of {model} (spec or --image-size changed?); "
                  "use another --log-dir or delete the checkpoint",
    "pretrained": "use --weights FILE or a training checkpoint instead of --pretrained",
}


def resolve(entry: ModelEntry, *, weights_file: str | None, pretrained: bool, random_weights: bool, log_dir: Path) -> Weights:
    if weights_file:
        path = Path(weights_file)
        if not path.is_file():
            raise UsageError(f"--weights {path} does not exist; give the path of a state_dict or checkpoint file")
        state = checkpoints.load(path, option="--weights")
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            checkpoints.check_written_for(state, entry.name, path, "--weights")
            state = state["model"]
        check_state_dict(state, path)
        return Weights("file", f"file {path}", state)
    if pretrained:
        return Weights("pretrained", *(entry.pretrained() if entry.pretrained else _torchvision_pretrained(entry)))
    ckpt = checkpoints.checkpoint_path(log_dir)
    if ckpt.exists():
        state = checkpoints.load(ckpt)
        checkpoints.check_model(state, entry.name, ckpt)
        return Weights("checkpoint", f"checkpoint {ckpt} (step {state.get('step')})", state["model"])
    if random_weights:
        return Weights("random", "random initialisation (--random-weights: speed only, accuracy is meaningless)", None)
    raise missing(entry, log_dir)


def check_state_dict(state: object, path: Path) -> None:
    """A --weights file must hold a dict of tensors; anything else is named, with what was expected."""
    expected = ("expected a state_dict (a dict of tensor names to tensors, as torch.save(model.state_dict(), FILE) "
                "writes) or a cnnbench checkpoint; give --weights such a file")
    if not isinstance(state, dict) or not state:
        raise UsageError(f"--weights {path} holds {checkpoints.describe(state)}; {expected}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"--weights {path} holds {checkpoints.describe(state)}, whose entry {key!r} is "
                             f"{checkpoints.describe(value)}, not a tensor; {expected}")


def missing(entry: ModelEntry, log_dir: Path) -> UsageError:
    return UsageError(
        f"no weights for {entry.name}: no checkpoint in {log_dir}; run ./train.sh {entry.name} first, "
        "or pass --weights FILE, --pretrained or --random-weights"
    )


def _torchvision_pretrained(entry: ModelEntry) -> tuple[str, dict]:
    import torchvision
    from torch.hub import get_dir

    if entry.torchvision_name is None:
        raise UsageError(f"--pretrained: torchvision publishes no weights for {entry.name}; use --weights FILE or a training checkpoint")
    weights = torchvision.models.get_model_weights(entry.torchvision_name).DEFAULT
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # offline, proxy, truncated download
        raise UsageError(
            f"--pretrained: cannot fetch torchvision's {weights} ({type(exc).__name__}); "
            f"offline, put {filename} (from {weights.url}) into {Path(get_dir()) / 'checkpoints'} or use --weights FILE"
        ) from None
    return f"torchvision {weights}", state


def load_into(model: nn.Module, entry: ModelEntry, weights: Weights) -> None:
    """Load with strict shape checking; a mismatch names the first offending tensor."""
    if weights.state_dict is None:
        return
    state = dict(weights.state_dict)
    if entry.name == "googlenet" and any(k.startswith(("aux1.", "aux2.")) for k in state):
        # torchvision's published GoogLeNet file carries the auxiliary heads and was trained with
        # transform_input=True (torchvision.models.googlenet); cnnbench's model has no aux heads.
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        model.transform_input = True
    problem = _mismatch(model.state_dict(), state)
    if problem:
        advice = MISMATCH_ADVICE.get(weights.source, "").format(model=entry.name)
        raise UsageError(f"{weights.description} does not fit {entry.name}: {problem}; "
                         f"its tensor names or shapes do not match the model{'; ' + advice if advice else ''}")
    model.load_state_dict(state)


def _mismatch(own: dict, state: dict) -> str:
    """The first offending tensor and how many differ, or '' when the state fits the model."""
    missing_names = [k for k in own if k not in state]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own]
    count = len(missing_names) + len(wrong_shape) + len(extra)
    if not count:
        return ""
    if missing_names:
        first = f"tensor {missing_names[0]!r} is missing from it"
    elif wrong_shape:
        name = wrong_shape[0]
        first = (f"tensor {name!r} has shape {tuple(state[name].shape)} in the file but "
                 f"{tuple(own[name].shape)} in the model")
    else:
        first = f"unexpected tensor {extra[0]!r} in the file"
    return first + (f" ({count} tensors differ)" if count > 1 else "")


def digest(model: nn.Module) -> str:
    """sha256 over the model's tensors: the cache key of everything built from these weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
