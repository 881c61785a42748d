"""What a person sees: run headers, step lines, final figures and summary tables (rich)."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

from cnnbench import config as config_module
from cnnbench.environment import header_lines
from cnnbench.stats import Throughput

# soft_wrap: log lines are never broken, so a sweep's log files stay one fact per line. Piped to a file
# (a sweep's child, a CI log) rich would assume 80 columns and elide table cells; give tables room.
console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 200)


def say(line: str) -> None:
    console.print(line, markup=False)


def warn(line: str) -> None:
    console.print(f"WARNING: {line}", markup=False, style="yellow")


def header(title: str, config: object, env: dict, extra: list[str] = ()) -> None:
    say(f"cnnbench {title}")
    for line in [*config_module.describe(config), *extra, *header_lines(env)]:
        say(f"  {line}")


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
