"""`cnnbench report [DIR...] --out report.html`: one HTML file a person opens offline, from the records.

It reads every runs.jsonl and validation.jsonl under the folders given (results_train, results_infer, a
distributed sweep's, synth validate's; default results_train and results_infer) and writes charts as inline
SVG (charts.py) with a header of the environment and a table of every run with its status, so a failed or
out-of-memory configuration shows. Nothing is loaded from the network: a Content-Security-Policy forbids it,
so a stray external reference would be an error in the browser's console rather than a silent dependency.

Charts, each where its records exist: images/s per model and batch (accelerator +/- standard error,
system); speed-up of each engine and precision over eager fp32 with the fp32 guard's top-1 agreement;
latency p50/p90/p99; the single-stream latency distribution; images/s step by step with warm-up shaded;
scaling efficiency; input-wait share of real-data runs; telemetry (power, clocks, energy, images per
joule, MFU) for the fields a record has; a synthetic proxy's speed-ups against its mix's.

The page checks itself when it loads: every chart must hold as many drawn marks (`.mark`: a bar per value,
a line per series) as the report wrote into its `data-marks`, each with a visible size. It then sets
`data-report-check` on <body> to "ok N" (N charts) or to the failures, which it also logs as console
errors; tests/test_report.py reads both from headless Chromium.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from collections import defaultdict
from html import escape
from pathlib import Path

from cnnbench.tools import charts

from cnnbench.core import errors, files, store, tables
from cnnbench.tools.charts import Bars, Line
from cnnbench.core.config import ReportConfig

DEFAULT_DIRS = ("results_train", "results_infer")
SOURCE = "_source"  # the record file a record came from (report only; never written to a record)
# Environment fields in the header, in this order (record field, label).
ENV_FIELDS = (("device", "device"), ("env.gpu_name", "GPU"), ("env.gpu_driver", "driver"), ("env.cuda", "CUDA"),
              ("env.cudnn", "cuDNN"), ("env.cpu_model", "CPU"), ("env.cpu_isa", "CPU ISA"), ("env.cpu_cores", "cores"),
              ("env.ram_gib", "RAM GiB"), ("env.torch", "torch"), ("env.torchvision", "torchvision"),
              ("onnxruntime", "onnxruntime"), ("env.python", "python"), ("env.cnnbench", "cnnbench"),
              ("env.git_commit", "commit"), ("env.host", "host"), ("env.os", "OS"))
# Telemetry and efficiency fields (issue 12's, by name), each charted when any record has a value: (field, unit, what).
TELEMETRY = (("images_per_joule", "images/J", "images per joule"), ("energy_j", "J", "energy over the steady window"),
             ("power_w_mean", "W", "mean power"), ("power_w_max", "W", "peak power"),
             ("sm_clock_mhz_mean", "MHz", "mean SM clock"), ("sm_clock_mhz_min", "MHz", "lowest SM clock"),
             ("mem_clock_mhz_mean", "MHz", "mean memory clock"), ("cpu_freq_mhz_mean", "MHz", "mean CPU core frequency"),
             ("temperature_c_max", "°C", "highest temperature"), ("gpu_utilization_pct_mean", "%", "mean GPU utilisation"),
             ("achieved_tflops", "TFLOP/s", "achieved FLOP rate"), ("mfu", "fraction", "model FLOP utilisation"))
HISTOGRAM_BINS = 20


def run(cfg: ReportConfig) -> int:
    cfg.validate()
    paths = list(cfg.dirs) or [d for d in DEFAULT_DIRS if Path(d).exists()]
    if not paths:
        raise errors.UsageError("no results folder given, and neither results_train nor results_infer is here; "
                                "give the folders: cnnbench report DIR...")
    out = Path(cfg.out)
    files.ensure_writable(out.parent, "--out")  # before reading anything: a report that cannot be saved is not made
    records = collect(paths)
    page = render(records, cfg.title, paths)
    files.atomic_write_text(out, page)
    print(f"Report: {out.resolve()} ({len(page.encode()) / 1024:.0f} KiB, {len(records)} records from {', '.join(paths)})")
    return 0


def collect(paths: list[str]) -> list[dict]:
    """Every record under the paths, each tagged with its file (SOURCE)."""
    records = [{**r, SOURCE: str(f)} for p in paths for f in store.record_files(p) for r in store.read_file(f)]
    if not records:
        raise errors.UsageError(f"no records (runs.jsonl, validation.jsonl) under {', '.join(paths)}")
    return records


def runs_of(records: list[dict], kind: str | None = None, ok: bool = True) -> list[dict]:
    """Train and infer records (of one kind), those that ended ok unless ok=False."""
    return [r for r in records if r.get("kind") in ((kind,) if kind else ("train", "infer"))
            and (not ok or r.get("status") == "ok")]


def _framework(r: dict) -> str:
    """The framework's name before a label, where it is not PyTorch (records from before issue 15: PyTorch)."""
    return "" if (r.get("framework") or "pytorch") == "pytorch" else f"{r['framework']} "


def run_label(r: dict) -> str:
    text = f"{_framework(r)}{r.get('model')} b{r.get('batch_size')}"
    if r.get("kind") == "infer":
        text += f" {r.get('engine')}/{r.get('precision')}"
    elif r.get("precision") not in (None, "fp32"):
        text += f" {r.get('precision')}"
    if int(r.get("num_accelerators") or 1) > 1:
        text += f" x{r['num_accelerators']}"
    if r.get("scenario") == "single-stream":
        text += " single-stream"
    return text


def render(records: list[dict], title: str, paths: list[str]) -> str:
    sections = [throughput_sections(records), speedup_section(records), latency_section(records),
                single_stream_section(records), steps_section(records), scaling_section(records),
                input_wait_section(records), telemetry_section(records), validation_section(records)]
    body = "".join(s for s in sections if s)
    return PAGE.format(title=escape(title), style=STYLE, script=SCRIPT, header=header(records, title, paths), body=body,
                       table=runs_table(records))


def figure(svg: str, marks: int, caption: str) -> str:
    return f'<figure class="chart" data-marks="{marks}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def section(title: str, intro: str, figures: list[str], grid: bool = False) -> str:
    if not figures:
        return ""
    return (f'<section><h2>{escape(title)}</h2><p>{escape(intro)}</p>'
            f'<div class="{"grid" if grid else "row"}">{"".join(figures)}</div></section>')


def marks(series: list[Bars]) -> int:
    return sum(v is not None for s in series for v in s.values)


def header(records: list[dict], title: str, paths: list[str]) -> str:
    """Title, sources, when, and the environment: every distinct value of each field, most frequent first."""
    rows = []
    for field, name in ENV_FIELDS:
        counts: dict[str, int] = defaultdict(int)
        for r in records:
            if r.get(field) not in (None, ""):
                counts[str(r[field])] += 1
        if counts:
            values = sorted(counts, key=lambda v: -counts[v])
            rows.append(f"<tr><th>{escape(name)}</th><td>{escape('; '.join(values))}</td></tr>")
    stamps = sorted(str(r["env.timestamp"]) for r in records if r.get("env.timestamp"))
    when = f"runs from {stamps[0]} to {stamps[-1]}; " if stamps else ""
    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (f"<header><h1>{escape(title)}</h1><p>{len(records)} records from {escape(', '.join(paths))}; {escape(when)}"
            f"report written {made}</p><table class=\"env\">{''.join(rows)}</table></header>")


def latest_by(records: list[dict], key) -> dict:
    """{key(r): r} keeping the latest record of each key (files in order, lines in order)."""
    return {key(r): r for r in records}


def _group(r: dict) -> str:
    text = f"{r['model']} b{r['batch_size']}"
    return text + (f" x{r['num_accelerators']}" if int(r.get("num_accelerators") or 1) > 1 else "")


def _variant(r: dict) -> str:
    return _framework(r) + ("/".join(str(v) for v in (r.get("engine"), r.get("precision")) if v) or "fp32")


def throughput_sections(records: list[dict]) -> str:
    figures = []
    for kind in ("train", "infer"):
        ok = runs_of(records, kind)
        if not ok:
            continue
        groups = list(dict.fromkeys(_group(r) for r in ok))
        variants = list(dict.fromkeys(_variant(r) for r in ok))
        every = defaultdict(list)
        for r in ok:
            every[_group(r), _variant(r)].append(r)
        series = []
        for v in variants:
            latest = [every[g, v][-1] if every[g, v] else None for g in groups]
            series.append(Bars(f"{v} accelerator", [r and r.get("images_per_sec") for r in latest],
                               [r and r.get("images_per_sec_stderr") for r in latest]))
            systems = [[r["system_images_per_sec"] for r in every[g, v] if r.get("system_images_per_sec")] for g in groups]
            series.append(Bars(f"{v} system", [s[-1] if s else None for s in systems],
                               [statistics.stdev(s) / math.sqrt(len(s)) if len(s) > 1 else None for s in systems]))
        svg = charts.bar_chart(f"{kind}: images/s per model and batch size", groups, series, unit="images/s")
        figures.append(figure(svg, marks(series), "Accelerator: mean of per-step images/s over the steady steps, error bar one "
                              "standard error. System: all images over the whole command's wall time; an error bar only "
                              "where a configuration ran more than once (standard error over its runs)."))
    return section("Throughput", "The original's two figures for each configuration that ended ok, then each "
                   "configuration's achieved FLOP/s against its precision's roof.", figures + roof_figures(records))


def roof_figures(records: list[dict]) -> list[str]:
    """Per kind: achieved TFLOP/s (TOPS at int8) per configuration, a dashed line at each precision's peak (the
    roof, core/efficiency.py: the latest record's peak of that precision and device) and, above each bar, its
    share of the roof (`mfu`), or "above roof" where the peak was underestimated (`peak_underestimated`)."""
    figures = []
    for kind in ("train", "infer"):
        ok = [r for r in runs_of(records, kind) if r.get("achieved_tflops") is not None]
        if not ok:
            continue
        groups = list(dict.fromkeys(_group(r) for r in ok))
        latest = latest_by(ok, lambda r: (_group(r), _variant(r)))
        series = []
        for v in dict.fromkeys(_variant(r) for r in ok):
            picked = [latest.get((g, v)) for g in groups]
            series.append(Bars(v, [r and r["achieved_tflops"] for r in picked], notes=[r and _roof_note(r) for r in picked]))
        roofs = latest_by([r for r in ok if r.get("peak_tflops")], lambda r: (r["device"], r["peak_precision"]))
        references = [(r["peak_tflops"] * int(r.get("num_accelerators") or 1),
                       f"{r['peak_precision']} roof {charts.number(r['peak_tflops'])} ({r['device']})") for r in roofs.values()]
        svg = charts.bar_chart(f"{kind}: achieved TFLOP/s against the roof", groups, series, unit="TFLOP/s",
                               references=references)
        figures.append(figure(svg, marks(series), "Achieved: forward GFLOPs per image x passes (3 training, 1 inference) x "
                              "images/s (TOPS at int8). Dashed lines: each precision's peak on its device (datasheet, or the "
                              "best of measured matrix products and convolutions; docs/roofline.md); above each bar its "
                              "share of the roof (MFU), 'above roof' where the peak was measured too low."))
    return figures


def _roof_note(r: dict) -> str | None:
    if r.get("peak_underestimated"):
        return "above roof"
    return None if r.get("mfu") is None else f"{100 * r['mfu']:.0f}%"


def speedup_section(records: list[dict]) -> str:
    ok = runs_of(records, "infer")

    def where(r: dict) -> tuple:  # an engine's speed-up is over its own framework's eager fp32
        return r["model"], r["batch_size"], r.get("image_size"), r.get("scenario"), r.get("device"), _framework(r)

    baseline = latest_by([r for r in ok if (r.get("engine"), r.get("precision")) == ("eager", "fp32")], where)
    others = [r for r in ok if where(r) in baseline and (r.get("engine"), r.get("precision")) != ("eager", "fp32")]
    if not others:
        return ""
    groups = list(dict.fromkeys(_group(r) for r in others))
    latest = latest_by(others, lambda r: (_group(r), _variant(r)))
    series = []
    for v in dict.fromkeys(_variant(r) for r in others):
        picked = [latest.get((g, v)) for g in groups]
        series.append(Bars(v, [r and r["images_per_sec"] / baseline[where(r)]["images_per_sec"] for r in picked],
                           notes=[_agreement(r) for r in picked]))
    svg = charts.bar_chart("speed-up over eager fp32 (same model, batch, image size, scenario)", groups, series,
                           unit="x eager fp32", reference=1.0)
    caption = ("Accelerator images/s over eager fp32's; the dashed line is 1. Above each bar the fp32 guard's top-1 "
               "agreement with eager fp32 on the same inputs (a `!` where the guard's relative error exceeded its bound).")
    return section("Engines and precisions", "What an engine or a reduced precision buys, and whether its answers stayed "
                   "right.", [figure(svg, marks(series), caption)])


def _agreement(r: dict | None) -> str | None:
    if r is None or r.get("guard_top1_agreement") is None:
        return None
    return f"top-1 {r['guard_top1_agreement']:.0f}%" + ("" if r.get("guard_ok", True) else " !")


def latency_section(records: list[dict]) -> str:
    ok = [r for r in runs_of(records, "infer") if r.get("latency_ms_p50") is not None]
    if not ok:
        return ""
    groups = [run_label(r) for r in ok]
    series = [Bars(p, [r.get(f"latency_ms_{p}") for r in ok]) for p in ("p50", "p90", "p99")]
    svg = charts.bar_chart("inference latency per batch", groups, series, unit="ms")
    return section("Latency", "Per-batch latency percentiles over the steady batches (warm-up excluded).",
                   [figure(svg, marks(series), "p50, p90 and p99 of the time per batch, in milliseconds.")])


def single_stream_section(records: list[dict]) -> str:
    figures = []
    for r in runs_of(records, "infer"):
        times = [t * 1000 for t in r.get("steady_seconds") or []]
        if r.get("scenario") != "single-stream" or len(times) < 2:
            continue
        low, high = min(times), max(times)
        width = (high - low) / HISTOGRAM_BINS or 1.0
        counts = [0] * HISTOGRAM_BINS
        for t in times:
            counts[min(int((t - low) / width), HISTOGRAM_BINS - 1)] += 1
        groups = [f"{charts.number(low + k * width)}" for k in range(HISTOGRAM_BINS)]
        bars = [Bars("queries", [float(c) if c else None for c in counts])]
        title = (f"{run_label(r)}: p50 {r['latency_ms_p50']:.3g}, p90 {r['latency_ms_p90']:.3g}, "
                 f"p99 {r['latency_ms_p99']:.3g} ms")
        svg = charts.bar_chart(title, groups, bars, unit="queries", height=260)
        figures.append(figure(svg, marks(bars), f"{len(times)} queries, one at a time; bins of {width:.3g} ms from the "
                              "label's value (empty bins drawn as gaps)."))
    return section("Single-stream latency", "How the latency of one query at a time is distributed (MLPerf's "
                   "single-stream scenario; the headline is p90).", figures)


def steps_section(records: list[dict]) -> str:
    figures = []
    for r in runs_of(records):
        warm, steady = r.get("warmup_seconds") or [], r.get("steady_seconds") or []
        if len(warm) + len(steady) < 2:
            continue
        images = int(r["batch_size"]) * int(r.get("world_size") or 1)
        ends, now = [], 0.0
        for t in warm + steady:
            now += t
            ends.append(now)
        line = Line(run_label(r), ends, [images / t if t > 0 else 0.0 for t in warm + steady])
        spans = [(0.0, sum(warm), "warm-up")] if warm else []
        svg = charts.line_chart(f"{r['kind']} {run_label(r)}", [line], x_unit="seconds since the first step",
                                y_unit="images/s", spans=spans)
        figures.append(figure(svg, 1, f"{len(warm)} warm-up and {len(steady)} steady steps; images/s of each step at its end."))
    return section("Step by step", "Images/s of every step over time, warm-up shaded: a slowdown, throttling or a "
                   "neighbour's load shows as a drift or a dip.", figures, grid=True)


def scaling_section(records: list[dict]) -> str:
    rated = [r for r in tables.with_scaling_efficiency(runs_of(records, "train")) if "scaling_efficiency" in r]
    if not rated:
        return ""
    groups = list(dict.fromkeys(f"{r['model']} b{r['batch_size']} {r.get('precision')}" for r in rated))
    latest = latest_by(rated, lambda r: (f"{r['model']} b{r['batch_size']} {r.get('precision')}", int(r["num_accelerators"])))
    counts = sorted({n for _, n in latest})
    series = [Bars(f"{n} accelerators", [latest[g, n]["scaling_efficiency"] if (g, n) in latest else None for g in groups])
              for n in counts]
    svg = charts.bar_chart("scaling efficiency", groups, series, unit="%", reference=100.0)
    return section("Scaling", "Images/s at N accelerators over N times images/s at one (same model, batch per "
                   "accelerator, precision); the dashed line is perfect scaling.",
                   [figure(svg, marks(series), "Percent; from the accelerator figures.")])


def input_wait_section(records: list[dict]) -> str:
    real = [r for r in runs_of(records) if r.get("data_wait_share") is not None]
    if not real:
        return ""
    series = [Bars("input wait", [100.0 * r["data_wait_share"] for r in real])]
    svg = charts.bar_chart("share of step time spent waiting for input", [run_label(r) for r in real], series, unit="%")
    return section("Input pipeline", "Runs with real data: how much of the step time went to waiting for the next "
                   "batch (decoding, augmentation, copying).", [figure(svg, marks(series), "Percent of all step time, warm-up included.")])


def telemetry_section(records: list[dict]) -> str:
    figures = []
    for field, unit, what in TELEMETRY:
        having = [r for r in runs_of(records) if isinstance(r.get(field), (int, float))]
        if not having:
            continue
        series = [Bars(what, [float(r[field]) for r in having])]
        svg = charts.bar_chart(f"{what} ({field})", [run_label(r) for r in having], series, unit=unit, height=260)
        figures.append(figure(svg, marks(series), f"{what}, {unit}, per run, as recorded."))
    return section("Power, clocks and efficiency", "Telemetry fields the records hold (shown only where recorded).",
                   figures, grid=True)


def validation_section(records: list[dict]) -> str:
    rows = [r for r in records if r.get("kind") == "synth-validation" and r.get("proxy_speedup") is not None]
    if not rows:
        return ""
    groups = [f"{r['configuration']} b{r['batch_size']}" for r in rows]
    series = [Bars(f"proxy ({rows[0].get('proxy')})", [r["proxy_speedup"] for r in rows]),
              Bars("mix of targets", [r["mix_speedup"] for r in rows])]
    svg = charts.bar_chart("synthetic proxy against its mix: speed-up over the baseline", groups, series,
                           unit="x baseline", reference=1.0)
    summary = next((r for r in records if r.get("kind") == "synth-validation" and r.get("configuration") == "summary"), {})
    caption = "Each configuration's speed-up for the proxy and for the weighted mix."
    if summary.get("spearman") is not None:
        caption += (f" Spearman {summary['spearman']:.2f}; largest error "
                    f"{summary.get('max_abs_speedup_error_percent') or float('nan'):.1f}%.")
    return section("Synthetic validation", "Does the synthetic network predict its mix on this device?",
                   [figure(svg, marks(series), caption)])


TABLE_COLUMNS = (("kind", "kind"), ("framework", "framework"), ("model", "model"), ("batch", "batch_size"), ("engine", "engine"),
                 ("precision", "precision"), ("scenario", "scenario"), ("accel.", "num_accelerators"),
                 ("status", "status"), ("img/s", "images_per_sec"), ("± se", "images_per_sec_stderr"),
                 ("system img/s", "system_images_per_sec"), ("p90 ms", "latency_ms_p90"),
                 ("guard top-1 %", "guard_top1_agreement"), ("reason", "reason"), ("record file", SOURCE))


def runs_table(records: list[dict]) -> str:
    """Every train and infer record, whatever its status: a failure is a row, not a gap."""
    runs = runs_of(records, ok=False)
    head = "".join(f"<th>{escape(name)}</th>" for name, _ in TABLE_COLUMNS)
    rows = []
    for r in runs:
        cells = "".join(f"<td>{escape(_cell(r.get(field)))}</td>" for _, field in TABLE_COLUMNS)
        rows.append(f'<tr class="status-{escape(str(r.get("status")))}">{cells}</tr>')
    failed = sum(r.get("status") != "ok" for r in runs)
    return (f'<section><h2>Every run</h2><p>{len(runs)} runs, {failed} of them not ok (highlighted).</p>'
            f'<div class="scroll"><table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"</table></div></section>")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return charts.number(value) if math.isfinite(value) else ""
    return str(value)


STYLE = """
body{font-family:sans-serif;margin:24px;color:#222;background:#fff}
h1{margin:0 0 4px}h2{margin:28px 0 6px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
table.env th{background:#f4f4f4}
.row{overflow-x:auto}.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:8px 0}figcaption{font-size:12px;color:#555;max-width:900px}
.scroll{overflow-x:auto}
table.runs tr.status-ok td:nth-child(8){color:#096}
table.runs tbody tr:not(.status-ok){background:#fde2e1}
"""

# The page's own check (see the module docstring); it writes nothing to the console when all is well.
SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var problems = [], figures = document.querySelectorAll('figure.chart');
  figures.forEach(function (fig, i) {
    var svg = fig.querySelector('svg'), want = parseInt(fig.dataset.marks, 10);
    var name = (fig.querySelector('svg > text') || {}).textContent || ('chart ' + i);
    if (!svg || svg.getBoundingClientRect().width < 10) { problems.push(name + ': not drawn'); return; }
    var marks = svg.querySelectorAll('.mark'), empty = 0;
    marks.forEach(function (m) { var b = m.getBBox(); if (!(b.width > 0 && b.height > 0) && !(b.width + b.height > 0 && m.tagName === 'polyline')) empty++; });
    if (marks.length !== want) problems.push(name + ': ' + marks.length + ' marks drawn, ' + want + ' expected');
    if (empty) problems.push(name + ': ' + empty + ' marks of no size');
  });
  if (!document.querySelector('table.runs')) problems.push('the table of runs is missing');
  document.body.dataset.reportCheck = problems.length ? 'failed: ' + problems.join('; ') : 'ok ' + figures.length;
  problems.forEach(function (p) { console.error('report check: ' + p); });
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>{header}{body}{table}<script>{script}</script></body></html>
"""
