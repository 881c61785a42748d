"""The model registry: one name, one entry. Model code here knows nothing of training, devices or timing."""

from cnnbench.models.registry import ModelEntry, get_model, model_names, resolve_entry

__all__ = ["ModelEntry", "get_model", "model_names", "resolve_entry"]
