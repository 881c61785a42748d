"""Console output: the compact header, quiet ranks, progress bars on a terminal and silence when piped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from io import StringIO

import pytest
from rich.console import Console

from cnnbench.core import environment, terminal

CONSTRUCTED: list[str] = []  # class names, each time one of the test configurations below is built


@dataclass
class Inner:
    size: int = 64
    device: str = "auto"
    seed: int = 1  # the same name as Outer.seed: both are then named by their dotted path

    def __post_init__(self):
        CONSTRUCTED.append("Inner")


@dataclass
class Outer:
    model: str  # no default: always shown
    seed: int = 0
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        CONSTRUCTED.append("Outer")


@pytest.fixture
def out(monkeypatch):
    """The module's console replaced by one writing to a buffer, as piped output (not a terminal)."""
    buffer = StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=buffer, soft_wrap=True, highlight=False))
    return buffer


@pytest.fixture
def tty(monkeypatch):
    buffer = StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=buffer, force_terminal=True, width=120))
    return buffer


def test_config_changes_lists_only_what_differs_from_the_declared_defaults():
    config = Outer(model="googlenet", tags=["x"], inner=Inner(size=32, seed=7))
    CONSTRUCTED.clear()
    assert terminal.config_changes(config) == {"model": "googlenet", "tags": ["x"], "size": 32, "inner.seed": 7}
    assert CONSTRUCTED == []  # defaults come from the fields, not from building the classes


def test_config_changes_of_an_all_default_tree_is_the_required_field_only():
    assert terminal.config_changes(Outer(model="resnet50")) == {"model": "resnet50"}


def test_config_lines_wrap_at_whole_items_and_quote_strings_with_spaces():
    config = Outer(model="a model with spaces", seed=3, inner=Inner(size=128, device="cuda:1", seed=2))
    lines = terminal.config_lines(config, width=40)
    assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
    assert lines[0].startswith("config: ") and all(line.startswith("        ") for line in lines[1:])
    joined = " ".join(" ".join(lines).removeprefix("config:").split())
    assert joined == "model='a model with spaces' seed=3 size=128 device=cuda:1 inner.seed=2"


def test_header_is_the_title_the_changed_options_extra_and_four_environment_lines(out):
    env = environment.collect()
    terminal.header("train googlenet", Outer(model="googlenet", inner=Inner(size=32)), env, extra=["resolved: cpu fp32"])
    assert out.getvalue().splitlines() == [
        "cnnbench train googlenet",
        "  config: model=googlenet size=32",
        "  resolved: cpu fp32",
        *(f"  {line}" for line in environment.header_lines(env)),
    ]


def test_set_quiet_silences_and_restores_the_console(out):
    terminal.set_quiet(True)
    terminal.say("from another rank")
    terminal.warn("from another rank")
    terminal.set_quiet(False)
    terminal.say("from rank 0")
    assert out.getvalue() == "from rank 0\n"


def test_progress_prints_nothing_when_output_is_piped(out):
    with terminal.progress(10, "train googlenet") as bar:
        bar.advance(3, time_left=5)
        terminal.say("step line")
    assert out.getvalue() == "step line\n"


def test_progress_on_a_terminal_shows_done_of_planned_and_time_left(tty):
    with terminal.progress(10, "train googlenet") as bar:
        bar.advance(3)
        bar.advance(2, time_left=3600)
    shown = _plain(tty.getvalue())
    assert "train googlenet" in shown and " 5/10 steps" in shown
    assert re.search(r"left (1:00:00|0:59:5\d)", shown)


def test_say_lines_print_once_above_an_active_bar(tty):
    with terminal.Progress(4, "sweep", unit="configurations") as bar:
        terminal.say("train googlenet batch 16: 12.3 images/s")
        bar.advance()
    lines = _terminal_lines(tty.getvalue())
    assert lines.count("train googlenet batch 16: 12.3 images/s") == 1
    assert "/4 configurations" in _plain(tty.getvalue())


def test_passthrough_keeps_a_child_s_line_as_it_is(out):
    line = "x" * 300 + " [bold]not markup[/bold] 1.5 True\n"
    terminal.passthrough(line)
    assert out.getvalue() == line


def test_passthrough_lines_land_above_an_active_bar(tty):
    with terminal.progress(2, "sweep", unit="configurations") as bar:
        terminal.passthrough("Images/sec: 12.3 +/- 0.1 (jitter = 0.2)\n")
        bar.advance()
    lines = _terminal_lines(tty.getvalue())
    assert lines.count("Images/sec: 12.3 +/- 0.1 (jitter = 0.2)") == 1  # a line of its own, not after the bar
    assert "1/2 configurations" in _plain(tty.getvalue())


def test_progress_of_an_unknown_total_with_a_nested_bar(tty):
    with terminal.progress(None, "sweep", unit="configurations") as outer:
        outer.advance(3)
        with terminal.progress(5, "train googlenet") as inner:  # e.g. a run inside a sweep's bar
            inner.advance(1)
    shown = _plain(tty.getvalue())
    assert "3/? configurations" in shown and "/5 steps" in shown


def test_a_quiet_terminal_gets_no_bar(tty):
    terminal.set_quiet(True)
    try:
        with terminal.progress(10, "rank 1") as bar:
            bar.advance(3)
    finally:
        terminal.set_quiet(False)
    assert tty.getvalue() == ""


def _plain(ansi: str) -> str:
    """Terminal output without its escape sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", ansi)


def _terminal_lines(ansi: str) -> list[str]:
    """What a terminal keeps on each line: the text after the line's last carriage return (the bar
    redraws its line from the start), without escape sequences."""
    return [_plain(line.rsplit("\r", 1)[-1]) for line in ansi.split("\n")]
