from __future__ import annotations

import pytest

from cnnbench.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory: default log_* and results_* paths land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(capsys):
    """Run `cnnbench ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
