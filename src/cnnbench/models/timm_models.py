"""`timm:NAME`: any PyTorch Image Models classifier (the `.[timm]` extra), randomly initialised offline.

NAME is an architecture of `timm.list_models()` (resnet10t, convnext_atto, vit_base_patch16_224, ...),
optionally with a weights tag (resnet10t.c3_in1k). Its pretrained_cfg (timm/models/_pretrained.py
PretrainedCfg, read without building the model) gives the input size, the minimum where it has one, the
classes, and the evaluation transform: crop_pct (resize = crop / crop_pct, timm.data.transforms_factory),
mean and std. The input size is the cfg's `input_size`, the size timm's own benchmark.py and
timm.data.resolve_data_config use (resnet10t: 176, its train size; `test_input_size` may be larger).
Models with `fixed_input_size` (the ViTs) are built for the run's size with timm's `img_size` argument.
--pretrained goes through timm's own download (create_model(pretrained=True): the Hugging Face Hub,
cached under HF_HOME); without a network it is one line.
"""

from __future__ import annotations

import contextlib
import logging
import math

from torch import nn

from cnnbench.core.errors import UsageError, one_line
from cnnbench.models.entry import ModelEntry, default_learning_rate, did_you_mean, normalization_for

PREFIX = "timm:"
INSTALL = "pip install -e '.[timm]'"
# The floor where neither the cfg nor the network's output stride says more: the ResNets' reasoning
# (registry.py): below the last stage's stride the last stage sees less than one pixel.
DEFAULT_MIN_SIZE = 32


def installed() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def names() -> list[str]:
    """timm's architectures ([] without timm)."""
    if not installed():
        return []
    import timm

    return timm.list_models()


def entry(name: str) -> ModelEntry:
    """The entry of timm architecture `name` (without the prefix), or a UsageError naming the closest ones."""
    if not installed():
        raise UsageError(f"{PREFIX}{name} needs timm, which is not installed; install it with {INSTALL}")
    import timm

    if not name or not timm.is_model(name):
        hint = did_you_mean(name, {n.lower(): PREFIX + n for n in timm.list_models()})
        raise UsageError(f"unknown timm model {PREFIX}{name}{hint}; timm.list_models() names them all")
    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg and cfg.input_size else 224
    classes = int(cfg.num_classes) if cfg and cfg.num_classes else 1000
    fixed = bool(cfg and cfg.fixed_input_size)
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg else ((), ())
    preprocessing, note = normalization_for(mean, std)
    crop_pct = cfg.crop_pct if cfg and cfg.crop_pct else 0.875

    def build(image_size: int, pretrained: bool = False) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=classes,
                                     **({"img_size": image_size} if fixed else {}))
        except (ValueError, AssertionError, TypeError) as exc:  # a ViT's patches, a window size
            raise UsageError(f"--image-size {image_size} does not suit {PREFIX}{name} ({one_line(exc)}); "
                             f"its size is {size}") from None

    def pretrained() -> tuple[str, dict]:
        where = (cfg.hf_hub_id or cfg.url) if cfg else None
        if not where:
            raise UsageError(f"--pretrained: timm publishes no weights for {name}; use --weights FILE or a training "
                             f"checkpoint (name a tagged model, e.g. {PREFIX}{name}.TAG, for others)")
        try:
            with _quiet("huggingface_hub", "timm"):
                model = build(size, pretrained=True)
        except UsageError:
            raise
        except Exception as exc:  # offline, proxy, no such file on the Hub: timm's and huggingface_hub's errors
            raise UsageError(f"--pretrained: cannot fetch timm's weights for {name} from {where} ({one_line(exc)}); "
                             "offline, set HF_HUB_OFFLINE=1 and put them into the Hugging Face cache (HF_HOME), or use --weights FILE") from None
        return f"timm {name} ({where})", model.state_dict()

    min_size = max(int(cfg.min_input_size[-1]) if cfg and cfg.min_input_size else 1, _output_stride(build, size))
    return ModelEntry(
        PREFIX + name, build, size, min_size, preprocessing, default_learning_rate, num_classes=classes,
        source="timm", resize_size=int(math.floor(size / crop_pct)), mean=mean, std=std, pretrained=pretrained,
        probe=True, notes={"source": "timm", **({"preprocessing": note} if note else {})},
    )


@contextlib.contextmanager
def _quiet(*names: str):
    """The loggers named print nothing under ERROR meanwhile: huggingface_hub logs every failed request as a
    warning, and the failure is reported in one line of its own."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _output_stride(build, size: int) -> int:
    """The last feature map's reduction (timm's feature_info, on every timm model), the smallest input that
    leaves it a pixel; 32 where the model cannot be built on the meta device to tell."""
    import torch

    try:
        with torch.device("meta"):
            info = getattr(build(size), "feature_info", None)
    except Exception:  # a builder computing with tensor values cannot run on meta
        return DEFAULT_MIN_SIZE
    reductions = [int(i.get("reduction", 1)) for i in info or [] if isinstance(i, dict)]
    return max(reductions, default=DEFAULT_MIN_SIZE)
