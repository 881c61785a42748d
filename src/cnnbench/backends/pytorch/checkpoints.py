"""Training checkpoints: written by `cnnbench train`, resumed by it, and read by `cnnbench infer`.

Loading is weights-only: a checkpoint is data, and cnnbench never runs code from a file. Every
failure is one line naming the file and the option that chose it (--log-dir, or --weights).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from cnnbench.core.errors import CheckpointNotSaved, UsageError, one_line
from cnnbench.core.files import create_beside

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINT_FILE


def save(log_dir: Path, *, model_name: str, step: int, model, optimizer, scheduler, scaler) -> Path:
    """Atomic: a crash while saving leaves the previous checkpoint intact. A folder that cannot take
    it (not writable, a file in its place, a full disk) is a CheckpointNotSaved naming --log-dir."""
    path = checkpoint_path(log_dir)
    state = {
        "model_name": model_name,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    tmp = None
    try:
        fd, tmp = create_beside(path)
        # A Python file object: a failed write surfaces as OSError, not as a RuntimeError of
        # torch's own file writer that could not be told apart from other runtime errors.
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise CheckpointNotSaved(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def load(path: Path, option: str = "--log-dir") -> object:
    """What the file holds, loaded weights-only; `option` is the one to name when it cannot be read."""
    advice = (f"delete it or point {option} elsewhere" if option == "--log-dir"
              else f"give {option} a state_dict (torch.save(model.state_dict(), FILE)) or a cnnbench checkpoint")
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler's two-line warning about a pickle protocol above 2 came before cnnbench's
            # own line on any file torch.save did not write (issue 23); such a file is loaded or refused here.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{option} {path} does not exist; {advice}") from None
    except pickle.UnpicklingError:
        # PyTorch's own message suggests weights_only=False, i.e. running the file's code: not quoted.
        raise UsageError(
            f"{path} is not a plain state_dict or checkpoint: it holds Python objects, which cnnbench never "
            f"unpickles (that would run code from the file); {advice}"
        ) from None
    except Exception as exc:  # truncated, not a PyTorch file at all: say which, without a traceback
        reason = one_line(exc) if "weights_only" not in str(exc) else type(exc).__name__
        raise UsageError(f"cannot read {path} as a PyTorch file ({reason}); {advice}") from None


def describe(value: object) -> str:
    """What a loaded file holds, in a few words, for messages about the wrong kind of file."""
    if isinstance(value, torch.Tensor):
        return f"a bare tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:3]) + (", ..." if len(value) > 3 else "")
        return f"a dict with keys {keys}" if value else "an empty dict"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def is_checkpoint(state: object) -> bool:
    return isinstance(state, dict) and isinstance(state.get("model"), dict) and "step" in state


def check_model(state: object, model_name: str, path: Path, option: str = "--log-dir") -> None:
    """The file must be a cnnbench checkpoint of `model_name`; the advice names `option`, the one
    that chose the file."""
    if not is_checkpoint(state):
        raise UsageError(f"{path} is not a cnnbench checkpoint (it holds {describe(state)}); "
                         f"delete it or point {option} elsewhere")
    check_written_for(state, model_name, path, option)


def check_written_for(state: dict, model_name: str, path: Path, option: str) -> None:
    """A checkpoint names the model it was written for; a file without that name passes."""
    written_for = state.get("model_name", model_name)
    if str(written_for).lower() != model_name.lower():
        fix = (f"use another {option}" if option == "--log-dir"
               else f"give {option} a file written for {model_name}")
        raise UsageError(f"checkpoint {path} was written for model {written_for}, not {model_name}; {fix}")
