"""cnnbench: how fast a machine trains and runs convolutional networks, and whether the answers stay right."""

from importlib import metadata as _metadata


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
