"""cnnbench: how fast a machine trains and runs convolutional networks, and whether the answers stay right.

Python API (docs/python-api.md): `cnnbench.train(model, **options)` and `cnnbench.infer(model, **options)`
return the run's record; every mistake raises `cnnbench.CnnbenchError` (`cnnbench.UsageError` for what was
asked, `cnnbench.EngineRefused` for an engine that cannot take the model) with the CLI's one-line message.
"""

import importlib as _importlib
from importlib import metadata as _metadata

from cnnbench.core.errors import CnnbenchError, EngineRefused, OutOfMemory, UsageError

__all__ = ["train", "infer", "CnnbenchError", "UsageError", "EngineRefused", "OutOfMemory", "__version__"]


def _version() -> str:
    """The version written once, in pyproject.toml: the installed package's metadata, or, for a checkout put on
    the path without an install (./setup.sh's offline path), the pyproject.toml beside src/."""
    try:
        return _metadata.version("cnnbench")
    except _metadata.PackageNotFoundError:
        from pathlib import Path

        try:
            import tomllib
        except ImportError:  # Python 3.10
            return "unknown"
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        return "unknown"


__version__ = _version()


def __getattr__(name: str):
    # train and infer on first use (PEP 562): `import cnnbench` (and `cnnbench --version`) stays free of torch,
    # and the package every layer may read __version__ from imports no layer at import time.
    if name in ("train", "infer"):
        return getattr(_importlib.import_module("cnnbench.api"), name)
    raise AttributeError(f"module 'cnnbench' has no attribute {name!r}")
