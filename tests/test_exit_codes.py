"""Exit statuses CI can trust: a crash (a bug) is 70 with its traceback and one line saying so, never the 1 of
a regression; the table of statuses is in --help's epilog; the version is the package's, written once."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import cnnbench
from cnnbench import cli
from cnnbench.core import errors

REPO = Path(__file__).resolve().parents[1]


def test_version_is_pyproject_s_and_printed_by_version(capsys):
    written = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert cnnbench.__version__ == written == metadata.version("cnnbench")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnnbench {written}"


def test_help_epilog_lists_every_exit_status(capsys):
    assert cli.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for code, meaning in errors.EXIT_CODES:
        assert f"{code:>3}  {meaning}" in help_text
    codes = [code for code, _ in errors.EXIT_CODES]
    assert len(set(codes)) == len(codes) and errors.EXIT_CRASH == 70 and errors.EXIT_CRASH != errors.EXIT_REGRESSION


def test_an_uncaught_exception_exits_70_with_the_traceback_and_one_line_saying_it_is_a_bug(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_models", broken)
    assert cli.main(["models"]) == errors.EXIT_CRASH
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1] == (f"cnnbench: internal error (exit 70): this is a bug in cnnbench "
                                            f"{cnnbench.__version__}, not in what you asked; please report the "
                                            "traceback above with the command line")


def test_a_user_mistake_stays_exit_2_without_a_traceback(capsys):
    assert cli.main(["train", "no-such-model-xyz"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
