"""Result records: flat dicts with stable field names, kept as JSON lines and CSV.

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
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import io
import itertools
import json
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from cnnbench.core.errors import RecordNotSaved, UsageError, one_line

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

# Row order of the original's tables (process_results.py).
ORIGINAL_MODEL_ORDER = ["googlenet", "resnet50", "resnet152", "densenet121", "synNet"]

SYSTEM_TITLE = "System performance, unit is images/second"
SYSTEM_TEXT = (
    "System performance measures the performance of the entire system, including both CPU work and GPU work. "
    "The benchmark is timed right before and after the script is ran."
)
ACCEL_TITLE = "Approximate accelerator performance, unit is images/second"
ACCEL_TEXT = (
    "Approximate accelerator performance aims at measuring only the performance of the accelerator. "
    "The benchmark does its best to exclude CPU work from performance measurement and approximates the accelerator performance."
)


# Every writer of a results folder (runs of a sweep, concurrent sweeps sharing the folder) takes this
# lock before touching runs.jsonl or the tables, so no record is lost between a read and a rewrite.
LOCK_FILE = ".runs.lock"
# Files are created with 0666 and the user's umask, like any other file of theirs (mkstemp's 0600 hid
# results from the group that shares a machine).
FILE_MODE = 0o666

_warned_torn: set[tuple[str, int]] = set()  # (file, line) already reported by this process


def create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named temporary file in `path`'s folder (so os.replace stays atomic),
    opened for writing, with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: readers see old or new, never half."""
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(results_dir: Path):
    """Hold the results folder's lock (fcntl, released by the kernel if the process dies)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, so a lock file another user created does not lock anyone out.
    fd = os.open(results_dir / LOCK_FILE, os.O_RDONLY | os.O_CREAT, FILE_MODE)
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
            records.append(record)
        else:
            torn.append(number)
    return records, torn


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


def _append_line(path: Path, line: str) -> None:
    """Append one line without reading the file: O_APPEND puts it at the end, and a last line left
    without its newline (a torn write) is closed first so the new record never glues onto it."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
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
        _append_line(results_dir / RECORDS, record_line(record))
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
        raise RecordNotSaved(path, write_fallback(line), exc, line.strip()) from None


def write_fallback(line: str) -> Path | None:
    """Write one record line to ./cnnbench-record-<time>-<pid>.json, else to the temp folder."""
    stem = f"cnnbench-record-{_dt.datetime.now().strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    for folder in (os.curdir, tempfile.gettempdir()):
        try:
            # absolute: the path printed must work from anywhere
            target, fd = _new_file(Path(folder).absolute(), stem, ".json")
        except OSError:  # no such folder (the current one removed), not writable
            continue
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(line)
            return target
        except OSError:  # full: leave no half file behind and try the next folder
            target.unlink(missing_ok=True)
    return None


def _new_file(folder: Path, stem: str, suffix: str) -> tuple[Path, int]:
    """A file that did not exist before (a second fallback in the same second gets -1, -2, ...)."""
    for n in itertools.count():
        target = folder / f"{stem}{f'-{n}' if n else ''}{suffix}"
        try:
            return target, os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def ensure_writable(path: Path, option: str) -> None:
    """Pre-flight for a folder a run will write (--results-dir, --log-dir): fail now, in one line,
    rather than after the benchmark. The folder may not exist yet; then its nearest existing
    ancestor must be a folder that takes new files."""
    path = probe = Path(path)
    try:
        probe = path.absolute()
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            kind = "a file" if probe.is_file() else "not a folder"  # else: a broken link, a device
            what = f"is {kind}" if probe == path.absolute() else f"cannot be created: {probe} is {kind}"
            raise UsageError(f"{option} {path} {what}; remove it or give {option} another folder")
        # Creating a file is the only test that sees read-only mounts, ACLs and the effective user alike;
        # TemporaryFile leaves nothing behind.
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        raise UsageError(f"{option} {path}: cannot write in {probe} ({reason}); "
                         f"give {option} a folder you can write to") from None


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
    written = []
    with locked(results_dir):
        if runs.is_file():
            write_tables(results_dir, read_records(results_dir))
            written += [results_dir / TABLES_CSV, results_dir / TIDY_CSV]
        if validation.is_file():
            atomic_write_text(results_dir / VALIDATION_CSV, tidy_csv(read_file(validation)))
            written.append(results_dir / VALIDATION_CSV)
    return written


def write_tables(results_dir: Path, records: list[dict]) -> None:
    atomic_write_text(Path(results_dir) / TIDY_CSV, tidy_csv(records))
    atomic_write_text(Path(results_dir) / TABLES_CSV, tables_csv(records))


def tidy_csv(records: list[dict]) -> str:
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()})
    return out.getvalue()


def _variant(record: dict, with_accelerators: bool = True) -> str:
    """What a table is for: the framework when it is not PyTorch (one pair of tables per framework), the
    engine/precision pair (training: the precision), LoadGen's scenario for a
    LoadGen run (its figures are LoadGen's, not the built-in loop's), and the number of accelerators when
    more than one (their figures are the whole job's)."""
    parts = [record.get("framework") if record.get("framework") not in (None, "pytorch") else None,
             record.get("engine"), record.get("precision"),
             record.get("loadgen_scenario") and f"LoadGen {record['loadgen_scenario']}"]
    variant = " ".join(str(p) for p in parts if p)
    count = _accelerators(record)
    if with_accelerators and count > 1:
        variant += f"{', ' if variant else ''}{count} accelerators"
    return variant


def _accelerators(record: dict) -> int:
    return int(record.get("num_accelerators") or 1)  # records from before data-parallel training ran on one


def _cell(record: dict | None, field: str) -> str:
    if record is None:
        return ""
    if record.get("status") != "ok":
        return str(record.get("status", "failed")).upper() if record.get("status") == "oom" else str(record.get("status"))
    value = record.get(field)
    return "" if value is None else f"{value:.2f}"


def tables_csv(records: list[dict]) -> str:
    """The original's layout: for each variant, the system table, three blank lines, the accelerator table.

    The latest record wins where a (model, batch) was run more than once. Records of no batch size
    (a max-batch search's own record) are in runs.jsonl and runs.csv only.
    """
    records = [r for r in records if r.get("batch_size") is not None]
    variants: list[str] = []
    for r in records:
        if _variant(r) not in variants:
            variants.append(_variant(r))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for v_index, variant in enumerate(variants):
        chosen = [r for r in records if _variant(r) == variant]
        models = _ordered_models([r["model"] for r in chosen])
        batches = sorted({int(r["batch_size"]) for r in chosen})
        latest = {(r["model"], int(r["batch_size"])): r for r in chosen}
        suffix = f" ({variant})" if variant and len(variants) > 1 else ""
        for t_index, (title, text, field) in enumerate(
            [(SYSTEM_TITLE, SYSTEM_TEXT, "system_images_per_sec"), (ACCEL_TITLE, ACCEL_TEXT, "images_per_sec")]
        ):
            if v_index or t_index:
                out.write("\n\n\n")
            writer.writerow([title + suffix])
            writer.writerow([text])
            writer.writerow(["model", *[f"batch {b}" for b in batches]])
            for model in models:
                writer.writerow([model, *[_cell(latest.get((model, b)), field) for b in batches]])
    _efficiency_table(records, out)
    return out.getvalue()


EFFICIENCY_TITLE = "Scaling efficiency, unit is percent"
EFFICIENCY_TEXT = (
    "Global images/second at N accelerators divided by N times images/second at 1 accelerator, same model, batch size "
    "per accelerator and precision; from the approximate accelerator performance (steady state, each step as long as "
    "its slowest rank's). 100 is perfect scaling."
)


def with_scaling_efficiency(records: list[dict]) -> list[dict]:
    """The records, those at N > 1 accelerators with `scaling_efficiency` (percent) where a successful
    run of the same configuration at 1 accelerator exists (the latest such run)."""
    single = {(_variant(r), r["model"], int(r["batch_size"])): r for r in records
              if _accelerators(r) == 1 and r.get("status") == "ok" and r.get("images_per_sec")}
    out = []
    for r in records:
        base = single.get((_variant(r, with_accelerators=False), r["model"], int(r["batch_size"])))
        count = _accelerators(r)
        if count > 1 and base is not None and r.get("status") == "ok" and r.get("images_per_sec") is not None:
            r = {**r, "scaling_efficiency": 100.0 * r["images_per_sec"] / (count * base["images_per_sec"])}
        out.append(r)
    return out


def _efficiency_table(records: list[dict], out: io.StringIO) -> None:
    """Rows (model, N) per precision, a column per batch size; only where a run at 1 accelerator exists."""
    rated = [r for r in with_scaling_efficiency(records) if "scaling_efficiency" in r]
    if not rated:
        return
    writer = csv.writer(out, lineterminator="\n")
    variants = list(dict.fromkeys(_variant(r, with_accelerators=False) for r in rated))
    for variant in variants:
        chosen = [r for r in rated if _variant(r, with_accelerators=False) == variant]
        batches = sorted({int(r["batch_size"]) for r in chosen})
        latest = {(r["model"], _accelerators(r), int(r["batch_size"])): r for r in chosen}
        suffix = f" ({variant})" if variant and len(variants) > 1 else ""
        out.write("\n\n\n")
        writer.writerow([EFFICIENCY_TITLE + suffix])
        writer.writerow([EFFICIENCY_TEXT])
        writer.writerow(["model", "accelerators", *[f"batch {b}" for b in batches]])
        for model in _ordered_models([r["model"] for r in chosen]):
            for count in sorted({n for m, n, _ in latest if m == model}):
                cells = [latest.get((model, count, b)) for b in batches]
                writer.writerow([model, count, *["" if r is None else f"{r['scaling_efficiency']:.1f}" for r in cells]])


def _ordered_models(names: list[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    known = [m for m in ORIGINAL_MODEL_ORDER if m in unique]
    return known + [m for m in unique if m not in known]


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


def figures(images_per_step: int, times, wall_seconds: float) -> dict:
    """The measured figures of a run, from its per-step times and its whole-command wall time.

    System performance counts every image the command pushed through, warm-up included, over the
    wall time from process start to the end of the run (the original timed the whole script).
    """
    from cnnbench.core.stats import latency_ms, throughput

    tp = throughput(images_per_step, times.steady_seconds)
    images = images_per_step * (len(times.warmup_seconds) + len(times.steady_seconds))
    return {
        "images_per_sec": tp.mean,
        "images_per_sec_stderr": tp.stderr,
        "images_per_sec_jitter": tp.jitter,
        "images_per_sec_from_mean_time": tp.from_mean_time,
        **latency_ms(times.steady_seconds),
        "system_images_per_sec": images / wall_seconds if wall_seconds > 0 else math.nan,
        "images_processed": images,
        "wall_seconds": wall_seconds,
        "warmup_steps": len(times.warmup_seconds),
        "steady_steps": len(times.steady_seconds),
        "warmup_seconds": list(times.warmup_seconds),
        "steady_seconds": list(times.steady_seconds),
    }


def real_data_fields(source, times) -> dict:
    """A real-data run's input fields: its waits (data_wait), the corrupt images met and the epoch's size."""
    return {**data_wait(source.data_wait_seconds, times), "corrupt_images": source.corrupt_images,
            "images_per_epoch": source.images_per_epoch}


def data_wait(wait_seconds: float, times) -> dict:
    """How much of the run's step time (warm-up included) went to waiting for real input."""
    busy = sum(times.warmup_seconds) + sum(times.steady_seconds)
    return {"data_wait_seconds": wait_seconds, "data_wait_share": wait_seconds / busy if busy else None}
