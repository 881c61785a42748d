"""`cnnbench profile MODEL...`: every model resolved and checked first, then each profiled (layers.py, with
--measure measure.py), written as a profile file (profile_file.py) and summarised on the console."""

from __future__ import annotations

import re
from pathlib import Path

from cnnbench.tools.profile.layers import DISTRIBUTIONS
from cnnbench.tools.profile.measure import measure
from cnnbench.tools.profile.profile_file import load_profile, looks_like_profile, profile_model, write_profile


def run(cfg) -> int:
    """`cnnbench profile`: every model resolved, every size checked and every saved profile read before any
    work (a mistake in the last argument costs nothing), then each profiled, written and shown."""
    from cnnbench.models.registry import check_image_size, resolve_any
    from cnnbench.core.placement import resolve_placement
    from cnnbench.core.files import ensure_writable

    cfg.validate()
    targets = []  # (argument, registry entry or None, saved profile or None)
    for name in cfg.models:
        if looks_like_profile(name):
            targets.append((name, None, load_profile(name)))
            continue
        entry = resolve_any(name)
        check_image_size(entry, cfg.image_size or entry.input_size)
        ensure_writable(output_path(cfg, entry.name).parent, "--out")
        targets.append((name, entry, None))
    placement = resolve_placement(cfg.device, cfg.precision) if cfg.measure else None
    for name, entry, saved in targets:
        if saved is not None:
            print_summary(saved, name, written=False)
            continue
        path = output_path(cfg, entry.name)
        profile = profile_model(entry, cfg.image_size or entry.input_size, cfg.batch_size, cfg.precision)
        if placement is not None:
            profile["measured"] = measure(entry, profile["image_size"], cfg.batch_size, placement, cfg.warmup, cfg.steps)
        write_profile(profile, path)
        print_summary(profile, path, written=True)
    return 0


def output_path(cfg, model_name: str) -> Path:
    """--out itself for one model; profile_<model>.json in --out when it is a folder or several models are
    profiled; profile_<model>.json here without --out."""
    filename = "profile_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name) + ".json"
    if cfg.out is None:
        return Path(filename)
    out = Path(cfg.out)
    if out.is_dir() or len(cfg.models) > 1:
        return out / filename
    return out


def print_summary(profile: dict, path: str | Path, written: bool) -> None:
    """The profile in a few lines and one table: per operation type, FLOPs per image and their share,
    parameters, bytes for the batch, arithmetic intensity (and time shares with --measure)."""
    from cnnbench.core.terminal import say, summary_table

    t, batch, size = profile["totals"], profile["batch_size"], profile["image_size"]
    say(f"{profile['model']} ({profile.get('source', '?')}) at {size}x{size}, batch {batch}, {profile['precision']} "
        f"({profile['bytes_per_element']} bytes per value)")
    say(f"  per image: {t['flops'] / batch / 2e9:.2f} GMACs = {t['flops'] / batch / 1e9:.2f} GFLOPs; "
        f"{t['parameters'] / 1e6:.2f} M parameters; {len(profile['layers'])} layers; "
        f"{t['arithmetic_intensity']:.1f} FLOPs/byte at batch {batch}")
    measured = profile.get("measured")
    columns = [("type", "type"), ("layers", "layers"), ("GFLOPs/image", "gflops"), ("FLOP share", "share"),
               ("params M", "params"), ("MB read", "read"), ("MB written", "written"), ("FLOPs/byte", "intensity")]
    if measured:
        columns += [("forward time", "forward"), ("backward time", "backward")]
    rows = [_summary_row(kind, figures, batch, measured) for kind, figures in profile["op_types"].items()
            if figures["layers"] or (measured and _time_shares(measured, kind) != (0, 0))]
    everything = {**t, "layers": len(profile["layers"]), "flop_share": 1.0 if t["flops"] else 0.0}
    rows.append(_summary_row("total", everything, batch, None))
    if measured:
        rows[-1].update(forward="100.0%", backward="100.0%")
    summary_table(f"{profile['model']}: operation types (FLOPs per image; bytes for the batch of {batch})", rows, columns)
    for name in DISTRIBUTIONS:
        histogram = profile["distributions"][name]
        bins = ", ".join(f"{label} {w * 100:.1f}%" for label, w in zip(histogram["labels"], histogram["weights"]) if w)
        say(f"  {name.replace('_', ' ')} (share of FLOPs): {bins or '-'}")
    if measured:
        for direction in ("forward", "backward"):
            figures = measured[direction]
            say(f"  measured {direction} on {measured.get('device', '?')}: {figures.get('seconds_per_step', 0) * 1e3:.1f} ms "
                f"per step, {figures.get('coverage', 0) * 100:.0f}% of it in labelled layers")
    say(f"  profile {'written to' if written else 'read from'} {path}")


def _time_shares(measured: dict, kind: str) -> tuple[float, float]:
    return tuple(measured[d]["time_share"].get(kind, 0) for d in ("forward", "backward"))


def _summary_row(kind: str, figures: dict, batch: int, measured: dict | None) -> dict:
    row = {"type": kind, "layers": str(figures["layers"]), "gflops": f"{figures['flops'] / batch / 1e9:.3f}",
           "share": f"{figures['flop_share'] * 100:.1f}%", "params": f"{figures['parameters'] / 1e6:.2f}",
           "read": f"{figures['bytes_read'] / 1e6:.1f}", "written": f"{figures['bytes_written'] / 1e6:.1f}",
           "intensity": f"{figures.get('arithmetic_intensity', 0.0):.1f}"}
    if measured:
        forward, backward = _time_shares(measured, kind)
        row.update(forward=f"{forward * 100:.1f}%", backward=f"{backward * 100:.1f}%")
    return row
