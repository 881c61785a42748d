"""The results tables, computed from records: runs.csv (every field of every record, a row each) and
results.csv, the original's layout (process_results.py): a system-performance table and an approximate
accelerator-performance table per variant, a row per model in the original's order, a column per batch
size; then the scaling-efficiency table where runs at N > 1 accelerators have a run at 1 beside them.

Pure functions of the records: store.py writes them into a results folder.
"""

from __future__ import annotations

import csv
import io
import json
import statistics

from cnnbench.core.config import ORIGINAL_MODELS

# Row order of the original's tables (process_results.py): the models of its sweeps, in their order.
ORIGINAL_MODEL_ORDER = list(ORIGINAL_MODELS)

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


def model_source(record: dict) -> str:
    """Where the record's model came from (models/entry.py SOURCES). Records from before issue 22 have no
    model_source; the registry and spec files were the only sources then, a spec named by its .json path."""
    given = str(record.get("config.model") or "")
    return record.get("model_source") or ("spec" if given.lower().endswith(".json") else "registry")


def row_names(records: list[dict]):
    """record -> its model's row name: the name, with the source added (`synNet (spec)`) where records of one
    name come from two sources (a copy of synNet.json beside the registered synNet), kept apart so."""
    sources: dict[str, set[str]] = {}
    for r in records:
        sources.setdefault(r["model"], set()).add(model_source(r))
    return lambda r: r["model"] if len(sources[r["model"]]) == 1 else f"{r['model']} ({model_source(r)})"


def _cell(record: dict | None, field: str) -> str:
    if record is None:
        return ""
    if record.get("status") != "ok":
        return str(record.get("status", "failed")).upper() if record.get("status") == "oom" else str(record.get("status"))
    value = record.get(field)
    return "" if value is None else f"{value:.2f}"


REPEAT_TITLE = "Spread across repeated processes (--repeat), unit is images/second"
REPEAT_TEXT = (
    "Mean and sample standard deviation across the separate processes of each configuration (a sweep's --repeat N), "
    "then the number of processes; the tables above show the mean. Noise within one run understates the noise between "
    "runs (clocks, memory placement, a neighbour's load): this is the spread to judge a change by."
)


def spread(records: list[dict], field: str) -> tuple[float, float, int] | None:
    """(mean, sample standard deviation, processes) of `field` across one configuration's repeats: the records
    with a `repeat` index, the latest of each index, those that ended ok; None when fewer than 2."""
    latest = {r["repeat"]: r for r in records if r.get("repeat") is not None}
    values = [r[field] for r in latest.values() if r.get("status") == "ok" and r.get(field) is not None]
    if len(values) < 2:
        return None
    return statistics.fmean(values), statistics.stdev(values), len(values)


def _figure_cell(group: list[dict], field: str) -> str:
    """A table's cell: the mean across repeated processes where there are some, else the latest record's."""
    across = spread(group, field)
    return f"{across[0]:.2f}" if across else _cell(group[-1] if group else None, field)


def tables_csv(records: list[dict]) -> str:
    """The original's layout: for each variant, the system table, three blank lines, the accelerator table.

    The latest record wins where a (model, batch) was run more than once, except for a sweep's repeated
    processes (--repeat: records with a `repeat` index), whose mean is shown, their spread in a table of its own.
    Records of no batch size (a max-batch search's own record) are in runs.jsonl and runs.csv only.
    """
    records = [r for r in records if r.get("batch_size") is not None]
    name = row_names(records)
    variants: list[str] = []
    for r in records:
        if _variant(r) not in variants:
            variants.append(_variant(r))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for v_index, variant in enumerate(variants):
        chosen = [r for r in records if _variant(r) == variant]
        models = _ordered_models([name(r) for r in chosen])
        batches = sorted({int(r["batch_size"]) for r in chosen})
        groups: dict[tuple[str, int], list[dict]] = {}
        for r in chosen:
            groups.setdefault((name(r), int(r["batch_size"])), []).append(r)
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
                writer.writerow([model, *[_figure_cell(groups.get((model, b), []), field) for b in batches]])
        _repeat_table(groups, models, batches, suffix, out)
    _efficiency_table(records, out)
    return out.getvalue()


def _repeat_table(groups: dict[tuple[str, int], list[dict]], models: list[str], batches: list[int], suffix: str,
                  out: io.StringIO) -> None:
    """Rows (model, figure), a column per batch size: `mean ± stdev (n)`; only where some configuration repeated."""
    if not any(spread(g, "images_per_sec") for g in groups.values()):
        return
    writer = csv.writer(out, lineterminator="\n")
    out.write("\n\n\n")
    writer.writerow([REPEAT_TITLE + suffix])
    writer.writerow([REPEAT_TEXT])
    writer.writerow(["model", "figure", *[f"batch {b}" for b in batches]])
    for model in models:
        for figure, field in (("accelerator", "images_per_sec"), ("system", "system_images_per_sec")):
            cells = [spread(groups.get((model, b), []), field) for b in batches]
            writer.writerow([model, figure, *["" if c is None else f"{c[0]:.2f} ± {c[1]:.2f} ({c[2]})" for c in cells]])


EFFICIENCY_TITLE = "Scaling efficiency, unit is percent"
EFFICIENCY_TEXT = (
    "Global images/second at N accelerators divided by N times images/second at 1 accelerator, same model, batch size "
    "per accelerator and precision; from the approximate accelerator performance (steady state, each step as long as "
    "its slowest rank's). 100 is perfect scaling."
)


def with_scaling_efficiency(records: list[dict]) -> list[dict]:
    """The records, those at N > 1 accelerators with `scaling_efficiency` (percent) where a successful
    run of the same configuration at 1 accelerator exists (the latest such run)."""
    name = row_names(records)
    single = {(_variant(r), name(r), int(r["batch_size"])): r for r in records
              if _accelerators(r) == 1 and r.get("status") == "ok" and r.get("images_per_sec")}
    out = []
    for r in records:
        base = single.get((_variant(r, with_accelerators=False), name(r), int(r["batch_size"])))
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
    name = row_names(rated)
    variants = list(dict.fromkeys(_variant(r, with_accelerators=False) for r in rated))
    for variant in variants:
        chosen = [r for r in rated if _variant(r, with_accelerators=False) == variant]
        batches = sorted({int(r["batch_size"]) for r in chosen})
        latest = {(name(r), _accelerators(r), int(r["batch_size"])): r for r in chosen}
        suffix = f" ({variant})" if variant and len(variants) > 1 else ""
        out.write("\n\n\n")
        writer.writerow([EFFICIENCY_TITLE + suffix])
        writer.writerow([EFFICIENCY_TEXT])
        writer.writerow(["model", "accelerators", *[f"batch {b}" for b in batches]])
        for model in _ordered_models([name(r) for r in chosen]):
            for count in sorted({n for m, n, _ in latest if m == model}):
                cells = [latest.get((model, count, b)) for b in batches]
                writer.writerow([model, count, *["" if r is None else f"{r['scaling_efficiency']:.1f}" for r in cells]])


def _ordered_models(names: list[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    known = [m for m in ORIGINAL_MODEL_ORDER if m in unique]
    return known + [m for m in unique if m not in known]
