"""The record store: result records, flat dicts with stable field names, kept as JSON lines and CSV.

Writers share a folder safely: each record is one appended JSON line under the folder's fcntl lock
(.runs.lock), and the CSV tables are rebuilt from the JSON lines under the same lock, each replaced
atomically. Readers skip a torn line (a crash mid-write) with a warning instead of failing.

Layout of a results directory (the original's, plus the machine-readable files):
  runs.jsonl              one record per run, appended as each run ends
  runs.csv                the same records, one row per run, every field
  results.csv             the original's two tables: system performance, then approximate
                          accelerator performance; a row per model, a column per batch size; a pair
                          per precision (inference: engine and precision) and per accelerator count;
                          then, when runs at N > 1 accelerators have a run at 1 beside them, the
                          scaling-efficiency table
  result_<model>_<batch>[_x<N>][_<engine>_<precision>].txt   each run's console log (sweeps)

The tables' layout and arithmetic are in tables.py; the safe-write primitives in files.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import shutil
from pathlib import Path

from cnnbench.core import files, tables
from cnnbench.core.errors import RecordNotSaved, UsageError

RECORDS = "runs.jsonl"
TIDY_CSV = "runs.csv"
TABLES_CSV = "results.csv"

# The version of the record's field names, units and meanings, documented field by field in
# record.schema.json beside this module. A renamed field, or one whose unit or meaning changes, bumps it, so
# that readers (report, compare, other people's scripts) can tell which names a record uses. Records from
# before versioning carry no schema_version; their fields are those of version 1.
SCHEMA_VERSION = 1
SCHEMA_FILE = "record.schema.json"
# `cnnbench synth validate`'s comparison records and their table (synth_validation.py writes them).
VALIDATION_RECORDS, VALIDATION_CSV = "validation.jsonl", "validation.csv"


# Every writer of a results folder (runs of a sweep, concurrent sweeps sharing the folder) takes this
# lock before touching runs.jsonl or the tables, so no record is lost between a read and a rewrite.
LOCK_FILE = ".runs.lock"

_warned_torn: set[tuple[str, int]] = set()  # (file, line) already reported by this process


@contextlib.contextmanager
def locked(results_dir: Path):
    """Hold the results folder's lock (fcntl, released by the kernel if the process dies)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, so a lock file another user created does not lock anyone out.
    fd = os.open(results_dir / LOCK_FILE, os.O_RDONLY | os.O_CREAT, files.FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _json_default(value: object) -> object:
    return str(value)


def _clean(value: object) -> object:
    # NaN is not JSON; a missing figure is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record_line(record: dict) -> str:
    """One record as the single JSON line runs.jsonl holds (newline included), schema_version first (a
    record that already names its version keeps it)."""
    versioned = {"schema_version": record.get("schema_version", SCHEMA_VERSION), **record}
    return json.dumps({k: _clean(v) for k, v in versioned.items()}, default=_json_default) + "\n"


def read_records_counting(results_dir: Path) -> tuple[list[dict], list[int]]:
    """(records, numbers of the lines that are not a JSON record). A torn line (a crash mid-write, a
    full disk) is skipped: one bad line must not hide every other run."""
    return read_file_counting(Path(results_dir) / RECORDS)


def read_file_counting(path: Path) -> tuple[list[dict], list[int]]:
    """read_records_counting for any JSON-lines file of records (runs.jsonl, validation.jsonl)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    records, torn = [], []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            record = None
        if isinstance(record, dict):
            _refuse_newer(record, path, number)
            records.append(record)
        else:
            torn.append(number)
    return records, torn


def _refuse_newer(record: dict, path: Path, number: int) -> None:
    """A record of a newer schema may have renamed or redefined fields: read as this version's, it would be
    wrong without a word. Profile files are refused the same way (tools/profile)."""
    version = record.get("schema_version", 1)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UsageError(f"{path}: line {number} was written by a newer cnnbench (record schema_version {version}; "
                         f"this one reads up to {SCHEMA_VERSION}); update cnnbench to read it")


def read_records(results_dir: Path) -> list[dict]:
    """Every intact record; each torn line gets one warning line per process, naming file and line."""
    return read_file(Path(results_dir) / RECORDS)


def read_file(path: Path) -> list[dict]:
    """read_records for any JSON-lines file of records."""
    records, torn = read_file_counting(path)
    fresh = [n for n in torn if (str(path), n) not in _warned_torn]
    if fresh:
        from cnnbench.core import terminal  # late: reporting pulls in torch, the tables need none of it

        _warned_torn.update((str(path), n) for n in fresh)
        lines = ", ".join(map(str, fresh))
        terminal.warn(f"{path}: skipped {len(fresh)} torn line{'s' if len(fresh) > 1 else ''} (not a JSON record): "
                       f"line{'s' if len(fresh) > 1 else ''} {lines}")
    return records


def append_line(path: Path, line: str) -> None:
    """Append one line without reading the file: O_APPEND puts it at the end, and a last line left
    without its newline (a torn write) is closed first so the new record never glues onto it."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, files.FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = line.encode()
        while data:  # a regular file takes it all at once, barring a full disk, which raises
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def append_record(results_dir: Path, record: dict) -> None:
    """Add one record to runs.jsonl, then rebuild the tables from it, all under the folder's lock.

    The record is safe once its line is written; the tables are derived, so failing to rebuild them
    is a warning (the next append rebuilds them) rather than an error that would save the record twice.
    """
    results_dir = Path(results_dir)
    with locked(results_dir):
        append_line(results_dir / RECORDS, record_line(record))
        try:
            write_tables(results_dir, read_records(results_dir))
        except OSError as exc:
            from cnnbench.core import terminal

            terminal.warn(f"record kept in {results_dir / RECORDS}, but the tables were not rebuilt ({exc})")


def save_record(results_dir: Path, record: dict) -> Path:
    """`append_record`, or, when the folder cannot take it (disk full, folder removed), the record as a
    JSON file in the current folder (else the temp folder) and a RecordNotSaved naming that file.

    Returns runs.jsonl's path. The caller prints the run's figures before calling this, so a failure
    here loses nothing the user could not read.
    """
    path = Path(results_dir) / RECORDS
    try:
        append_record(results_dir, record)
        return path
    except OSError as exc:
        line = record_line(record)
        raise RecordNotSaved(path, files.write_fallback(line), exc, line.strip()) from None


def record_files(path: Path | str) -> list[Path]:
    """The record files a path holds: itself when it is a file, else every runs.jsonl and validation.jsonl
    below it (a run.sh folder with results_train/ and results_infer/, a synth validation's runs/)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path}: no such file or folder; give a results folder or a record file (runs.jsonl)")
    return sorted(path.rglob(RECORDS)) + sorted(path.rglob(VALIDATION_RECORDS))


def rebuild(results_dir: Path | str) -> list[Path]:
    """`cnnbench results DIR`: the tables rebuilt from the records, as the original's process_results.py
    rebuilt them from its logs, with the code every new record runs (write_tables); returns the files written."""
    results_dir = Path(results_dir)
    runs, validation = results_dir / RECORDS, results_dir / VALIDATION_RECORDS
    if not runs.is_file() and not validation.is_file():
        raise UsageError(f"{results_dir}: no {RECORDS} or {VALIDATION_RECORDS} there; give a results folder "
                         "(results_train, results_infer, a sweep's --results-dir)")
    # The tables are written beside the records: a folder this user cannot write is one line, before the lock
    # file (which would be created there) or any table is touched.
    files.ensure_writable(results_dir, "cnnbench results")
    written = []
    with locked(results_dir):
        if runs.is_file():
            records = read_records(results_dir)
            if not records and not validation.is_file():
                raise UsageError(f"{runs}: no records (every line is torn or not a record); nothing to tabulate")
            write_tables(results_dir, records)
            written += [results_dir / TABLES_CSV, results_dir / TIDY_CSV]
        if validation.is_file():
            files.atomic_write_text(results_dir / VALIDATION_CSV, tables.tidy_csv(read_file(validation)))
            written.append(results_dir / VALIDATION_CSV)
    return written


def write_tables(results_dir: Path, records: list[dict]) -> None:
    files.atomic_write_text(Path(results_dir) / TIDY_CSV, tables.tidy_csv(records))
    files.atomic_write_text(Path(results_dir) / TABLES_CSV, tables.tables_csv(records))


def rotate(results_dir: Path) -> Path | None:
    """Move an existing results directory aside as <name>_<timestamp>, never overwriting (the original's rule)."""
    results_dir = Path(results_dir)
    if not results_dir.exists():
        return None
    stamp = _dt.datetime.now().strftime("%Y%m%d%H%M%S")
    target = results_dir.with_name(f"{results_dir.name}_{stamp}")
    n = 1
    while target.exists():
        target = results_dir.with_name(f"{results_dir.name}_{stamp}_{n}")
        n += 1
    shutil.move(str(results_dir), str(target))
    return target
