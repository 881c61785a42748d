"""What every benchmark script saves: its output, with the command line and the environment it ran in.

Each run of a script writes two files (benchmarks/README.md, "Saved results"):

    <save-to>/<script>-<UTC start, YYYYmmddTHHMMSSZ>.jsonl   one JSON object a line: a row of the script's
                                                             output, with script, command, started_at and env.*
    <save-to>/<script>-<UTC start>.txt                       the command, the environment, then the tables and
                                                             verdicts as the script printed them

<save-to> is benchmarks/results/ unless --save-to says otherwise (gpu_checks.sh points it under $OUT).
A file name per run, never appended to: a figure quoted in the README names one file, which stays as it was.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from cnnbench.core import environment
from cnnbench.core.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def add_save_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save-to", default=str(RESULTS), metavar="DIR",
                        help="folder for this run's <script>-<time>.jsonl and .txt (default benchmarks/results)")


class Recorder:
    """Collects a script's rows (JSON lines) and printed text (the .txt), then saves both at once."""

    def __init__(self, script: str, save_to: str | Path, argv: list[str] | None = None):
        self.script = Path(script).stem
        self.save_to = Path(save_to)
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.command = shlex.join([sys.executable, *(sys.argv if argv is None else argv)])
        self.cwd = str(Path.cwd())
        self.env = environment.collect()
        self.rows: list[dict] = []
        self.lines: list[str] = []

    @property
    def stem(self) -> str:
        return f"{self.script}-{self.started.strftime('%Y%m%dT%H%M%SZ')}"

    def say_load(self, when: str) -> None:
        """`uptime` (the load averages) before or after the measurements: the cores may be shared, and a figure
        taken under load says so beside it. Before: the usable cores and the CPU's vector ISA too."""
        self.say(f"uptime {when}: {subprocess.run(['uptime'], text=True, capture_output=True).stdout.strip()}")
        if when == "before":
            self.say(f"CPU cores usable: {len(os.sched_getaffinity(0))}, shared with other processes; "
                     f"ISA: {self.env.get('env.cpu_isa')}")

    def row(self, **fields) -> None:
        """One JSON line of the saved output (not printed)."""
        self.rows.append(fields)

    def say(self, text: str = "") -> None:
        """Print a line of the script's output and keep it for the .txt."""
        print(text, flush=True)
        self.lines.append(text)

    def table(self, table, width: int = 200) -> None:
        """Print a rich Table and keep its text (rendered without colour codes) for the .txt."""
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None).print(table)
        self.say(buffer.getvalue().rstrip("\n"))

    def header(self) -> list[str]:
        started = self.started.isoformat(timespec="seconds")
        return [f"# {self.script} started {started}", f"command: {self.command}", f"in: {self.cwd}", "environment:",
                *(f"  {line}" for line in environment.header_lines(self.env)),
                *(f"  {key} = {value}" for key, value in sorted(self.env.items())), ""]

    def save(self) -> tuple[Path, Path]:
        """Write <stem>.jsonl and <stem>.txt under save_to (each atomically); returns their paths."""
        common = {"script": self.script, "command": self.command, "cwd": self.cwd,
                  "started_at": self.started.isoformat(timespec="seconds")}
        jsonl, txt = self.save_to / f"{self.stem}.jsonl", self.save_to / f"{self.stem}.txt"
        lines = [json.dumps({**common, **row, **self.env}, default=str) for row in self.rows]
        atomic_write_text(jsonl, "".join(line + "\n" for line in lines))
        atomic_write_text(txt, "\n".join(self.header() + self.lines) + "\n")
        print(f"saved: {txt} and {jsonl.name}", flush=True)
        return jsonl, txt
