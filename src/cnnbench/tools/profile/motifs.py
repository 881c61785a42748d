"""The operations around each convolution (issue 25): the motifs a synthetic network must copy, not only its layers.

Why: an engine's speed depends on what it can fuse. ONNX Runtime's and OpenVINO's int8 paths fold a batch norm
that *follows* a conv into the conv's weights and fuse its activation, but a batch norm-ReLU that comes *before*
a conv (DenseNet's pre-activation, He et al. 2016, "Identity Mappings in Deep Residual Networks") and the
concatenations between them stay memory-bound layers of their own. Measured on the development CPU (AVX-512
VNNI, 96 px, batch 8), densenet121's int8 speed-up is 2.83x where a proxy of plain conv-BN-ReLU blocks predicted
4.95x (issue 25). So the profile says, for every convolution, what surrounds it.

Read from the recorded dataflow (layers.py: each layer's `inputs`, the layers that wrote its tensor arguments):
  pre           the conv reads BN -> activation (or BN alone) of a tensor that no conv wrote, so the batch norm
                cannot fold into a conv before it (DenseNet's norm1 over the concatenation, its transitions)
  post          what follows the conv while each step is the only reader: "bn_act", "bn", "act", "act_bn", "none";
                activation: that activation's function (relu, hardswish, silu, ...) or None
  order         "pre" when pre, else "post" when a batch norm follows, else "none"
  gate          the conv's output (after post) is scaled by a gate: global pool -> 1x1 convs or linear layers
                with an activation -> sigmoid or hardsigmoid -> mul with that output (squeeze-excitation, Hu et
                al. 2018; MobileNetV3, EfficientNet): {"function", "activation", "reduction" = channels / squeeze}
  in_gate       the conv is one of a gate's own (they run on 1x1 maps and are generated with their gate)
  pair          "depthwise" for a depthwise conv whose output (after post and gate) a 1x1 conv reads, and
                "pointwise" for that 1x1 conv (MobileNet's separable convolution, Howard et al. 2017)
  merge, fan_in the first add or concat the output (after post and gate) feeds, and its number of inputs
  block         the first add or concat downstream (first readers, up to 12 layers): the merge closing its block
  pool_before   a max or average pool wrote the conv's input (before its pre-activation)
  pool_after    a max or average pool reads its output (after post): DenseNet's transition, GoogLeNet's stem

The profile's `motifs` section counts these per forward (every target runs each once per image), for the
whole network and per level (a conv's level is that of its output, as tools/synth.py counts levels).
"""

from __future__ import annotations

import math

from cnnbench.tools.profile.layers import CONV_TYPES

GATE_FUNCTIONS = ("sigmoid", "sigmoid_", "hardsigmoid")
ORDERS = ("pre", "post", "none")
MERGES = ("add", "concat")
POOLS = ("maxpool", "avgpool")


def _without_pads(layers: list[dict]) -> list[dict]:
    """The layers with every reference to a padding copy (F.pad: a spec's TensorFlow-style 'same' padding, timm's
    too) replaced by what the pad read: a pad moves no batch norm and folds into the conv that reads it."""
    alias: dict[int, int] = {}
    out = []
    for layer in layers:
        inputs = [alias.get(i, i) for i in layer.get("inputs") or []]
        if layer["type"] == "other" and layer.get("function") == "pad" and len(inputs) == 1:
            alias[layer["index"]] = inputs[0]
            inputs = []
        out.append({**layer, "inputs": inputs})
    return out


def _consumers(layers: list[dict]) -> list[list[int]]:
    readers: list[list[int]] = [[] for _ in layers]
    for layer in layers:
        for source in dict.fromkeys(layer.get("inputs") or []):
            readers[source].append(layer["index"])
    return readers


def _data_input(layer: dict) -> int | None:
    inputs = layer.get("inputs") or []
    return inputs[0] if inputs else None


def find_gates(layers: list[dict]) -> list[dict]:
    """Every multiplicative gate: a mul of a tensor x and sigmoid/hardsigmoid(f(global_pool(x))), where f is a chain
    of convs, linear layers, batch norms and activations. Each: mul, pool, convs (its own), gated (x's writer),
    function, activation (the first inside f, or "none"), channels (x's) and squeeze (the narrowest inside f)."""
    layers = _without_pads(layers)
    gates = []
    for mul in (l for l in layers if l["type"] == "mul" and len(l.get("inputs") or []) == 2):
        for k, g in enumerate(mul["inputs"]):
            other = mul["inputs"][1 - k]
            if layers[g]["type"] != "activation" or layers[g]["function"] not in GATE_FUNCTIONS:
                continue
            chain, cur = [], _data_input(layers[g])
            while cur is not None and layers[cur]["type"] in (*CONV_TYPES, "linear", "activation", "batchnorm"):
                chain.append(cur)
                cur = _data_input(layers[cur])
            if cur is None or layers[cur]["type"] != "global_pool" or _data_input(layers[cur]) != other:
                continue
            convs = [i for i in chain if layers[i]["type"] in (*CONV_TYPES, "linear")]
            acts = [layers[i]["function"].rstrip("_") for i in reversed(chain) if layers[i]["type"] == "activation"]
            if not convs:
                continue
            channels = layers[other]["out_channels"] or 0
            squeeze = min(layers[i]["out_channels"] or channels for i in convs)
            gates.append({"mul": mul["index"], "pool": cur, "convs": convs, "gated": other,
                          "function": layers[g]["function"].rstrip("_"), "activation": acts[0] if acts else "none",
                          "channels": channels, "squeeze": squeeze})
            break
    return gates


def conv_motifs(layers: list[dict]) -> dict[int, dict]:
    """The motif of every convolution (module docstring), by layer index; {} for a profile without dataflow."""
    if not layers or any("inputs" not in l for l in layers):
        return {}
    layers = _without_pads(layers)
    readers, gates = _consumers(layers), find_gates(layers)
    in_gate = {i for gate in gates for i in gate["convs"]}
    gate_of = {gate["gated"]: gate for gate in gates}
    out = {}
    for conv in (l for l in layers if l["type"] in CONV_TYPES):
        i = conv["index"]
        post, end, function = _post(layers, readers, i)
        gate = gate_of.get(end)
        if gate is not None:
            end = gate["mul"]
        pre, before = _pre(layers, conv)
        merge = next((j for j in readers[end] if layers[j]["type"] in MERGES), None)
        pool_after = next((layers[j]["type"] for j in readers[end] if layers[j]["type"] in POOLS), None)
        out[i] = {"pre": pre, "post": post, "activation": function,
                  "order": "pre" if pre else ("post" if "bn" in post else "none"),
                  "gate": None if gate is None else {"function": gate["function"], "activation": gate["activation"],
                                                     "reduction": gate["channels"] / max(gate["squeeze"], 1)},
                  "in_gate": i in in_gate, "pair": None,
                  "merge": None if merge is None else layers[merge]["type"],
                  "fan_in": 0 if merge is None else len(layers[merge]["inputs"]),
                  "pool_before": layers[before]["type"] if before is not None and layers[before]["type"] in POOLS else None,
                  "pool_after": pool_after, "_end": end}
    for i, motif in out.items():
        motif["block"] = _block_merge(layers, readers, motif["_end"])
    for i, motif in out.items():  # depthwise -> 1x1: MobileNet's separable pairs
        if layers[i]["type"] == "depthwise_conv":
            pointwise = next((j for j in readers[motif["_end"]] if layers[j]["type"] == "conv"
                              and list(layers[j]["kernel"] or []) == [1, 1]), None)
            if pointwise is not None:
                motif["pair"], out[pointwise]["pair"] = "depthwise", "pointwise"
    for motif in out.values():
        del motif["_end"]
    return out


def _block_merge(layers: list[dict], readers: list[list[int]], end: int, steps: int = 12) -> str | None:
    """The first add or concat downstream of a conv (following first readers), within `steps` layers: the merge
    that closes the block it sits in (ResNet's conv1 reaches the add after conv3; DenseNet's 1x1 the concat)."""
    cur = end
    for _ in range(steps):
        if not readers[cur]:
            return None
        cur = readers[cur][0]
        if layers[cur]["type"] in MERGES:
            return layers[cur]["type"]
    return None


def _post(layers: list[dict], readers: list[list[int]], i: int) -> tuple[str, int, str | None]:
    """The batch norm and activation that follow conv i while each is its predecessor's only reader, the last
    layer of that chain, and the activation's function (None without one)."""
    steps, end, function = [], i, None
    while len(readers[end]) == 1 and len(steps) < 2:
        nxt = layers[readers[end][0]]
        step = {"batchnorm": "bn", "activation": "act"}.get(nxt["type"])
        if step is None or step in steps or nxt.get("function") in GATE_FUNCTIONS:
            break
        steps.append(step)
        function = nxt["function"].rstrip("_") if step == "act" else function
        end = nxt["index"]
    return ("_".join(steps) or "none"), end, function


def _pre(layers: list[dict], conv: dict) -> tuple[bool, int | None]:
    """Whether conv reads [BN ->] activation, or BN, of a tensor no conv wrote (a batch norm that cannot fold
    into a conv before it); and the layer that wrote what that chain reads (or the conv's own input)."""
    cur, seen = _data_input(conv), []
    while cur is not None and layers[cur]["type"] in ("batchnorm", "activation") and len(seen) < 2 \
            and layers[cur].get("function") not in GATE_FUNCTIONS:
        seen.append(layers[cur]["type"])
        cur = _data_input(layers[cur])
    pre = "batchnorm" in seen and (cur is None or layers[cur]["type"] not in CONV_TYPES)
    return pre, cur


def level_of(height: int, image_size: int) -> int:
    """How many times the input has been halved (tools/synth.py's level_of, by a conv's output height)."""
    return max(0, round(math.log2(image_size / max(height, 1))))


def _empty_counts() -> dict:
    return {"convs": 0, "order": dict.fromkeys(ORDERS, 0), "gated": 0, "depthwise_pointwise": 0,
            "merge": {"add": 0, "concat": 0, "none": 0}, "pool_before": dict.fromkeys(POOLS, 0),
            "pool_after": dict.fromkeys(POOLS, 0)}


def _add(counts: dict, motif: dict) -> None:
    counts["convs"] += 1
    counts["order"][motif["order"]] += 1
    counts["gated"] += motif["gate"] is not None
    counts["depthwise_pointwise"] += motif["pair"] == "depthwise"
    counts["merge"][motif["merge"] or "none"] += 1
    for where in ("pool_before", "pool_after"):
        if motif[where]:
            counts[where][motif[where]] += 1


def motifs_section(layers: list[dict], image_size: int) -> dict | None:
    """The profile's `motifs`: per network and per level, convolutions (a gate's own left out) by order, gated,
    depthwise-pointwise pairs, merge fed, pools around; the merges by kind and fan-in; the gates. None without
    dataflow (a profile made before issue 25)."""
    motifs = conv_motifs(layers)
    if not motifs and any(l["type"] in CONV_TYPES for l in layers):
        return None
    total, levels = _empty_counts(), {}
    for i, motif in motifs.items():
        if motif["in_gate"]:
            continue
        _add(total, motif)
        height = (layers[i]["output_hw"] or [image_size])[0]
        _add(levels.setdefault(str(level_of(height, image_size)), _empty_counts()), motif)
    merges = {kind: {"count": 0, "fan_in": {}} for kind in MERGES}
    for layer in layers:
        if layer["type"] in MERGES:
            fan_in = str(len(layer["inputs"]))
            merges[layer["type"]]["count"] += 1
            merges[layer["type"]]["fan_in"][fan_in] = merges[layer["type"]]["fan_in"].get(fan_in, 0) + 1
    gates = find_gates(layers)
    functions: dict[str, int] = {}
    for gate in gates:
        functions[gate["function"]] = functions.get(gate["function"], 0) + 1
    return {**total, "levels": dict(sorted(levels.items(), key=lambda kv: int(kv[0]))), "merges": merges,
            "gates": {"count": len(gates), "function": functions,
                      "mean_reduction": (sum(g["channels"] / max(g["squeeze"], 1) for g in gates) / len(gates)) if gates else 0.0}}


def shares(motifs: dict) -> dict[str, float]:
    """The shares of convolutions that are pre-activation, post-activation, gated, depthwise in a separable pair,
    feeding an add, feeding a concatenation: what `cnnbench synth` compares."""
    n = motifs["convs"] or 1
    return {"pre-activation": motifs["order"]["pre"] / n, "post-activation": motifs["order"]["post"] / n,
            "gated": motifs["gated"] / n, "depthwise-pointwise": motifs["depthwise_pointwise"] / n,
            "feeds an add": motifs["merge"]["add"] / n, "feeds a concat": motifs["merge"]["concat"] / n}
