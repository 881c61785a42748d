"""The versioned profile file: a profile made from a registry entry (profile_model), written, read back and
checked (load_profile, looks_like_profile); `cnnbench synth` reads profiles made elsewhere through it.

The profile file (FORMAT "cnnbench-profile", VERSION 1; JSON, written with "format" first)
------------------------------------------------------------------------------------------
  format, version                "cnnbench-profile", 1; a reader refuses other formats and newer versions
  model, source, spec_file       the model's name; "registered", "torchvision" or "spec"; the spec's path or null
  image_size, batch_size         input height = width, and images per step, the counts are for
  precision, bytes_per_element   the --precision bytes were counted at, and its bytes per value
  created, torch, torchvision, cnnbench   UTC time (ISO 8601) and the versions that made the file
  totals                         flops (the batch), flops_per_image, macs_per_image (flops_per_image / 2),
                                 parameters, bytes_read, bytes_written, arithmetic_intensity, layers (count)
  op_types                       for every type of OP_TYPES: layers, flops, flop_share (of totals.flops; the
                                 shares sum to 1), parameters, bytes_read, bytes_written, arithmetic_intensity
  distributions                  kernel_size, channel_width, spatial_size, arithmetic_intensity: each
                                 {"labels": [...], "weights": [...], "edges": [...] (numeric ones)}, weights the
                                 share of FLOPs in each bin (summing to 1); only layers with FLOPs take part
  layers                         one flat record per layer, in execution order: index, name (module path;
                                 "model" for the root), type, function (the torch function called),
                                 in_channels, out_channels, kernel [h, w], stride [h, w], groups, input_hw
                                 [h, w], output_hw [h, w] (null where a layer has none), flops, parameters,
                                 bytes_read, bytes_written, arithmetic_intensity, inputs (the indexes of the
                                 layers that wrote its tensor arguments; absent in profiles made before issue 25)
  motifs                         the operations around the convs (motifs.py: counts per network and per level,
                                 merges, gates); absent or null before issue 25, when it is not checked
  measured                       null, or with --measure: device, precision, memory_format, batch_size,
                                 image_size, warmup_steps, steps, forward and backward (each: seconds_per_step,
                                 labelled_seconds_per_step, coverage = labelled / whole pass, time_share per
                                 op type summing to 1), environment (the env.* fields of a run record)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import torch
from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.tools.profile.layers import (BYTES_PER_ELEMENT, DISTRIBUTIONS, OP_TYPES, count_layers, distributions,
                                           op_types, totals)
from cnnbench.tools.profile.motifs import MERGES, ORDERS, motifs_section

FORMAT = "cnnbench-profile"
VERSION = 1


# ---------------------------------------------------------------- making a profile


def profile_model(entry, image_size: int, batch_size: int, precision: str = "fp32") -> dict:
    """The profile (format version 1, see the module's docstring) of a registry entry, counted on the meta device."""
    import torchvision

    import cnnbench
    from cnnbench.models.registry import check_image_size, count_parameters

    check_image_size(entry, image_size)
    bytes_per_element = BYTES_PER_ELEMENT[precision]
    try:
        model = _meta_model(entry, image_size)
        # The forward runs inside the meta device's context too, so that a tensor the model makes in its
        # forward lands on the same device as its weights.
        with torch.device("meta"):
            x = torch.empty(batch_size, 3, image_size, image_size)
            layers, total = count_layers(model, x, bytes_per_element)
    except (RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError) as exc:
        raise UsageError(f"{entry.name} cannot be profiled at --image-size {image_size} ({one_line(exc)}); "
                         f"its default is {entry.input_size}") from None
    parameters = count_parameters(model)
    return {
        "format": FORMAT, "version": VERSION, "model": entry.name, "source": _source(entry),
        "spec_file": str(entry.spec_path) if entry.spec_path else None,
        "image_size": image_size, "batch_size": batch_size, "precision": precision,
        "bytes_per_element": bytes_per_element,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cnnbench": cnnbench.__version__,
        "totals": totals(layers, total, parameters, batch_size),
        "op_types": op_types(layers, total),
        "distributions": distributions(layers),
        "layers": layers,
        "motifs": motifs_section(layers, image_size),
        "measured": None,
    }


def _meta_model(entry, image_size: int) -> nn.Module:
    """The model with its tensors on the meta device. A builder that computes with tensor values (torchvision's
    RegNets round their widths with torch.round(...).tolist()) cannot run there: it builds on the CPU, and its
    tensors then move to meta."""
    try:
        with torch.device("meta"):
            return entry.build(image_size)
    except NotImplementedError:
        return entry.build(image_size).to("meta")


def _source(entry) -> str:
    return entry.notes.get("source") or ("spec" if entry.spec_path else "registered")


def write_profile(profile: dict, path: Path) -> None:
    from cnnbench.core.files import atomic_write_text

    try:
        atomic_write_text(Path(path), json.dumps(profile, indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write the profile {path} ({exc.strerror or one_line(exc)}); "
                         "give --out a file in a folder you can write to") from None


# ---------------------------------------------------------------- reading a profile back


def looks_like_profile(path: str | Path) -> bool:
    """Whether a file is meant as a profile (its format tag in the first bytes; profiles are written with
    "format" first), so that a damaged profile is reported as a profile, not as a malformed spec file."""
    try:
        with open(path, "rb") as handle:
            return FORMAT.encode() in handle.read(4096)
    except OSError:
        return False


def load_profile(path: str | Path) -> dict:
    """A profile file, checked against format version 1; anything else is one UsageError line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the profile {path} ({exc.strerror or one_line(exc)})") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise UsageError(f"profile {path} is not valid JSON ({one_line(exc)}); write it again with "
                         "`cnnbench profile MODEL --out FILE`") from None
    problem = profile_problem(data)
    if problem:
        raise UsageError(f"profile {path} is not a valid {FORMAT} version {VERSION} file: {problem}")
    return data


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _sums_to_one(values: list) -> bool:
    return abs(sum(values) - 1.0) <= 1e-6


def profile_problem(data: object) -> str | None:
    """What is wrong with a would-be profile, in a few words; None when it is a valid version 1 profile."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    if data.get("format") != FORMAT:
        return f"its format is {data.get('format')!r}, not {FORMAT!r}"
    if not isinstance(data.get("version"), int) or data["version"] < 1:
        return f"its version {data.get('version')!r} is not a positive integer"
    if data["version"] > VERSION:
        return f"its version {data['version']} is newer than this cnnbench reads ({VERSION}); update cnnbench"
    for key, kind in (("model", str), ("precision", str), ("totals", dict), ("op_types", dict),
                      ("distributions", dict), ("layers", list)):
        if not isinstance(data.get(key), kind):
            return f"'{key}' is missing or not a JSON {'string' if kind is str else kind.__name__}"
    for key in ("image_size", "batch_size", "bytes_per_element"):
        if not _number(data.get(key)) or not data[key] >= 1:
            return f"'{key}' must be a number of at least 1, got {data.get(key)!r}"
    return (_totals_problem(data) or _op_types_problem(data) or _layers_problem(data["layers"])
            or _distributions_problem(data["distributions"]) or _motifs_problem(data.get("motifs"))
            or _measured_problem(data.get("measured")))


def _totals_problem(data: dict) -> str | None:
    for key in ("flops", "parameters", "bytes_read", "bytes_written", "arithmetic_intensity"):
        if not _number(data["totals"].get(key)):
            return f"totals.{key} must be a non-negative number, got {data['totals'].get(key)!r}"
    return None


def _op_types_problem(data: dict) -> str | None:
    unknown = sorted(set(data["op_types"]) - set(OP_TYPES))
    if unknown:
        return f"op_types has unknown operation types {', '.join(unknown)} (known: {', '.join(OP_TYPES)})"
    for kind, figures in data["op_types"].items():
        for key in ("layers", "flops", "flop_share", "parameters", "bytes_read", "bytes_written"):
            if not isinstance(figures, dict) or not _number(figures.get(key)):
                return f"op_types.{kind}.{key} must be a non-negative number"
    shares = [figures["flop_share"] for figures in data["op_types"].values()]
    if data["totals"]["flops"] and not _sums_to_one(shares):
        return f"the op_types' flop_share values sum to {sum(shares):.6g}, not 1"
    return None


def _layers_problem(layers: list) -> str | None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("type") not in OP_TYPES:
            return f"layers[{i}] is not a layer record with a known 'type'"
        for key in ("flops", "parameters", "bytes_read", "bytes_written", "arithmetic_intensity"):
            if not _number(layer.get(key)):
                return f"layers[{i}].{key} must be a non-negative number, got {layer.get(key)!r}"
    return None


def _distributions_problem(found: dict) -> str | None:
    for name in DISTRIBUTIONS:
        histogram = found.get(name)
        if not isinstance(histogram, dict) or not isinstance(histogram.get("labels"), list) \
                or not isinstance(histogram.get("weights"), list) \
                or len(histogram["labels"]) != len(histogram["weights"]):
            return f"distributions.{name} must hold 'labels' and 'weights' lists of one length"
        weights = histogram["weights"]
        if not all(_number(w) for w in weights) or (weights and sum(weights) and not _sums_to_one(weights)):
            return f"distributions.{name}.weights must be non-negative shares summing to 1"
    return None


def _motifs_problem(motifs: object) -> str | None:
    """A profile made before issue 25 has no motifs (absent or null) and still loads; one that has them must
    count them consistently."""
    if motifs is None:
        return None
    if not isinstance(motifs, dict) or not _number(motifs.get("convs")):
        return "motifs.convs must be a non-negative number"
    for key, names in (("order", ORDERS), ("merge", (*MERGES, "none"))):
        counts = motifs.get(key)
        if not isinstance(counts, dict) or not all(_number(counts.get(name)) for name in names):
            return f"motifs.{key} must count {', '.join(names)}"
        if sum(counts[name] for name in names) != motifs["convs"]:
            return f"motifs.{key} counts {sum(counts[name] for name in names)} convolutions, not motifs.convs ({motifs['convs']})"
    for key in ("gated", "depthwise_pointwise"):
        if not _number(motifs.get(key)) or motifs[key] > motifs["convs"]:
            return f"motifs.{key} must be a number of convolutions from 0 to motifs.convs"
    if not isinstance(motifs.get("levels"), dict) or not isinstance(motifs.get("merges"), dict) \
            or not isinstance(motifs.get("gates"), dict):
        return "motifs must hold 'levels', 'merges' and 'gates' objects"
    return None


def _measured_problem(measured: object) -> str | None:
    if measured is None:
        return None
    for direction in ("forward", "backward"):
        part = measured.get(direction) if isinstance(measured, dict) else None
        shares = part.get("time_share") if isinstance(part, dict) else None
        if not isinstance(shares, dict) or not all(_number(v) for v in shares.values()) \
                or (sum(shares.values()) and not _sums_to_one(list(shares.values()))):
            return f"measured.{direction}.time_share must map operation types to shares summing to 1"
    return None
