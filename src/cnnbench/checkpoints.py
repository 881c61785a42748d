"""Training checkpoints: written by `cnnbench train`, resumed by it, and read by `cnnbench infer`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from cnnbench.errors import UsageError

CHECKPOINT_FILE = "checkpoint.pt"


def default_log_dir(model_name: str, batch_size: int) -> Path:
    # The original's scripts keep each configuration's checkpoint in ./log_<model>_<batch>.
    return Path(f"log_{model_name}_{batch_size}")


def checkpoint_path(log_dir: Path) -> Path:
    return Path(log_dir) / CHECKPOINT_FILE


def save(log_dir: Path, *, model_name: str, step: int, model, optimizer, scheduler, scaler) -> Path:
    """Atomic: a crash while saving leaves the previous checkpoint intact."""
    path = checkpoint_path(log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model_name": model_name,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: Path) -> dict:
    try:
        # weights_only: a checkpoint is data; never execute code from it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # a truncated or foreign file: say which, do not dump a traceback
        raise UsageError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); delete it or point --log-dir elsewhere") from None


def check_model(state: dict, model_name: str, path: Path) -> None:
    if state.get("model_name", model_name).lower() != model_name.lower():
        raise UsageError(
            f"checkpoint {path} was written for model {state.get('model_name')}, not {model_name}; use another --log-dir"
        )
