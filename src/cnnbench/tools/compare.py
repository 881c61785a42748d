"""`cnnbench compare BASE NEW`: the configurations two runs share, side by side, with a verdict that
accounts for noise.

A configuration is what was run (kind, model, batch size, image size, engine, precision, scenario,
accelerators, device type, synthetic or real input); where a side ran it more than once, its latest record
counts, unless the runs were a sweep's repeated processes (--repeat): then their mean counts, and se is
the standard error across the processes (per_configuration). For each configuration in both, the accelerator figure (mean images/s over the steady steps) of
each side with its standard error se (std / sqrt(n), stats.py), the ratio new / base, and a verdict:

  faster / slower     |new - base| > noise_factor x sqrt(se_base^2 + se_new^2)  and  |ratio - 1| >= threshold
  within noise        the change is no larger than noise_factor standard errors of the difference
  within threshold    the change is smaller than the threshold (default 3%), however small the noise
  failed in new / failed in base / failed in both   a side's record has another status than ok

The factor (default 3) is in standard errors of the difference of two independent means: under normal
noise a change beyond 3 of them happens by chance about 3 times in 1,000. Per-step times are
autocorrelated (clocks, caches, a neighbour's load), so se understates the noise of a whole run; the
threshold keeps a large run's tiny se from calling a 1% change real. Differences of environment (device,
framework, driver, library versions, CPU ISA, commit) are listed first: they explain most changes. The
framework is not part of a configuration: `cnnbench compare results_pytorch results_tensorflow` sets
the frameworks side by side, configuration by configuration (issue 15).

--fail-below RATIO makes the command exit 1 (EXIT_REGRESSION) when a configuration is `slower` with a
ratio below RATIO, or `failed in new`: a regression gate for CI.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from cnnbench.core import errors, store, tables
from cnnbench.tools.charts import number
from cnnbench.core.config import CompareConfig

KEY_FIELDS = ("kind", "model", "model_source", "batch_size", "image_size", "engine", "precision", "scenario", "num_accelerators",
              "device", "input")
RUN_KINDS = ("train", "infer")
# Fields of the environment that differ between any two runs and explain nothing (the time of the run).
ENV_IGNORED = ("env.timestamp",)
REGRESSIONS = ("slower", "failed in new")


def key_of(record: dict) -> tuple:
    """The configuration a record measured, in KEY_FIELDS order; the device by type (cuda:0 and cuda:1 are one)."""
    values = {k: record.get(k) for k in KEY_FIELDS}
    values["device"] = str(record.get("device") or "").split(":")[0] or None
    values["model_source"] = tables.model_source(record)  # a spec file named as a registered model is another
    values["num_accelerators"] = int(record.get("num_accelerators") or 1)
    values["input"] = "real" if record.get("config.data.data_dir") else "synthetic"
    values["scenario"] = record.get("scenario") or ("offline" if record.get("kind") == "infer" else None)
    return tuple(values[k] for k in KEY_FIELDS)


def label(key: tuple) -> str:
    """`infer resnet50 batch 16 onnxruntime/int8`, with what differs from the usual added."""
    k = dict(zip(KEY_FIELDS, key))
    variant = "/".join(str(v) for v in (k["engine"], k["precision"]) if v)
    text = f"{k['kind']} {k['model']} batch {k['batch_size']} {variant}".rstrip()
    extras = [f"{k['image_size']} px" if k["image_size"] else "", k["scenario"] if k["scenario"] not in (None, "offline") else "",
              f"x{k['num_accelerators']}" if k["num_accelerators"] > 1 else "", k["device"] or "",
              "real data" if k["input"] == "real" else "",
              "spec file" if k["model_source"] == "spec" else ""]  # the other sources' names say theirs (timm:, .py:)
    return text + "".join(f", {e}" for e in extras if e)


def load(path: str) -> list[dict]:
    """The run records (train and infer) under a results folder or in a record file, in file order."""
    records = [r for f in store.record_files(path) for r in store.read_file(f) if r.get("kind") in RUN_KINDS]
    if not records:
        raise errors.UsageError(f"{path}: no train or infer records found (runs.jsonl); give a results folder or its runs.jsonl")
    return records


@dataclass
class Row:
    key: tuple
    base: dict
    new: dict
    ratio: float | None
    noise: float | None  # noise_factor standard errors of the difference, as a fraction of the base figure
    verdict: str


def judge(base: dict, new: dict, threshold: float, factor: float) -> Row:
    if base.get("status") != "ok" or new.get("status") != "ok":
        which = "both" if base.get("status") != "ok" and new.get("status") != "ok" else "base" if base.get("status") != "ok" else "new"
        return Row(key_of(base), base, new, None, None, f"failed in {which}")
    b, n = base.get("images_per_sec"), new.get("images_per_sec")
    if not b or n is None:
        return Row(key_of(base), base, new, None, None, "no figure")
    se = math.hypot(base.get("images_per_sec_stderr") or 0.0, new.get("images_per_sec_stderr") or 0.0)
    ratio, noise = n / b, factor * se / b
    if abs(ratio - 1) < threshold:
        verdict = "within threshold"
    elif abs(n - b) <= factor * se:
        verdict = "within noise"
    else:
        verdict = "faster" if n > b else "slower"
    return Row(key_of(base), base, new, ratio, noise, verdict)


def environment_differences(base: list[dict], new: list[dict]) -> list[tuple[str, list[str], list[str]]]:
    """(field, base's values, new's values) for each env.* field (and the device) whose values differ."""
    def values(records: list[dict], field: str) -> list[str]:
        # Records from before issue 15 name no framework: they ran on PyTorch.
        return sorted({str(r.get(field, "pytorch" if field == "framework" else None)) for r in records})

    fields = dict.fromkeys(["device", "framework", "framework_version",
                            *[k for r in base + new for k in r if k.startswith("env.") and k not in ENV_IGNORED]])
    return [(f, values(base, f), values(new, f)) for f in fields if values(base, f) != values(new, f)]


@dataclass
class Comparison:
    base_path: str
    new_path: str
    environment: list[tuple[str, list[str], list[str]]]
    rows: list[Row]
    only_base: list[tuple]
    only_new: list[tuple]

    def regressions(self, fail_below: float) -> list[Row]:
        return [r for r in self.rows if r.verdict == "failed in new" or (r.verdict == "slower" and r.ratio < fail_below)]


def per_configuration(records: list[dict]) -> dict[tuple, dict]:
    """key -> the record that stands for the configuration: its latest, or, where a sweep ran it in several
    processes (--repeat: records with a `repeat` index), their mean with the standard error across processes
    (stdev / sqrt(n)) as `images_per_sec_stderr` and their count as `repeats`: the noise between processes,
    which the noise within one run understates (autocorrelated steps, a process's own memory placement)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(key_of(r), []).append(r)
    out = {}
    for key, group in groups.items():
        across = tables.spread(group, "images_per_sec")
        if across is None:
            out[key] = group[-1]
            continue
        mean, stdev, n = across
        system = tables.spread(group, "system_images_per_sec")
        out[key] = {**group[-1], "status": "ok", "images_per_sec": mean, "images_per_sec_stderr": stdev / math.sqrt(n),
                    "repeats": n, "system_images_per_sec": system[0] if system else group[-1].get("system_images_per_sec")}
    return out


def compare(cfg: CompareConfig) -> Comparison:
    base, new = load(cfg.base), load(cfg.new)
    latest_base, latest_new = per_configuration(base), per_configuration(new)
    rows = [judge(latest_base[k], latest_new[k], cfg.threshold, cfg.noise_factor) for k in latest_base if k in latest_new]
    return Comparison(cfg.base, cfg.new, environment_differences(base, new), rows,
                      [k for k in latest_base if k not in latest_new], [k for k in latest_new if k not in latest_base])


def run(cfg: CompareConfig) -> int:
    cfg.validate()
    comparison = compare(cfg)
    print({"markdown": markdown, "csv": csv_text, "json": json_text}[cfg.format](comparison, cfg), end="")
    if cfg.fail_below is not None and not comparison.rows:
        # A gate that compared nothing must not pass: folders of different sweeps, or a mistyped folder.
        raise errors.UsageError(f"--fail-below: {cfg.base} and {cfg.new} share no configuration, so nothing was "
                                "compared; give two results folders of the same sweep")
    if cfg.fail_below is not None and comparison.regressions(cfg.fail_below):
        return errors.EXIT_REGRESSION
    return 0


def _figure(record: dict) -> str:
    value, se = record.get("images_per_sec"), record.get("images_per_sec_stderr")
    if record.get("status") != "ok" or value is None:
        return str(record.get("status"))
    across = f" ({record['repeats']} processes)" if record.get("repeats") else ""
    return (f"{number(value)} ± {number(se)}" if se is not None else number(value)) + across


def markdown(c: Comparison, cfg: CompareConfig) -> str:
    lines = [f"# cnnbench compare: {c.base_path} -> {c.new_path}", "",
             f"Verdict: a change counts when it exceeds {cfg.noise_factor:g} standard errors of the difference and "
             f"{cfg.threshold:.1%} of the base (accelerator images/s, mean over steady steps). Where a side ran a "
             "configuration in several processes (a sweep's --repeat), its figure is their mean and its standard error "
             "the spread across those processes.", "",
             "## Environment differences", ""]
    if c.environment:
        lines += ["| field | base | new |", "| --- | --- | --- |"]
        lines += [f"| {f} | {', '.join(b)} | {', '.join(n)} |" for f, b, n in c.environment]
    else:
        lines.append("none")
    lines += ["", "## Configurations in both", "", "| configuration | base img/s | new img/s | ratio | noise ± | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in c.rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        noise = "-" if r.noise is None else f"{r.noise:.1%}"
        lines.append(f"| {label(r.key)} | {_figure(r.base)} | {_figure(r.new)} | {ratio} | {noise} | {r.verdict} |")
    for title, keys in (("Only in base", c.only_base), ("Only in new", c.only_new)):
        lines += ["", f"## {title}", ""] + ([f"- {label(k)}" for k in keys] or ["none"])
    return "\n".join(lines) + "\n"


COLUMNS = (*KEY_FIELDS, "base_images_per_sec", "base_stderr", "new_images_per_sec", "new_stderr", "ratio", "noise",
           "base_system_images_per_sec", "new_system_images_per_sec", "verdict", "base_repeats", "new_repeats")


def flat_rows(c: Comparison) -> list[dict]:
    """One flat dict per configuration, those in one run only included (verdict `only in base` / `only in new`)."""
    out = []
    for r in c.rows:
        out.append({**dict(zip(KEY_FIELDS, r.key)), "base_images_per_sec": r.base.get("images_per_sec"),
                    "base_stderr": r.base.get("images_per_sec_stderr"), "new_images_per_sec": r.new.get("images_per_sec"),
                    "new_stderr": r.new.get("images_per_sec_stderr"), "ratio": r.ratio, "noise": r.noise,
                    "base_system_images_per_sec": r.base.get("system_images_per_sec"),
                    "new_system_images_per_sec": r.new.get("system_images_per_sec"), "verdict": r.verdict,
                    "base_repeats": r.base.get("repeats"), "new_repeats": r.new.get("repeats")})
    for keys, verdict in ((c.only_base, "only in base"), (c.only_new, "only in new")):
        out += [{**dict(zip(KEY_FIELDS, k)), "verdict": verdict} for k in keys]
    return out


def csv_text(c: Comparison, cfg: CompareConfig) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_rows(c))
    return out.getvalue()


def json_text(c: Comparison, cfg: CompareConfig) -> str:
    document = {"base": c.base_path, "new": c.new_path,
                "rule": {"threshold": cfg.threshold, "noise_factor": cfg.noise_factor, "figure": "images_per_sec"},
                "environment": [{"field": f, "base": b, "new": n} for f, b, n in c.environment],
                "configurations": flat_rows(c)}
    return json.dumps(document, indent=2, default=str) + "\n"
