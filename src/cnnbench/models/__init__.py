"""The models: one resolver (registry.resolve_entry) from a name or reference to a ModelEntry (entry.py).
Model code here knows nothing of training, devices or timing."""

from cnnbench.models.entry import ModelEntry
from cnnbench.models.registry import get_model, model_names, resolve_entry

__all__ = ["ModelEntry", "get_model", "model_names", "resolve_entry"]
