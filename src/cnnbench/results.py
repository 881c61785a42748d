"""Result records: flat dicts with stable field names, kept as JSON lines and CSV, written atomically.

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

import csv
import datetime as _dt
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

RECORDS = "runs.jsonl"
TIDY_CSV = "runs.csv"
TABLES_CSV = "results.csv"

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: object) -> object:
    return str(value)


def _clean(value: object) -> object:
    # NaN is not JSON; a missing figure is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_records(results_dir: Path) -> list[dict]:
    path = Path(results_dir) / RECORDS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            records.append(json.loads(line))
    return records


def append_record(results_dir: Path, record: dict) -> None:
    """Add one record and rebuild every table of the directory, each file replaced atomically."""
    results_dir = Path(results_dir)
    records = read_records(results_dir) + [{k: _clean(v) for k, v in record.items()}]
    atomic_write_text(results_dir / RECORDS, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))
    write_tables(results_dir, records)


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
    """What a table is for: the engine/precision pair (training: the precision), and the number of
    accelerators when more than one (their figures are the whole job's)."""
    parts = [record.get("engine"), record.get("precision")]
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

    The latest record wins where a (model, batch) was run more than once.
    """
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
    from cnnbench.stats import latency_ms, throughput

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


def data_wait(wait_seconds: float, times) -> dict:
    """How much of the run's step time (warm-up included) went to waiting for real input."""
    busy = sum(times.warmup_seconds) + sum(times.steady_seconds)
    return {"data_wait_seconds": wait_seconds, "data_wait_share": wait_seconds / busy if busy else None}
