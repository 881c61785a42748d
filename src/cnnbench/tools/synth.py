"""`cnnbench synth`: one synthetic network that stands for a weighted mix of real ones (issue 11).

AI Matrix's synthetic-benchmark framework (Wei et al., "AI Matrix: Synthetic Benchmarks for DNN",
arXiv:1812.00886) profiles a set of applications and generates a network whose workload matches their
weighted mix, so one short benchmark stands for many long ones. Here the targets are profiled
(tools/profile/, or profile files made elsewhere) and a spec file in synNet's format is written.

The mix
-------
Weights are shares of the fleet's time, normalised to sum to 1: the mix's figure of anything per image
is the weighted mean of the targets' (FLOPs, parameters, a configuration's time per image), and its
distributions are FLOP-weighted over every layer of every target (a layer of target i weighs
w_i x its FLOPs). A layer's *level* is how many times the input has been halved where it runs
(round(log2(image size / the layer's input height))): real CNNs spend their FLOPs level by level (a
stem, then stages at 1/4, 1/8, 1/16, 1/32 of the input), and a layer's cost depends on where it sits.

How the network is made (deterministic for a --seed)
----------------------------------------------------
A layer's level here is that of its output (a stride-2 conv belongs to the level it produces), so that a
conv's parameters are its FLOPs over twice its level's area, in the mix as in the network.
1. Slots per level: as many convolutions as carry the level's share of the FLOPs (the mix's, or --gflops)
   at the size of a layer drawn there (the mean FLOPs of the level's layers): the picks keep about their
   real widths, hence their arithmetic intensity, and a budget takes layers away rather than thinning them.
   --layers instead shares that many among the levels by FLOPs (largest remainder). A level with 1% of the
   FLOPs gets at least one; the FLOPs of a level left without one go to the others in proportion.
2. Layers: within each level the mix's convolutions (plain, depthwise, grouped), sorted by type, kernel and
   width, are sampled systematically by how often the mix runs them (evenly spaced points of the cumulative
   count, a target's layers counting its weight each, one random offset from the seed). Each slot copies a
   real layer's type, kernel, width and groups, so the joint distribution is kept, not only marginals, and
   each operation type keeps its FLOP share in expectation (drawn as often as it occurs, at its own size).
3. Structure: the level's picks are grouped into residual (identity add) and concatenation (DenseNet's: a
   block's input and output concatenated) blocks, as many per conv as the mix has adds and concatenations
   per conv at that level, the rest plain; within a block the picks are chained so that each reads about
   the width the one before writes. Batch norm after every conv when the mix's convs have one, and the
   mix's activation (one a spec can name).
4. Into each level: its first strided pick (at stride 2), and a pool for every other halving, of the kind
   the mix uses there (max 3x3 stride 2 padding 1, or avg 2x2 stride 2). A global average pool and one
   linear layer (the targets' classes) close the network when the targets end so.
5. Widths: a multiplier per level scales its picks' widths (rounded to multiples of 8 where the real ones
   are; depthwise convs keep their input's; a residual body ends at its input's), by bisection until the
   level's FLOPs match, level after level, since a level's input is the one before's output. Matched FLOPs
   per level then match parameters per level, but for the classifier, whose input is the last width: that
   width is fitted last to the parameters (the last level's entry conv, or a final 1x1 conv, as MobileNetV3
   and EfficientNet widen before pooling), the level's multiplier refitted to its FLOPs each time.
6. Issue 25: a budget below the mix's keeps the mix's layer sizes and records synth.batch_scale (--small-budget
   batch), or takes fewer, wider layers (wider: wider_factor); a block kind every level rounds away gets one
   block where it is wanted most (rounded_merges); `synth --calibrate` feeds a Tuning back (multipliers on the
   slots, residual and dense blocks and gates: tools/synth_calibration.py). Odd kernels pad inside the conv.
Limits: only what a spec can express is generated. Linear layers inside the network (ConvNeXt's per-pixel
MLPs) and matrix products (attention) are not, so a mix of those misses its FLOP shares, and says so.

What it reports (and the goals of issue 11)
-------------------------------------------
FLOPs and parameters per image against the mix (within 5%; with --gflops the parameters are held to the
mix's scaled by the same factor), the FLOP share per operation type (within 5 percentage points), and the
Wasserstein-1 (earth mover's) distance between the FLOP-weighted distributions of log2 arithmetic
intensity (FLOPs per byte at --batch-size and --precision), in octaves: 0 is the same distribution, 1 is
every FLOP's intensity off by a factor of 2. It is exact on the layers (no bins), and reads in a unit an
engineer can picture on a roofline plot.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from cnnbench.core import terminal
from cnnbench.core.errors import UsageError
from cnnbench.tools.profile.motifs import conv_motifs
from cnnbench.tools.profile.motifs import shares as motif_shares
from cnnbench.models.synnet import squeezed

CONV_TYPES = ("conv", "depthwise_conv", "grouped_conv")
FLOP_TOLERANCE = 0.05  # issue 11: FLOPs and parameters within 5% of the mix (or the budget)
SHARE_TOLERANCE = 0.05  # issue 11: FLOP share per operation type within 5 percentage points
# Issue 25: the share of convolutions in each motif (pre-activation, gated, feeding a concat, ...) within 10
# percentage points. Wider than the FLOP shares' 5: a motif rides on whole sampled convs and blocks, so a network
# of n convs can only hit multiples of 1/n (1/20 of a 20-conv budget proxy is already 5 points).
MOTIF_TOLERANCE = 0.10
MIN_LEVEL_SHARE = 0.01  # a level with at least this share of the FLOPs gets a conv
# The most convolutions a generated network has, by --layers or by the layers a --gflops budget implies. Issue 23:
# --gflops 25 made 23,643 layers in 44 s and --gflops 1e6 (FLOPs typed for GFLOPs) ran for minutes in silence,
# because fitting the widths realises the network ~40 times per level. Timed on this shared 2-core EPYC
# (resnet18 mix at 64 px): 1,000 layers generate in about 1.3 s, 2,000 in 3.6 s, 4,000 in 26 s. The deepest
# real CNNs have a few hundred convolutions (ResNet-152: 155, DenseNet-201: 200), so 1,000 leaves room for any
# mix and keeps generation to seconds.
MAX_LAYERS = 1000
SPEC_ACTIVATIONS = ("relu", "relu6", "hardswish", "silu")  # what a spec can say (synnet.ACTIVATIONS)
# Issue 25, item 3 (wider_factor): a training step's fixed time (the loss, zero_grad, starting the backward, the
# optimizer's call), in units of one conv-BN-ReLU layer's per-op time (dispatch, forward and backward, its
# optimizer update). Measured in eager fp32 on the shared 2-core EPYC (AVX-512), batch 2 at 8 px, where FLOPs are
# negligible: 2, 4 and 8 such layers took 0.66, 0.90 and 1.44 ms a step (median of 30), 0.13 ms a layer and 0.40 ms
# fixed, 3 layers' worth; a first, more loaded run gave 0.99 and 1.56 ms for 2 and 8 layers, 8. 4 is taken. Deeper
# tiny nets timed superlinearly there (16 layers 6.5 ms), so the figure is a rough one, and device-specific.
STEP_OVERHEAD_LAYERS = 4.0
MIN_WIDER_FACTOR = 0.5  # wider_factor takes at most half the layers away (widths grow at most about 1.4x)
SMALL_BUDGET_RULES = ("batch", "wider")


@dataclass(frozen=True)
class Target:
    name: str  # as given: a model name or a profile file
    weight: float  # normalised: the weights sum to 1
    profile: dict


@dataclass(frozen=True)
class Proto:
    """One real convolution of the mix, per image at the synthetic network's size."""

    type: str
    kernel: tuple[int, int]
    stride: int
    cin: int
    cout: int
    groups: int
    flops: float  # per image
    depth: float  # its position in its own network, 0 (first layer) to 1
    weight: float  # its share of the mix's FLOPs
    count: float  # its target's weight: how often the mix runs it per image
    # Its motif (tools/profile/motifs.py), None where its profile has no dataflow (made before issue 25): then
    # batch norm and the mix's activation follow it, as before.
    pre: bool = False  # batch norm-activation before it that no conv can fold (DenseNet)
    post: str | None = None  # "bn_act", "bn", "act", "none": what follows it
    activation: str | None = None  # its own activation, in a spec's vocabulary
    gate: tuple[float, str, str] | None = None  # (reduction, activation, function) of the gate on its output
    block: str | None = None  # the merge closing its real block: "add", "concat" or None (blocks_of)


@dataclass
class Level:
    flop_share: float = 0.0  # of the mix's convolution FLOPs
    convs: float = 0.0  # weighted counts per image of the mix
    adds: float = 0.0
    concats: float = 0.0
    maxpools: float = 0.0
    avgpools: float = 0.0
    protos: list[Proto] = field(default_factory=list)


@dataclass
class Mix:
    targets: list[Target]
    image_size: int
    flops_per_image: float
    parameters: float
    type_shares: dict[str, float]
    levels: dict[int, Level]
    mean_convs: float
    batch_norm: bool
    activation: str
    global_pool: bool
    num_classes: int
    intensity: list[tuple[float, float]]  # (log2 FLOPs per byte, FLOP weight) of every layer with FLOPs
    motif_shares: dict[str, float] | None = None  # motifs.shares of the mix; None when a profile has no motifs
    pooled_parameters: float = 0.0  # share of the parameters in convs and linears on 1x1 maps, the classifier's aside
    same_padding: bool = False  # the targets pad with a copy before most convs (spec files' TensorFlow 'same'), so does it


@dataclass(frozen=True)
class Tuning:
    """Multipliers on what the generator places, 1 = as the mix (issue 25, item 2: what `synth --calibrate` feeds
    back into generate(); tools/synth_calibration.py). Each moves one kind of memory-bound time at fixed FLOPs:
      layers  convolutions per level: more, narrower layers at the same FLOPs move more bytes per FLOP through their
              batch norms and activations (a conv's FLOPs grow with width squared, its activations with width)
      add     residual blocks per conv (identity adds)
      concat  concatenation (dense) blocks per conv
      gate    gated picks (squeeze-excitation: a global pool, two 1x1 convs, a sigmoid and a mul each)"""

    layers: float = 1.0
    add: float = 1.0
    concat: float = 1.0
    gate: float = 1.0


# ---------------------------------------------------------------- targets


def parse_targets(text: str | None) -> list[tuple[str, float]]:
    """'resnet50:0.4,densenet121:0.3,googlenet:0.3' -> [(name, weight)]; no weights at all: equal shares."""
    from cnnbench.models.registry import is_reference

    if not text or not text.strip():
        raise UsageError("no --target given; name models or profile files with weights, e.g. "
                         "--target resnet50:0.4,densenet121:0.3,googlenet:0.3")
    out = []
    for item in text.split(","):
        item = item.strip()
        # timm:NAME, file.py:FUNCTION and package.module:FUNCTION keep their ':' (registry.is_reference)
        name, _, weight_text = item.rpartition(":") if ":" in item and not is_reference(item) else (item, "", "")
        if not name:
            raise UsageError(f"--target: {item!r} names no model; write MODEL[:WEIGHT], e.g. resnet50:0.4")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise UsageError(f"--target: the weight of {name!r} must be a number, got {weight_text!r}") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise UsageError(f"--target: the weight of {name!r} must be a positive number (a share of the fleet's "
                             f"time), got {weight_text}")
        out.append((name, weight if weight_text else None))
    if len({w is None for _, w in out}) > 1:
        raise UsageError("--target: give every target a weight, or none (equal shares)")
    return [(name, 1.0 if weight is None else weight) for name, weight in out]


def load_targets(text: str | None, image_size: int, batch_size: int, precision: str) -> list[Target]:
    """Every target resolved (a registered or torchvision model, a spec file, or a profile file) and profiled
    at image_size; every name is checked before any is profiled, so a typo in the last costs nothing."""
    from cnnbench.models.registry import check_image_size, resolve_any
    from cnnbench.tools.profile.profile_file import load_profile, looks_like_profile, profile_model

    pairs = parse_targets(text)
    total = sum(w for _, w in pairs)
    resolved = []
    for name, weight in pairs:
        if looks_like_profile(name):
            resolved.append((name, weight, None, load_profile(name)))
            continue
        if name.endswith(".json") and not Path(name).is_file():
            raise UsageError(f"--target: cannot read {name}: no such file")
        entry = resolve_any(name)
        check_image_size(entry, image_size)
        resolved.append((name, weight, entry, None))
    return [Target(name, weight / total, saved or profile_model(entry, image_size, batch_size, precision))
            for name, weight, entry, saved in resolved]


# ---------------------------------------------------------------- the mix


def level_of(input_height: int, image_size: int) -> int:
    return max(0, round(math.log2(image_size / max(input_height, 1))))


def mix_of(targets: list[Target], image_size: int) -> Mix:
    """The weighted mix of the targets' profiles, per image at image_size (a profile made at another size
    has its FLOPs scaled by the area ratio: FLOPs of convolutions grow with the pixels, parameters do not)."""
    flops = sum(t.weight * _per_image(t, image_size) for t in targets)
    shares, levels, intensity = {}, {}, []
    counts = {"batchnorm": 0.0, "global_pool": 0.0, "pad": 0.0}
    activations: dict[str, float] = {}
    for t in targets:
        layers, size = t.profile["layers"], t.profile["image_size"]
        scale = (image_size / size) ** 2 / t.profile["batch_size"]
        depth_of = {id(l): i / max(len(layers) - 1, 1) for i, l in enumerate(layers)}
        motifs = conv_motifs(layers)
        for layer in layers:
            kind, layer_flops = layer["type"], layer["flops"] * scale
            motif = motifs.get(layer["index"]) if "index" in layer else None
            if motif is not None and motif["in_gate"]:
                continue  # a gate's own convs come with the gate on the conv it scales (_motif_fields)
            if layer_flops:
                shares[kind] = shares.get(kind, 0.0) + t.weight * layer_flops / flops
                if layer["arithmetic_intensity"] > 0:
                    intensity.append((math.log2(layer["arithmetic_intensity"]), t.weight * layer_flops / flops))
            if kind in counts:
                counts[kind] += t.weight
            if kind == "other" and layer.get("function") == "pad":
                counts["pad"] += t.weight
            if kind == "activation":
                activations[layer["function"]] = activations.get(layer["function"], 0.0) + t.weight
            where = layer.get("output_hw") or layer.get("input_hw")
            if not where:
                continue
            level = levels.setdefault(level_of(where[0], size), Level())
            _count(level, layer, t.weight, t.weight * layer_flops / flops, depth_of[id(layer)], flops / t.weight, motif)
    conv_share = sum(level.flop_share for level in levels.values())
    for level in levels.values():
        level.flop_share /= conv_share or 1.0
    mean_convs = sum(level.convs for level in levels.values())
    return Mix(targets, image_size, flops, sum(t.weight * t.profile["totals"]["parameters"] for t in targets), shares,
               dict(sorted(levels.items())), mean_convs, counts["batchnorm"] >= 0.5 * mean_convs,
               _spec_activation(activations), counts["global_pool"] >= 0.5,
               max(_classes(t.profile) for t in targets), intensity, mix_motif_shares(targets),
               sum(t.weight * _pooled_parameters(t.profile) for t in targets), counts["pad"] >= 0.5 * mean_convs)


def _pooled_parameters(profile: dict) -> float:
    """The share of a model's parameters in convs and linear layers that run on 1x1 maps or pooled features, but
    for the classifier (the last linear): squeeze-excitation gates' convs, MobileNetV3's hidden 960 -> 1280 layer.
    Such parameters cost few FLOPs; a proxy that must hold them at a map's full size cannot afford them."""
    layers = [l for l in profile["layers"] if l["type"] in (*CONV_TYPES, "linear") and l["parameters"]]
    pooled = [l for l in layers[:-1] if l["type"] == "linear" or list(l.get("input_hw") or [1, 1]) == [1, 1]]
    return sum(l["parameters"] for l in pooled) / max(profile["totals"]["parameters"], 1)


def mix_motif_shares(targets: list[Target]) -> dict[str, float] | None:
    """motifs.shares of the mix: each target's counts weighted by its weight, over its convolutions so weighted
    (shares of the convolutions the fleet runs); None when a target's profile has no motifs (made before issue 25)."""
    if any(not t.profile.get("motifs") for t in targets):
        return None
    totals: dict[str, float] = {}
    for t in targets:
        convs = t.weight * t.profile["motifs"]["convs"]
        for key, share in motif_shares(t.profile["motifs"]).items():
            totals[key] = totals.get(key, 0.0) + convs * share
    convs = sum(t.weight * t.profile["motifs"]["convs"] for t in targets) or 1.0
    return {key: value / convs for key, value in totals.items()}


def _per_image(t: Target, image_size: int) -> float:
    return t.profile["totals"]["flops_per_image"] * (image_size / t.profile["image_size"]) ** 2


def _count(level: Level, layer: dict, weight: float, flop_share: float, depth: float, flops_all: float,
           motif: dict | None) -> None:
    kind = layer["type"]
    if kind in CONV_TYPES:
        level.convs += weight
        level.flop_share += flop_share
        if flop_share > 0:
            level.protos.append(Proto(kind, tuple(layer["kernel"]), max(layer["stride"]), layer["in_channels"],
                                      layer["out_channels"], layer["groups"], flop_share * flops_all, depth,
                                      flop_share, weight, **_motif_fields(motif)))
    elif kind == "add":
        level.adds += weight
    elif kind == "concat":
        level.concats += weight
    elif kind == "maxpool":
        level.maxpools += weight
    elif kind == "avgpool":
        level.avgpools += weight


def _motif_fields(motif: dict | None) -> dict:
    """A real conv's motif as Proto's fields (a spec's vocabulary: "act_bn" is written bn_act, an activation a
    spec cannot name is left to the mix's)."""
    if motif is None:
        return {}
    gate = motif["gate"]
    if gate is not None:
        gate = (max(1.0, gate["reduction"]), _spec_name(gate["activation"]) or "relu", gate["function"])
    post = {"act_bn": "bn_act"}.get(motif["post"], motif["post"])
    return {"pre": motif["pre"], "post": post, "activation": _spec_name(motif["activation"]), "gate": gate,
            "block": motif["block"]}


def _spec_name(function: str | None) -> str | None:
    base = (function or "").rstrip("_")
    return base if base in SPEC_ACTIVATIONS else None


def _spec_activation(seen: dict[str, float]) -> str:
    """The mix's most used activation, in a spec's vocabulary (a function a spec cannot name becomes relu)."""
    for name, _ in sorted(seen.items(), key=lambda kv: -kv[1]):
        base = name.rstrip("_")
        if base in SPEC_ACTIVATIONS:
            return base
    return "relu"


def _classes(profile: dict) -> int:
    linear = [l for l in profile["layers"] if l["type"] == "linear"]
    return linear[-1]["out_channels"] if linear and linear[-1].get("out_channels") else 1000


# ---------------------------------------------------------------- choosing the layers


def slots_per_level(mix: Mix, flops: float, total: int | None, factor: float = 1.0) -> dict[int, int]:
    """Convolutions per level. By default as many as carry the level's share of `flops` at the FLOPs of the
    layers picked there (their FLOP-weighted mean): the picks keep about their real widths, so their
    arithmetic intensity, and a FLOP budget takes layers away rather than thinning them. With `total`:
    largest-remainder shares of it by FLOPs. Either way times `factor` (wider_factor, Tuning.layers), and at
    least one where a level has 1% of the FLOPs."""
    shares = {lv: level.flop_share for lv, level in mix.levels.items() if level.flop_share > 0}
    if total is None:
        conv_flops = flops * sum(v for k, v in mix.type_shares.items() if k in CONV_TYPES)
        return {lv: n for lv, share in shares.items()
                if (n := max(round(factor * share * conv_flops / _mean_pick(mix.levels[lv])), int(share >= MIN_LEVEL_SHARE)))}
    total = max(1, round(total * factor))
    counts = {lv: max(int(share * total), 1 if share >= MIN_LEVEL_SHARE else 0) for lv, share in shares.items()}
    by_remainder = sorted(shares, key=lambda lv: -(shares[lv] * total - int(shares[lv] * total)))
    for lv in by_remainder:
        if sum(counts.values()) >= total:
            break
        counts[lv] += 1
    return {lv: n for lv, n in counts.items() if n}


def _mean_pick(level: Level) -> float:
    """The expected FLOPs of a layer picked at this level (picks are drawn by FLOP weight)."""
    return sum(p.count * p.flops for p in level.protos) / sum(p.count for p in level.protos)


def pick(protos: list[Proto], n: int, rng: random.Random) -> list[Proto]:
    """n layers by systematic sampling of the FLOP weights (evenly spaced, one random offset), in depth order."""
    ordered = sorted(protos, key=lambda p: (p.type, p.kernel, p.cout, p.cin, p.depth))
    total, offset = sum(p.count for p in ordered), rng.random()
    chosen, cumulative, k = [], 0.0, 0
    for j in range(n):
        point = (j + offset) / n * total
        while k < len(ordered) - 1 and cumulative + ordered[k].count < point:
            cumulative += ordered[k].count
            k += 1
        chosen.append(ordered[k])
    return sorted(chosen, key=lambda p: p.depth)


@dataclass
class Block:
    kind: str  # plain, residual or concat
    protos: list[Proto]


def merges_wanted(level: Level, protos: list[Proto], tuning: Tuning = Tuning()) -> tuple[float, float]:
    """(residual, concat) blocks the level's picks would hold at the mix's adds and concatenations per conv
    (times the tuning's multipliers), as fractions: plan() rounds them over the whole network."""
    body = len(protos) - any(p.stride > 1 for p in protos)
    per_conv = level.convs or 1.0
    return (level.adds / per_conv * body * tuning.add, level.concats / per_conv * body * tuning.concat)


def rounded_merges(wanted: list[float]) -> list[int]:
    """Each level's blocks of one merge kind, rounded level by level; but when that leaves none while the network
    wants at least one (a merge rare at every level of a small budget: resnet50's adds in a mix with densenet121
    at 0.1 GFLOPs, a third of a block per level), the level that wants most gets one. (Largest remainders over the
    network were tried: they gave densenet121's quarter-FLOP proxy fewer dense blocks than per-level rounding, and
    pre-activation picks outside a dense block read a conv's output, so their batch norm counts as that conv's.)"""
    counts = [round(w) for w in wanted]
    if not sum(counts) and round(sum(wanted)) >= 1:
        counts[max(range(len(wanted)), key=wanted.__getitem__)] = 1
    return counts


def blocks_of(level: Level, protos: list[Proto], merges: tuple[int, int] | None = None) -> tuple[list[Block], Proto | None]:
    """The level's convolutions grouped as the mix groups them (`merges`: the (residual, concat) block counts plan()
    gives it; default merges_wanted's, rounded); its first strided pick, if any, apart (it enters the level,
    halving what the level before it left)."""
    strided = next((p for p in protos if p.stride > 1), None)
    body = [p for p in protos if p is not strided]
    residual, concat = merges if merges is not None else map(round, merges_wanted(level, protos))
    residual, concat = min(len(body), residual), min(len(body), concat)
    if residual + concat > len(body):
        residual, concat = (residual * len(body)) // (residual + concat), len(body) - (residual * len(body)) // (residual + concat)
    count = residual + concat
    if not count:
        return ([Block("plain", body)] if body else []), strided
    kinds = _interleave(residual, concat)
    if any(p.block for p in body):  # motifs known: residual blocks get the convs of real residual blocks first,
        kinds = ["residual"] * residual + ["concat"] * concat  # concatenation blocks those of dense ones
        rank = {"add": 0, None: 1, "concat": 2}
        body = sorted(body, key=lambda p: rank[p.block])
    sizes = [len(body) // count + (1 if i < len(body) % count else 0) for i in range(count)]
    blocks, start = [], 0
    for kind, size in zip(kinds, sizes):
        blocks.append(Block(kind, chained(body[start:start + size])))
        start += size
    return blocks, strided


def chained(protos: list[Proto]) -> list[Proto]:
    """The block's picks reordered so that each takes about the width the one before gives (greedy, from the
    shallowest), as the layers of a real block do: a picked 3x3 conv of 64 channels should not have to read
    the 256 a picked 1x1 expansion wrote. Its FLOPs and intensity then stay near its own network's. A
    pre-activation pick opens the block (DenseNet's layers and pre-activation ResNets begin with their batch
    norm-ReLU): after a conv without a batch norm of its own, its batch norm would fold into that conv."""
    left = sorted(protos, key=lambda p: (not p.pre, p.depth))
    out = [left.pop(0)] if left else []
    while left:
        width = out[-1].cout
        best = min(left, key=lambda p: (abs(math.log(p.cin / width)), p.depth))
        out.append(best)
        left.remove(best)
    return out


def _interleave(a: int, b: int) -> list[str]:
    """a residual and b concat kinds, spread evenly (Bresenham)."""
    out, placed = [], 0
    for i in range(a + b):
        if b and (placed + 1) * (a + b) <= (i + 1) * b:
            out.append("concat")
            placed += 1
        else:
            out.append("residual")
    return out


def regated(protos: list[Proto], factor: float, gate: tuple[float, str, str] | None) -> list[Proto]:
    """The picks with round(factor x their gated count) gates: evenly spaced ones lose theirs (factor < 1), or
    evenly spaced ungated ones get `gate`, the mix's commonest (factor > 1). Factor 1: as picked."""
    gated = [i for i, p in enumerate(protos) if p.gate is not None]
    wanted = min(len(protos), round(len(gated) * factor))
    if wanted == len(gated) or (wanted > len(gated) and gate is None):
        return protos
    out = list(protos)
    if wanted < len(gated):
        for i in _spread(gated, len(gated) - wanted):
            out[i] = dataclasses.replace(out[i], gate=None)
    else:
        for i in _spread([i for i, p in enumerate(protos) if p.gate is None], wanted - len(gated)):
            out[i] = dataclasses.replace(out[i], gate=gate)
    return out


def _spread(items: list[int], n: int) -> list[int]:
    """n of the items, evenly spaced."""
    return [items[int((j + 0.5) * len(items) / n)] for j in range(n)] if n else []


def _commonest_gate(mix: Mix) -> tuple[float, str, str] | None:
    seen: dict[tuple, float] = {}
    for level in mix.levels.values():
        for p in level.protos:
            if p.gate is not None:
                seen[p.gate] = seen.get(p.gate, 0.0) + p.count
    return max(seen, key=seen.get) if seen else None


@dataclass
class LevelPlan:
    level: int
    pools: list[str]  # pools entering the level, one per halving its strided conv does not do
    strided: Proto | None  # the conv entering the level at stride 2
    blocks: list[Block]
    target_flops: float = 0.0
    width: float = 1.0
    entry_width: int | None = None  # the strided conv's filters, when set apart from `width` (fit_parameters)
    exit_width: int | None = None  # a last 1x1 conv of this many filters (fit_parameters)
    exit_pooled: bool = False  # that conv runs after the global pool (fit_parameters)


def plan(mix: Mix, layers: int | None, flops: float, seed: int, tuning: Tuning = Tuning(),
         factor: float = 1.0) -> list[LevelPlan]:
    """Slots per level (times `factor`: wider_factor and Tuning.layers), the layers picked for them (gates
    regated by Tuning.gate), their blocks and the way into each level."""
    rng = random.Random(seed)
    slots = slots_per_level(mix, flops, layers, factor)
    gate = _commonest_gate(mix)
    kept = sum(mix.levels[lv].flop_share for lv in slots)
    conv_flops = flops * sum(v for k, v in mix.type_shares.items() if k in CONV_TYPES)
    picks = {lv: regated(pick(mix.levels[lv].protos, slots[lv], rng), tuning.gate, gate) for lv in sorted(slots)}
    wanted = [merges_wanted(mix.levels[lv], picks[lv], tuning) for lv in picks]
    merges = dict(zip(picks, zip(rounded_merges([w[0] for w in wanted]), rounded_merges([w[1] for w in wanted]))))
    out, previous = [], 0
    for lv in sorted(slots):
        level = mix.levels[lv]
        blocks, strided = blocks_of(level, picks[lv], merges[lv])
        if strided is not None and lv == previous:  # nothing left to halve: it runs at stride 1
            blocks.insert(0, Block("plain", [dataclasses.replace(strided, stride=1)]))
            strided = None
        pool = "avgpool" if level.avgpools > level.maxpools else "maxpool"
        out.append(LevelPlan(lv, [pool] * (lv - previous - (strided is not None)), strided, blocks,
                             target_flops=conv_flops * level.flop_share / kept))
        previous = lv
    return out


# ---------------------------------------------------------------- widths


EXIT = Proto("conv", (1, 1), 1, 0, 0, 1, 0.0, 1.0, 0.0, 0.0)  # fit_parameters' last 1x1 conv
# fit_parameters' hidden layer after the global pool (a 1x1 conv on the 1x1 map is a fully connected layer, as
# MobileNetV3's 960 -> 1280): its activation but no batch norm, which a 1x1 map at batch 1 cannot train.
POOLED_EXIT = dataclasses.replace(EXIT, post="act")
# Pooled parameters above this share of the mix's (squeeze-excitation convs, hidden linears) go after the pool.
POOLED_PARAMETERS = 0.05


@dataclass
class Shape:
    channels: int
    size: int
    flops: float = 0.0
    parameters: float = 0.0


def conv_layer(p: Proto, shape: Shape, width: float, stride: int, out: int | None, bn: bool, activation: str,
               last: bool = False, same: bool = False) -> list[dict]:
    """The spec layers of one slot at this width (its motif: a batch norm-activation before it when its real
    conv has one that cannot fold, the batch norm and activation after it that its real conv has, a gate on
    its output), and `shape` advanced through them (FLOPs and parameters added). `bn` and `activation` are the
    mix's, for a slot without a motif; `last`: it ends a residual body, whose activation comes after the add."""
    cin = shape.channels
    if p.type == "depthwise_conv":
        groups, cout, spec_groups = cin, cin, "depthwise"
    else:
        cout = out if out is not None else scaled_width(p.cout, width)
        groups = 1
        if p.type == "grouped_conv":  # as many groups as keep its channels per group, dividing both widths
            groups = _nearest_divisor(math.gcd(cin, cout) if out is not None else cin, cin * p.groups / p.cin)
            cout = cout if out is not None else max(groups, round(cout / groups) * groups)
        spec_groups = groups
    own = p.activation or activation
    after_bn = bn if p.post is None else "bn" in p.post
    after_act = activation if p.post is None else (own if "act" in p.post else "none")
    layers = []
    if p.pre:  # its own batch norm, over its input: 2 parameters a channel
        layers += [{"type": "batch_norm"}, {"type": "activation", "function": own}]
        shape.parameters += 2 * cin
    size = -(-shape.size // stride)
    kh, kw = p.kernel
    weights = kh * kw * (cin // groups) * cout
    shape.flops += 2.0 * size * size * weights
    shape.parameters += weights + (2 * cout if after_bn else 0)
    shape.channels, shape.size = cout, size
    # Odd kernels pad k // 2 on each side inside the conv, as torchvision's do (output ceil(size / stride), as
    # 'same'); a spec's 'same' is TensorFlow's, an explicit ZeroPad2d copy before every conv, which took 7% of a
    # proxy's training step here (measured by --calibrate at 32 px) that its targets do not spend. `same`: the targets
# pad so themselves (Mix.same_padding: spec files such as synNet), and the proxy copies them.
    padding = [kh // 2, kw // 2] if kh % 2 and kw % 2 and not same else "same"
    layers.append({"type": "conv", "filters": cout, "kernel": [kh, kw], "stride": [stride, stride], "padding": padding,
                   "groups": spec_groups, "batch_norm": after_bn, "activation": "none" if last else after_act})
    if p.gate is not None:
        reduction, gate_activation, function = p.gate
        squeeze = squeezed(cout, reduction)
        shape.flops += 2.0 * 2 * cout * squeeze  # reduce and expand, on 1x1
        shape.parameters += 2 * cout * squeeze + squeeze + cout
        layers.append({"type": "gate", "reduction": reduction, "activation": gate_activation, "function": function})
    return layers


def scaled_width(width: int, factor: float) -> int:
    """A real layer's width scaled, rounded to a multiple of 8 when the real one is one: real networks' widths
    are (all of ResNet's and DenseNet's, GoogLeNet's too), and vector units and tensor cores run aligned
    channel counts faster, so an unaligned proxy would time differently."""
    if width % 8 == 0:
        return max(8, 8 * round(width * factor / 8))
    return max(1, round(width * factor))


def _nearest_divisor(n: int, wanted: float) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(math.log(d / max(wanted, 1e-9))), d))


def realise(mix: Mix, plans: list[LevelPlan], image_size: int) -> tuple[list[dict], Shape, list[float]]:
    """The spec's groups at the plans' widths; the final shape (FLOPs and parameters of the convolutions)
    and each level's FLOPs."""
    shape, groups, per_level = Shape(3, image_size), [], []
    for lp in plans:
        layers = []
        for pool in lp.pools:
            layers.append({"type": "maxpool", "window": [3, 3], "stride": [2, 2], "padding": [1, 1]} if pool == "maxpool"
                          else {"type": "avgpool", "window": [2, 2], "stride": [2, 2], "padding": "valid"})
            shape.size = (shape.size + 2 - 3) // 2 + 1 if pool == "maxpool" else shape.size // 2
        before = shape.flops
        if lp.strided is not None:
            layers += conv_layer(lp.strided, shape, lp.width, 2, lp.entry_width, mix.batch_norm, mix.activation,
                                 same=mix.same_padding)
        for block in lp.blocks:
            layers += _block(mix, block, shape, lp.width)
        if lp.exit_width is not None and not lp.exit_pooled:
            layers += conv_layer(EXIT, shape, 1.0, 1, lp.exit_width, mix.batch_norm, mix.activation, same=mix.same_padding)
        if lp is plans[-1] and mix.global_pool:  # (a slice's last level while fitting: a pool adds no FLOPs)
            layers.append({"type": "globalpool", "pool": "avg"})
            shape.size = 1
        if lp.exit_width is not None and lp.exit_pooled:
            layers += conv_layer(POOLED_EXIT, shape, 1.0, 1, lp.exit_width, mix.batch_norm, mix.activation,
                                 same=mix.same_padding)
        per_level.append(shape.flops - before)
        groups.append({"name": f"level_{lp.level}", "layers": layers,
                       "note": f"input / {2 ** lp.level}: {lp.target_flops / 1e9:.3f} GFLOPs per image wanted"})
    return groups, shape, per_level


def _block(mix: Mix, block: Block, shape: Shape, width: float) -> list[dict]:
    bn, act = mix.batch_norm, mix.activation
    if block.kind == "plain":
        return [layer for p in block.protos for layer in conv_layer(p, shape, width, 1, None, bn, act, same=mix.same_padding)]
    start = shape.channels
    last = max((i for i, p in enumerate(block.protos) if p.type != "depthwise_conv"), default=None)
    body = []
    for i, p in enumerate(block.protos):
        keep = start if block.kind == "residual" and i == last else None
        body += conv_layer(p, shape, width, 1, keep, bn, act, last=keep is not None, same=mix.same_padding)
    if block.kind == "residual":
        return [{"type": "residual", "body": body, "activation": act}]
    growth = shape.channels
    shape.channels = start + growth
    return [{"type": "dense", "repeat": 1, "growth_rate": growth, "body": body}]


def fit_widths(mix: Mix, plans: list[LevelPlan], image_size: int, done=lambda: None) -> None:
    """Each level's width multiplier, in order, by bisection on log(width) until its FLOPs match; `done()` after each."""
    for k in range(len(plans)):
        fit_level(mix, plans, k, image_size)
        done()


def fit_level(mix: Mix, plans: list[LevelPlan], k: int, image_size: int) -> None:
    """Level k's width multiplier, by bisection on log(width) until its FLOPs match (levels before k fixed)."""
    def level_flops(log_width: float) -> float:
        plans[k].width = math.exp(log_width)
        return realise(mix, plans[:k + 1], image_size)[2][k]

    target, low, high = plans[k].target_flops, math.log(1 / 256), math.log(256)
    for _ in range(40):  # widths are whole channels: 40 halvings of a 2^16 range settle far below one
        middle = (low + high) / 2
        low, high = (middle, high) if level_flops(middle) < target else (low, middle)
    misses = {w: abs(level_flops(w) - target) for w in (low, high)}
    plans[k].width = math.exp(min(misses, key=misses.get))


def fit_parameters(mix: Mix, plans: list[LevelPlan], image_size: int, parameters: float) -> None:
    """Parameters match once FLOPs match level by level, but for the classifier: its input is the last level's
    width. So the width that sets it gets the value (the level's other convs refitted to its FLOPs each time)
    that brings the network's parameters to `parameters`, by bisection: the last level's entry conv when its
    blocks are all residual (they keep the width they get), else a last 1x1 conv added for the purpose (as
    MobileNetV3 and EfficientNet widen before pooling), unless the parameters are already within 1%. When the
    targets hold more than POOLED_PARAMETERS of theirs on 1x1 maps (gates' convs, hidden linears), that conv
    runs after the global pool, where parameters cost as few FLOPs as there (issue 25: with the gates' convs
    generated inside the gates, a conv at the last map's size could not reach MobileNetV3's parameters)."""
    last = plans[-1]
    last.exit_pooled = mix.global_pool and mix.pooled_parameters > POOLED_PARAMETERS
    by_entry = not last.exit_pooled and last.strided is not None and all(b.kind == "residual" for b in last.blocks)
    if not by_entry and abs(network_parameters(mix, plans, image_size) / parameters - 1) <= 0.01:
        return

    def total(width: int) -> float:
        if by_entry:
            last.entry_width = width
        else:
            last.exit_width = width
        fit_level(mix, plans, len(plans) - 1, image_size)
        return network_parameters(mix, plans, image_size)

    low, high = 1, 1 << 11  # multiples of 8, up to 16384 channels
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if total(8 * middle) < parameters else (low, middle)
    best = min((low, high), key=lambda k: abs(total(8 * k) - parameters))
    total(8 * best)


def network_parameters(mix: Mix, plans: list[LevelPlan], image_size: int) -> float:
    _, shape, _ = realise(mix, plans, image_size)
    features = shape.channels * (1 if mix.global_pool else shape.size * shape.size)
    return shape.parameters + features * mix.num_classes + mix.num_classes


# ---------------------------------------------------------------- the spec


def check_layers(layers: int | None) -> None:
    """--layers within MAX_LAYERS: checked before the targets are profiled."""
    if layers is not None and layers > MAX_LAYERS:
        raise UsageError(f"--layers {layers}: cnnbench synth makes at most {MAX_LAYERS} convolutions (the deepest real "
                         "CNNs have a few hundred; generation time grows faster than the layer count)")


def check_size(mix: Mix, layers: int | None, gflops: float | None, factor: float = 1.0) -> None:
    """The network's convolutions within MAX_LAYERS, before any is generated: --layers as given, else the count
    the FLOP budget implies at the mix's own layer sizes (slots_per_level, as plan() will count them)."""
    check_layers(None if layers is None else round(layers * factor))
    if layers is not None:
        return
    flops = gflops * 1e9 if gflops else mix.flops_per_image
    implied = sum(slots_per_level(mix, flops, None, factor).values())
    if implied <= MAX_LAYERS:
        return
    most = flops / 1e9 * MAX_LAYERS / implied
    what = f"--gflops {gflops:g}" if gflops else "the mix's own FLOP budget"
    raise UsageError(f"{what} takes about {implied:,} convolutions at the mix's layer sizes ({mix.flops_per_image / 1e9:.3g} "
                     f"GFLOPs per image); cnnbench synth makes at most {MAX_LAYERS}: give --gflops of at most about {most:.3g} "
                     "(GFLOPs, not FLOPs), or --layers")


def wider_factor(mix: Mix, flops: float, rule: str) -> float:
    """The share of the proportional layer count a budget below the mix's keeps, by --small-budget (issue 25,
    item 3). With "wider", fewer but wider layers, so that the framework overhead takes the targets' share of a
    step at the targets' batch size. A step of the targets takes a + n*o + C: a fixed, o per layer (n of them),
    C computing. A proxy of s = flops / mix FLOPs computes s*C; its overhead share a + m*o over s*C equals the
    targets' when a + m*o = s*(a + n*o), i.e. m = s*n - (1 - s)*a/o: fewer layers than the s*n of keeping the
    mix's layer sizes, because a does not shrink with the FLOPs. a/o is STEP_OVERHEAD_LAYERS; n the mix's
    convolutions per image. At least MIN_WIDER_FACTOR of s*n (the motifs ride on whole layers). With "batch" (or
    no budget below the mix's): 1, the mix's layer sizes, and the proxy is run at batch_scale x the batch."""
    share = flops / mix.flops_per_image
    if rule != "wider" or share >= 1 or not mix.mean_convs:
        return 1.0
    proportional = share * mix.mean_convs
    return max(MIN_WIDER_FACTOR, (proportional - (1 - share) * STEP_OVERHEAD_LAYERS) / proportional)


def batch_scale(mix_flops: float, flops: float) -> int:
    """The batch size, as a multiple of the targets', a proxy of `flops` per image should run at (issue 25, item 3):
    mix_flops / flops, rounded, at least 1. A step's framework overhead (Python, dispatch, the loss, the
    optimizer, synchronisation) does not shrink with the FLOPs; at this batch a proxy step does the FLOPs of a
    target step, so that overhead takes the same share of it as of the targets' (measured before it: the
    quarter-FLOP proxies' eager batch-8 speed-ups were 0.8-1.0x where their models got 1.5-1.8x)."""
    return max(1, round(mix_flops / flops))


def generate(mix: Mix, *, seed: int, layers: int | None, gflops: float | None, name: str,
             small_budget: str = "batch", tuning: Tuning = Tuning()) -> dict:
    """The synthetic network's spec (synNet's format) for the mix; `small_budget` a rule of SMALL_BUDGET_RULES
    (wider_factor), `tuning` what a calibration feeds back."""
    flops = gflops * 1e9 if gflops else mix.flops_per_image
    factor = wider_factor(mix, flops, small_budget) * tuning.layers
    check_size(mix, layers, gflops, factor)
    plans = plan(mix, layers, flops, seed, tuning, factor)
    count = sum(len(block.protos) for lp in plans for block in lp.blocks) + sum(lp.strided is not None for lp in plans)
    with terminal.progress(len(plans) + 1, f"fitting the widths of {count} convolutions", unit="levels") as bar:
        fit_widths(mix, plans, mix.image_size, bar.advance)
        fit_parameters(mix, plans, mix.image_size, mix.parameters * flops / mix.flops_per_image)
        bar.advance()
    groups, _, _ = realise(mix, plans, mix.image_size)
    targets = ", ".join(f"{t.name}:{t.weight:.3g}" for t in mix.targets)
    return {
        "name": name,
        "about": f"Generated by `cnnbench synth` for the mix {targets} at {mix.image_size} px (seed {seed}); "
                 "a proxy benchmark of that mix (cnnbench synth validate).",
        "input": {"height": mix.image_size, "width": mix.image_size, "channels": 3, "scale_to": [-1, 1]},
        "conv_defaults": {"stride": [1, 1], "padding": "same", "batch_norm": mix.batch_norm,
                          "activation": mix.activation, "bias": False},
        "groups": groups,
        "head": {"flatten": True, "fully_connected": {"outputs": mix.num_classes, "bias": True}},
        "training": {"optimizer": "SGD momentum 0.9", "weight_decay": 0.0001, "learning_rate": 0.01},
        "synth": {"targets": [{"name": t.name, "weight": t.weight} for t in mix.targets], "seed": seed,
                  "image_size": mix.image_size, "gflops": gflops, "layers": count,
                  "small_budget": small_budget, "layer_factor": round(factor, 4),
                  "batch_scale": batch_scale(mix.flops_per_image, flops) if small_budget == "batch" else 1},
    }


# ---------------------------------------------------------------- how close it is


def wasserstein(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Earth mover's distance between two weighted samples on a line (the integral of |CDF_a - CDF_b|)."""
    wa, wb = sum(w for _, w in a) or 1.0, sum(w for _, w in b) or 1.0
    points = sorted([(x, w / wa) for x, w in a] + [(x, -w / wb) for x, w in b])
    distance, cdf = 0.0, 0.0
    for (x, w), (x_next, _) in zip(points, points[1:]):
        cdf += w
        distance += abs(cdf) * (x_next - x)
    return distance


def comparison(mix: Mix, profile: dict, scale: float) -> list[dict]:
    """Rows of the goals: each with what (the figure), wanted (the mix's, scaled), got (the network's), off, goal, met."""
    batch = profile["batch_size"]
    got_flops = profile["totals"]["flops"] / batch
    rows = [_relative_row("GFLOPs per image", mix.flops_per_image * scale / 1e9, got_flops / 1e9),
            _relative_row("parameters (M)", mix.parameters * scale / 1e6, profile["totals"]["parameters"] / 1e6)]
    kinds = sorted(set(mix.type_shares) | {k for k, v in profile["op_types"].items() if v["flops"]})
    for kind in kinds:
        wanted, got = mix.type_shares.get(kind, 0.0), profile["op_types"].get(kind, {}).get("flop_share", 0.0)
        rows.append({"what": f"FLOP share: {kind}", "wanted": wanted * 100, "got": got * 100, "off": (got - wanted) * 100,
                     "unit": "pp", "goal": SHARE_TOLERANCE * 100, "met": abs(got - wanted) <= SHARE_TOLERANCE + 1e-12})
    proxy = [(math.log2(l["arithmetic_intensity"]), l["flops"]) for l in profile["layers"] if l["arithmetic_intensity"] > 0]
    distance = wasserstein(mix.intensity, proxy)
    rows.append({"what": "intensity distance (W1, octaves)", "wanted": 0.0, "got": distance, "off": distance,
                 "unit": "octaves", "goal": None, "met": None})
    return rows + motif_rows(mix, profile)


def motif_rows(mix: Mix, profile: dict) -> list[dict]:
    """The share of convolutions in each motif (tools/profile/motifs.py), the mix's against the network's, within
    MOTIF_TOLERANCE; none when a target's profile has no motifs."""
    if mix.motif_shares is None or not profile.get("motifs"):
        return []
    got = motif_shares(profile["motifs"])
    return [{"what": f"conv share: {key}", "wanted": wanted * 100, "got": got[key] * 100, "off": (got[key] - wanted) * 100,
             "unit": "pp", "goal": MOTIF_TOLERANCE * 100, "met": abs(got[key] - wanted) <= MOTIF_TOLERANCE + 1e-12}
            for key, wanted in mix.motif_shares.items() if wanted or got[key]]


def _relative_row(what: str, wanted: float, got: float) -> dict:
    off = got / wanted - 1 if wanted else math.inf
    return {"what": what, "wanted": wanted, "got": got, "off": off * 100, "unit": "%", "goal": FLOP_TOLERANCE * 100,
            "met": abs(off) <= FLOP_TOLERANCE}


def show_comparison(title: str, rows: list[dict]) -> None:
    def met(row):
        return "-" if row["met"] is None else ("yes" if row["met"] else "NO")

    table = [{"what": r["what"], "wanted": f"{r['wanted']:.3f}", "got": f"{r['got']:.3f}",
              "off": f"{r['off']:+.2f} {r['unit']}", "goal": "-" if r["goal"] is None else f"±{r['goal']:g} {r['unit']}",
              "met": met(r)} for r in rows]
    terminal.summary_table(title, table, [("figure", "what"), ("mix", "wanted"), ("network", "got"),
                                           ("off", "off"), ("goal", "goal"), ("met", "met")])


# ---------------------------------------------------------------- the command


def run(cfg) -> int:
    """`cnnbench synth --target ... --out x.json`: profile the targets, generate, write, check against the mix."""
    from cnnbench.models.registry import resolve_any
    from cnnbench.models.synnet import dump_spec
    from cnnbench.tools.profile.profile_file import profile_model
    from cnnbench.core.files import atomic_write_text, ensure_writable

    cfg.validate()
    check_layers(cfg.layers)
    out = Path(cfg.out)
    ensure_writable(out.parent, "--out")
    placement = _calibration_placement(cfg)
    targets = load_targets(cfg.target, cfg.image_size, cfg.batch_size, cfg.precision)
    mix = mix_of(targets, cfg.image_size)

    def make(tuning: Tuning = Tuning()) -> dict:
        return generate(mix, seed=cfg.seed, layers=cfg.layers, gflops=cfg.gflops, name=cfg.name or out.stem,
                        small_budget=cfg.small_budget, tuning=tuning)

    calibration = None
    if placement is None:
        spec = make()
    else:
        from cnnbench.tools import synth_calibration

        setting = synth_calibration.Setting(cfg.device, cfg.precision, cfg.image_size, cfg.batch_size, cfg.warmup,
                                            cfg.calibrate_steps, cfg.calibrate_rounds, cfg.calibrate_tolerance,
                                            cfg.calibrate_engine)
        spec, calibration = synth_calibration.calibrate(targets, make, Tuning(), setting, placement)
    atomic_write_text(out, dump_spec(spec))
    profile = profile_model(resolve_any(str(out)), cfg.image_size, cfg.batch_size, cfg.precision)
    scale = cfg.gflops * 1e9 / mix.flops_per_image if cfg.gflops else 1.0
    rows = comparison(mix, profile, scale)
    terminal.say(f"Mix of {len(targets)}: " + ", ".join(f"{t.name} {t.weight * 100:.0f}%" for t in targets)
                  + f" at {cfg.image_size} px; {mix.flops_per_image / 1e9:.2f} GFLOPs and {mix.parameters / 1e6:.2f} M "
                  "parameters per image" + (f"; budget {cfg.gflops:g} GFLOPs (x{scale:.3f})" if cfg.gflops else ""))
    show_comparison(f"{spec['name']}: {len(profile['layers'])} layers, against the mix", rows)
    scale_batch = spec["synth"]["batch_scale"]
    if scale_batch > 1:
        terminal.say(f"Run it at {scale_batch}x the targets' batch size (targets at {cfg.batch_size}, this proxy at "
                     f"{cfg.batch_size * scale_batch}): a step then does the targets' FLOPs, so the framework's per-step "
                     "overhead takes the same share (synth.batch_scale in the spec)")
    if calibration is not None:
        from cnnbench.tools.synth_calibration import show

        show(calibration)
    missed = [r["what"] for r in rows if r["met"] is False]
    if missed:
        terminal.warn(f"{len(missed)} goal{'s' if len(missed) > 1 else ''} missed: {', '.join(missed)} "
                       "(try another --seed or more --layers)")
    terminal.say(f"Spec written to {out}; run it with `cnnbench train {out}` or check it with "
                  f"`cnnbench synth validate {out} --target {cfg.target}`")
    return 0


def _calibration_placement(cfg):
    """With --calibrate, the device and precision it measures at, and its targets, checked before any profiling."""
    if not cfg.calibrate:
        return None
    from cnnbench.core.placement import resolve_placement
    from cnnbench.tools.synth_calibration import check_targets

    check_targets(cfg.precision, [name for name, _ in parse_targets(cfg.target)], cfg.calibrate_engine, cfg.device)
    if cfg.calibrate_engine == "onnxruntime":  # ONNX Runtime's CPU provider, whatever else the machine has
        return resolve_placement("cpu", "fp32")
    return resolve_placement(cfg.device, cfg.precision)
