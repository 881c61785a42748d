"""`cnnbench soak MODEL` and the pressure sweep (`cnnbench soak-all`, ./train-all-pressure.sh): the
original's pressure test (train-all-pressure.sh: every model at batch 64 for 2,000 batches, into
results_train_pressure/), and a verdict on whether performance held (issue 12).

A soak is a training run (recipes/training.run, of either framework: same loop, same record) whose record gains the verdict: the first
and the last 10% of the steady steps compared, throughput (images/s over those steps) and p99 step time,
with the clocks and temperature of the first and last 10% of the telemetry series beside them, the
throttle reasons seen and the run's errors. Throughput that falls by more than --drop-threshold percent
(default 5), or a run that did not end ok, is flagged.

Fields: soak_steps_compared (steps in each tenth), soak_images_per_sec_first / _last, soak_throughput_drift_pct,
soak_p99_ms_first / _last, soak_p99_drift_pct, soak_clock_mhz_first / _last (the GPU's SM clock, else the
CPU's frequency), soak_temperature_c_first / _last, soak_throttle_reasons, soak_threshold_pct,
soak_flagged, soak_verdict (one line).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnbench.core.config import SoakConfig
from cnnbench.models.registry import resolve_entry

MIN_STEPS = 20  # 10% of fewer steps is one step: a verdict on single steps would be noise


def run(cfg: SoakConfig) -> dict:
    """The soak: a training run with the pressure test's defaults and the verdict in its record."""
    from cnnbench.recipes import training

    cfg = cfg.resolved()
    if cfg.log_dir is None:  # its own checkpoints: a soak neither resumes from nor replaces `cnnbench train`'s
        cfg = dataclasses.replace(cfg, log_dir=f"log_pressure_{resolve_entry(cfg.model).name}_{cfg.measure.batch_size}")
    return training.run(cfg, annotate=lambda record: verdict(record, cfg.drop_threshold))


def _mean(values) -> float | None:
    values = [v for v in values or [] if v is not None]
    return float(np.mean(values)) if values else None


def _tenths(series: list | None) -> tuple[float | None, float | None]:
    """Mean of the first and of the last 10% (at least one point) of a telemetry series."""
    if not series:
        return None, None
    k = max(1, len(series) // 10)
    return _mean(series[:k]), _mean(series[-k:])


def _drift(first: float | None, last: float | None) -> float | None:
    return None if first is None or last is None or first == 0 else 100.0 * (last - first) / first


def verdict(record: dict, threshold_pct: float) -> dict:
    """The sustained-performance fields of a training record (see the module's docstring)."""
    steps = record.get("steady_seconds") or []
    images = record["batch_size"] * (record.get("num_accelerators") or 1)
    k = len(steps) // 10
    out = dict.fromkeys(("soak_steps_compared", "soak_images_per_sec_first", "soak_images_per_sec_last",
                         "soak_throughput_drift_pct", "soak_p99_ms_first", "soak_p99_ms_last", "soak_p99_drift_pct"))
    if len(steps) >= MIN_STEPS:
        first, last = np.asarray(steps[:k]), np.asarray(steps[-k:])
        out.update(soak_steps_compared=k, soak_images_per_sec_first=images * k / float(first.sum()),
                   soak_images_per_sec_last=images * k / float(last.sum()),
                   soak_p99_ms_first=1000 * float(np.percentile(first, 99)), soak_p99_ms_last=1000 * float(np.percentile(last, 99)))
        out["soak_throughput_drift_pct"] = _drift(out["soak_images_per_sec_first"], out["soak_images_per_sec_last"])
        out["soak_p99_drift_pct"] = _drift(out["soak_p99_ms_first"], out["soak_p99_ms_last"])
    clock = record.get("telemetry_series_sm_clock_mhz") or record.get("telemetry_series_cpu_freq_mhz")
    out["soak_clock_mhz_first"], out["soak_clock_mhz_last"] = _tenths(clock)
    out["soak_temperature_c_first"], out["soak_temperature_c_last"] = _tenths(record.get("telemetry_series_temperature_c"))
    reasons = [r for r in (record.get("throttle_reasons") or "").split(",") if r and r != "gpu_idle"]
    out.update(soak_throttle_reasons=",".join(reasons) or None, soak_threshold_pct=threshold_pct)
    out.update(judge(out, record, len(steps), threshold_pct))
    return out


def judge(fields: dict, record: dict, steps: int, threshold_pct: float) -> dict:
    """soak_flagged and soak_verdict from the compared figures, the run's status and what throttled."""
    problems = []
    if record.get("status") != "ok":
        problems.append(f"the run ended {record.get('status')}: {record.get('reason')}")
    drift = fields["soak_throughput_drift_pct"]
    if drift is not None and drift < -threshold_pct:
        problems.append(f"throughput fell {-drift:.1f}% from the first to the last 10% of steps "
                        f"(threshold {threshold_pct:g}%)")
    notes = []
    if drift is None:
        notes.append(f"too few steady steps ({steps}) to compare: at least {MIN_STEPS}")
    else:
        notes.append(f"images/s {fields['soak_images_per_sec_first']:.1f} -> {fields['soak_images_per_sec_last']:.1f} "
                     f"({drift:+.1f}%), p99 step {fields['soak_p99_ms_first']:.1f} -> {fields['soak_p99_ms_last']:.1f} ms "
                     f"({fields['soak_p99_drift_pct']:+.1f}%)")
    if fields["soak_clock_mhz_first"] is not None:
        notes.append(f"clock {fields['soak_clock_mhz_first']:.0f} -> {fields['soak_clock_mhz_last']:.0f} MHz")
    if fields["soak_temperature_c_first"] is not None:
        notes.append(f"temperature {fields['soak_temperature_c_first']:.0f} -> {fields['soak_temperature_c_last']:.0f} C")
    if fields["soak_throttle_reasons"]:
        notes.append(f"throttled: {fields['soak_throttle_reasons']}")
    head = "FLAGGED: " + "; ".join(problems) if problems else ("sustained" if drift is not None else "no verdict")
    return {"soak_flagged": bool(problems), "soak_verdict": f"{head} ({'; '.join(notes)})"}
