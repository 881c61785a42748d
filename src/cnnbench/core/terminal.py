"""What a person sees: run headers, step lines, final figures and summary tables (rich)."""

from __future__ import annotations

import dataclasses
import math
import sys
import time

from rich.console import Console
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.progress import Progress as _RichProgress
from rich.table import Table
from rich.text import Text

from cnnbench.core.environment import header_lines
from cnnbench.core.stats import Throughput

# soft_wrap: log lines are never broken, so a sweep's log files stay one fact per line. Piped to a file
# (a sweep's child, a CI log) rich would assume 80 columns and elide table cells; give tables room.
console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 200)


def say(line: str) -> None:
    console.print(line, markup=False)


def warn(line: str) -> None:
    console.print(f"WARNING: {line}", markup=False, style="yellow")


def passthrough(text: str) -> None:
    """Another process's output (a sweep's child), unchanged: no markup, wrapping or highlighting. Through
    the console rather than its file, so that it lands above an active progress bar and obeys set_quiet."""
    console.out(text, end="", highlight=False)


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) everything this module prints: ranks other than 0 of a data-parallel job."""
    console.quiet = quiet


def header(title: str, config: object, env: dict, extra: list[str] = ()) -> None:
    """The run's header: the options that differ from their defaults, `extra`, then the environment.
    The full configuration is in the run's record (config.*), so the header stays a few lines long."""
    say(f"cnnbench {title}")
    for line in [*config_lines(config), *extra, *header_lines(env)]:
        say(f"  {line}")


def config_changes(config: object) -> dict[str, object]:
    """{name: value} of the fields of a dataclass tree that differ from their declared defaults, in field
    order. A field without a default (nothing to differ from) is always included. The name is the field's
    own, or its dotted path below the root when another field of the tree has the same name.

    Defaults come from dataclasses.fields (f.default, f.default_factory), so the class is never
    constructed; a nested dataclass is compared field by field against its own class's defaults."""
    leaves = _leaves(config, ())
    counts: dict[str, int] = {}
    for path, _, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    return {
        (path[-1] if counts[path[-1]] == 1 else ".".join(path)): value
        for path, value, f in leaves
        if not _is_default(value, f)
    }


def _leaves(node: object, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], object, dataclasses.Field]]:
    leaves = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            leaves += _leaves(value, (*prefix, f.name))
        else:
            leaves.append(((*prefix, f.name), value, f))
    return leaves


def _is_default(value: object, f: dataclasses.Field) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False


def config_lines(config: object, width: int = 110) -> list[str]:
    """`config: name=value ...` for the options that differ from their defaults, wrapped at `width`
    characters (one or two lines in practice; a value is never split)."""
    items = [f"{name}={_config_value(value)}" for name, value in config_changes(config).items()]
    if not items:
        return ["config: all defaults"]
    lines = ["config:"]
    for item in items:
        if len(lines[-1]) + 1 + len(item) > width and lines[-1] != "config:":
            lines.append("       ")  # continuation, aligned under the first value
        lines[-1] += " " + item
    return lines


def _config_value(value: object) -> str:
    # Quote only strings a reader could misparse: empty, or holding a space or '='.
    if isinstance(value, str) and (not value or " " in value or "=" in value):
        return repr(value)
    return str(value)


class Progress:
    """Long work's progress on a terminal: a rich bar with `done/planned UNIT`, elapsed time and time left.

    Only when the console is an interactive terminal (not dumb, not quiet): piped output (a log, a sweep's
    child, CI) gets nothing from it, so the lines printed with say() stay the whole record there. Lines
    printed with say()/warn() (or plain print) while the bar is shown appear above it, since the bar is
    drawn through the same console. A bar opened while another is shown is drawn with it (rich >= 14);
    where rich draws one live display at a time, the second stays silent.

    total None: the count of planned units is unknown (shown as `?`). Time left is rich's estimate from the
    recent rate, unless the caller knows better and passes `time_left` to advance(): then that figure,
    counting down until the next advance (a sweep's plan-based estimate, a run's remaining --duration).
    Use as a context manager, or call close(); the bar is removed when closed.
    """

    def __init__(self, total: int | None, description: str, *, unit: str = "steps", console: Console | None = None):
        target = console if console is not None else _module_console()
        self._bar: _RichProgress | None = None
        if not target.is_terminal or target.is_dumb_terminal or target.quiet:
            return
        bar = _RichProgress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TextColumn(unit, markup=False), TimeElapsedColumn(), _TimeLeftColumn(),
                            console=target, transient=True)
        try:
            bar.start()
        except LiveError:  # rich before 14: another live display is on this console
            return
        self._task = bar.add_task(description, total=total, time_left=None)
        self._bar = bar

    def advance(self, n: int = 1, *, time_left: float | None = None) -> None:
        if self._bar is None:
            return
        fields = {} if time_left is None else {"time_left": (time_left, time.monotonic())}
        self._bar.update(self._task, advance=n, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(total: int | None, description: str, *, unit: str = "steps", console: Console | None = None) -> Progress:
    """`with progress(total, description) as bar: ... bar.advance()`: see Progress."""
    return Progress(total, description, unit=unit, console=console)


def _module_console() -> Console:
    return console  # looked up at call time: tests and set_quiet may change the module's console


class _TimeLeftColumn(ProgressColumn):
    """`left H:MM:SS`: the caller's figure when it gave one (counting down since), else rich's estimate."""

    def render(self, task: Task) -> Text:
        given = task.fields.get("time_left")
        left = max(0.0, given[0] - (time.monotonic() - given[1])) if given else task.time_remaining
        return Text("left " + ("-:--:--" if left is None else clock(left)), style="progress.remaining")


def clock(seconds: float) -> str:
    """H:MM:SS; "?" for a time that is not known."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


STEP_COLUMNS = "step  epoch  img/s  loss  lr"


def step_line(step: int, epoch: float, images_per_sec: float, loss: float, lr: float) -> str:
    return f"{step:6d}  {epoch:8.4f}  {images_per_sec:8.1f}  {loss:7.3f}  {lr:.5f}"


def final_lines(throughput: Throughput, system_images_per_sec: float, latency: dict[str, float] | None = None) -> None:
    say(throughput.line())
    if latency:
        say(
            "Latency ms: min {latency_ms_min:.2f}  mean {latency_ms_mean:.2f}  p50 {latency_ms_p50:.2f}  "
            "p90 {latency_ms_p90:.2f}  p99 {latency_ms_p99:.2f}  max {latency_ms_max:.2f}".format(**latency)
        )
    say(f"System performance in images/second is: {system_images_per_sec:.1f}")


def input_wait_line(record: dict) -> None:
    say(f"Input wait: {record['data_wait_share'] * 100:.1f}% of step time ({record['data_wait_seconds']:.2f} s)")


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def summary_table(title: str, records: list[dict], columns: list[tuple[str, str]]) -> None:
    table = Table(title=title)
    for label, _ in columns:
        table.add_column(label)
    for record in records:
        table.add_row(*[_fmt(record.get(field)) for _, field in columns])
    console.print(table)
