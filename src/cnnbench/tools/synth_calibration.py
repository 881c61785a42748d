"""`cnnbench synth --calibrate` (issue 25, item 2): the proxy's time shares matched to the targets' on this device.

The static goals (FLOPs, parameters, FLOP shares, motif shares) say what a proxy computes, not where a device
spends its time: a batch norm, an activation or a concatenation does no FLOPs a profile counts, yet takes a
share of a step that depends on the device, the precision and the widths. So the loop measures it:

1. Time shares by kind (KINDS: compute, batch norm, activation, pool, add, concat, gate, other) of a training
   step (forward and backward, no optimizer step) of every target and of the proxy, with `cnnbench profile
   --measure`'s measure() (tools/profile/measure.py: torch.profiler spans per operation type, eager PyTorch,
   at --precision, channels-last where cnnbench uses it) at --image-size and --batch-size on --device. A model's
   share of a kind is its forward and backward labelled time in that kind over its labelled time; the mix's is
   the targets' weighted by their weight times their labelled time per image (the fleet's time, as the mix's
   time per image is the weighted mean of the targets').
2. If every kind's share is within --calibrate-tolerance (absolute, a fraction: 0.05 = 5 percentage points)
   of the mix's, it is met. Else the generator's multipliers (synth.Tuning) move, each by the ratio of the
   mix's share to the proxy's of the kind it drives (adjust), and the proxy is generated again, with its
   static goals (FLOPs, parameters) fitted as always, and measured again: at most --calibrate-rounds times.
3. The proxy with the smallest worst share error is kept (the last one when none improves), and the spec
   records the calibration (record): where, what was measured, the shares before and after, and whether it met.
   Pools and "other" (layer norms, padding copies) have no multiplier: they are reported and judged, not tuned.
"""

from __future__ import annotations

import dataclasses
import datetime
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cnnbench.core import terminal
from cnnbench.core.errors import UsageError

# Operation types (tools/profile/layers.py OP_TYPES) grouped into the kinds whose time shares are matched.
KINDS = {
    "compute": ("conv", "depthwise_conv", "grouped_conv", "linear", "matmul"),
    "batchnorm": ("batchnorm",),
    "activation": ("activation",),
    "pool": ("maxpool", "avgpool", "global_pool"),
    "add": ("add",),
    "concat": ("concat",),
    "gate": ("mul",),  # the generator's only mul is a gate's scaling (squeeze-excitation)
    "other": ("norm", "other"),
}
# Each multiplier of synth.Tuning and the kinds whose share it drives. More layers at the same FLOPs are narrower:
# their batch norms' and activations' bytes grow as the square root of the layer count (activations ~ n x width,
# width ~ 1/sqrt(n) at fixed FLOPs), so that multiplier moves by the square of the share ratio.
KNOBS = {"layers": (("batchnorm", "activation"), 2.0), "add": (("add",), 1.0), "concat": (("concat",), 1.0),
         "gate": (("gate",), 1.0)}
STEP_LIMIT = 2.0  # a multiplier moves by at most this factor a round (measurements are noisy)
RANGE = (1 / 8, 8.0)  # and stays within this range of the mix's own structure


def check_targets(precision: str, targets: list[str], engine: str = "eager", device: str = "auto") -> None:
    """What --calibrate needs beyond SynthConfig.validate (rounds, tolerance), checked before anything is profiled."""
    from cnnbench.tools.profile.profile_file import looks_like_profile

    if engine == "eager" and precision == "int8":
        raise UsageError("--calibrate measures training steps in eager PyTorch, which has no int8 step; use "
                         "--precision fp32, tf32, fp16 or bf16, or --calibrate-engine onnxruntime for int8")
    if engine == "onnxruntime" and precision not in ("fp32", "int8"):
        raise UsageError(f"--calibrate-engine onnxruntime measures fp32 or int8 inference, not {precision}")
    if engine == "onnxruntime" and device.startswith("cuda"):
        raise UsageError("--calibrate-engine onnxruntime measures ONNX Runtime's CPU provider; use --device cpu")
    for name in targets:
        if looks_like_profile(name):
            raise UsageError(f"--calibrate times every target on this device; {name} is a profile file, which cannot "
                             "run: name its model (or spec file) instead")


def shares_of(measured: dict) -> tuple[dict[str, float], float]:
    """(share per kind, labelled seconds per image) of one measure() result, forward and backward together."""
    seconds = dict.fromkeys(KINDS, 0.0)
    total = 0.0
    for direction in ("forward", "backward"):
        figures = measured[direction]
        labelled = figures["labelled_seconds_per_step"]
        total += labelled
        for kind, types in KINDS.items():
            seconds[kind] += labelled * sum(figures["time_share"].get(t, 0.0) for t in types)
    return {k: (v / total if total else 0.0) for k, v in seconds.items()}, total / measured["batch_size"]


def mix_shares(per_target: list[tuple[float, dict[str, float], float]]) -> dict[str, float]:
    """The mix's share per kind from (weight, shares, seconds per image) of each target: weighted by weight x time."""
    weights = [w * t for w, _, t in per_target]
    total = sum(weights) or 1.0
    return {k: sum(wt * shares[k] for wt, (_, shares, _) in zip(weights, per_target)) / total for k in KINDS}


def worst(target: dict[str, float], proxy: dict[str, float]) -> float:
    return max(abs(proxy[k] - target[k]) for k in KINDS)


def adjust(tuning, target: dict[str, float], proxy: dict[str, float], tolerance: float):
    """The next multipliers: each knob whose kinds are off by more than the tolerance moves by (mix share / proxy
    share) ^ power, within STEP_LIMIT a round and RANGE overall. A kind the proxy has none of cannot be grown by a
    multiplier (nothing to multiply), and one the mix has none of is already left out by the generator."""
    changes = {}
    for knob, (kinds, power) in KNOBS.items():
        wanted, got = sum(target[k] for k in kinds), sum(proxy[k] for k in kinds)
        if abs(got - wanted) <= tolerance or got <= 0 or wanted <= 0:
            continue
        step = min(STEP_LIMIT, max(1 / STEP_LIMIT, (wanted / got) ** power))
        changes[knob] = min(RANGE[1], max(RANGE[0], getattr(tuning, knob) * step))
    return dataclasses.replace(tuning, **changes)


@dataclass
class Setting:
    """Where and how the calibration measures."""

    device: str
    precision: str
    image_size: int
    batch_size: int
    warmup: int
    steps: int
    rounds: int
    tolerance: float
    engine: str = "eager"


def measure_model(entry, setting: Setting, placement) -> dict:
    """measure() of one model at the setting's size, batch and step counts: eager training steps
    (tools/profile/measure.py) or ONNX Runtime's inference (tools/profile/onnxruntime_time.py)."""
    if setting.engine == "onnxruntime":
        from cnnbench.tools.profile import onnxruntime_time

        return onnxruntime_time.measure(entry, setting.image_size, setting.batch_size, setting.precision,
                                        setting.warmup, setting.steps)
    from cnnbench.tools.profile.measure import measure

    return measure(entry, setting.image_size, setting.batch_size, placement, setting.warmup, setting.steps)


def calibrate(targets: list, make, start, setting: Setting, placement, measure=None) -> tuple[dict, dict]:
    """(spec, calibration record) for the mix of `targets` (synth.Target): `make(tuning)` generates a spec from
    `start`, a synth.Tuning (passed in: tools/synth calls this module, not the other way round), and the tunings
    adjust() makes of it; `measure(entry, setting, placement)` times a model (measure_model; replaced in tests).
    The targets are measured once, the proxy once per round."""
    from cnnbench.models.registry import resolve_any

    measure = measure or measure_model

    per_target = []
    for i, t in enumerate(targets):
        terminal.say(f"calibrating: measuring {t.name} ({i + 1} of {len(targets)}) on {placement.device}")
        shares, seconds = shares_of(measure(resolve_any(t.name), setting, placement))
        per_target.append((t.weight, shares, seconds))
    target = mix_shares(per_target)
    tuning = start
    with tempfile.TemporaryDirectory(prefix="cnnbench-calibrate-") as folder:
        def proxy_shares(spec: dict) -> dict[str, float]:
            from cnnbench.models.synnet import dump_spec

            path = Path(folder) / f"{spec['name']}.json"
            path.write_text(dump_spec(spec))
            return shares_of(measure(resolve_any(str(path)), setting, placement))[0]

        spec = make(tuning)
        before = proxy_shares(spec)
        best = (worst(target, before), spec, before, tuning)
        rounds, current = 0, before
        while worst(target, current) > setting.tolerance and rounds < setting.rounds:
            following = adjust(tuning, target, current, setting.tolerance)
            if following == tuning:
                terminal.warn("calibrating: what is off has no multiplier to move (compute, pools, other: see "
                              "docs/synthetic.md#calibration); stopping")
                break
            rounds, tuning = rounds + 1, following
            spec = make(tuning)
            current = proxy_shares(spec)
            terminal.say(f"calibrating: round {rounds} of at most {setting.rounds}: worst share off by "
                         f"{worst(target, current) * 100:.1f} pp ({_knobs(tuning)})")
            if worst(target, current) < best[0]:
                best = (worst(target, current), spec, current, tuning)
    off, spec, after, tuning = best
    record = _record(setting, placement, target, before, after, tuning, rounds, off <= setting.tolerance)
    return {**spec, "calibration": record}, record


def _knobs(tuning) -> str:
    return ", ".join(f"{f.name} x{getattr(tuning, f.name):.2f}" for f in dataclasses.fields(tuning))


def _record(setting: Setting, placement, target, before, after, tuning, rounds: int, met: bool) -> dict:
    from cnnbench.core import environment

    env = environment.collect()
    where = env.get("env.gpu_name") if placement.device.type == "cuda" else env.get("env.cpu_isa")
    pp = lambda shares: {k: round(v, 4) for k, v in shares.items()}  # noqa: E731
    return {"device": str(placement.device), "device_name": where, "cpu_model": env.get("env.cpu_model"),
            "precision": setting.precision,
            "engine": "eager training step (forward and backward)" if setting.engine == "eager" else
                      "onnxruntime inference (CPU provider, its profiler's kernel times)",
            "batch_size": setting.batch_size, "image_size": setting.image_size, "steps": setting.steps,
            "rounds": rounds, "max_rounds": setting.rounds, "tolerance": setting.tolerance,
            "target_shares": pp(target), "proxy_shares_before": pp(before), "proxy_shares_after": pp(after),
            "worst_off_before": round(worst(target, before), 4), "worst_off_after": round(worst(target, after), 4),
            "tuning": {f.name: round(getattr(tuning, f.name), 4) for f in dataclasses.fields(tuning)},
            "met": met, "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def show(record: dict) -> None:
    """The shares per kind, mix against proxy before and after, and a warning line when the tolerance is not met."""
    rows = [{"kind": k, "mix": f"{record['target_shares'][k] * 100:.1f}%",
             "before": f"{record['proxy_shares_before'][k] * 100:.1f}%",
             "after": f"{record['proxy_shares_after'][k] * 100:.1f}%",
             "off": f"{(record['proxy_shares_after'][k] - record['target_shares'][k]) * 100:+.1f} pp"} for k in KINDS
            if record["target_shares"][k] or record["proxy_shares_after"][k] or record["proxy_shares_before"][k]]
    terminal.summary_table(f"calibration on {record['device']} ({record['device_name']}), {record['precision']}, batch "
                           f"{record['batch_size']} at {record['image_size']} px: time shares of {record['engine']}",
                           rows, [("kind", "kind"), ("mix", "mix"), ("proxy before", "before"),
                                  ("proxy after", "after"), ("off", "off")])
    if record["met"]:
        terminal.say(f"Calibrated in {record['rounds']} round(s): every time share within "
                     f"{record['tolerance'] * 100:g} pp of the mix's")
    else:
        terminal.warn(f"calibration not met after {record['rounds']} round(s): worst time share off by "
                      f"{record['worst_off_after'] * 100:.1f} pp, tolerance {record['tolerance'] * 100:g} pp "
                      "(the spec records met: false; more --calibrate-rounds, or a larger --calibrate-tolerance)")
