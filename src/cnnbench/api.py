"""The Python API: `cnnbench.train(model, **options)` and `cnnbench.infer(model, **options)` (docs/python-api.md).

`model` is what the command line takes (a registered name, a torchvision classifier, timm:NAME, a spec file,
path/to/file.py:FUNCTION, package.module:FUNCTION) or an nn.Module instance. The options are the command's
long options with '-' as '_' (batch_size=8, image_size=64, device="cpu", engine="onnxruntime",
precision="int8", channels_last=True, ...): each becomes its command-line option and goes through the parser
the CLI generates from the configuration tree (core/options.py), then config.build and the run's own
validation, so defaults, types, choices and messages are the CLI's. Every mistake is a
cnnbench.CnnbenchError (a UsageError for what was asked; OutOfMemory, EngineRefused, ... as the CLI's exit
codes tell them apart); its message is the line the CLI prints.

The run happens in this process and returns its record (a dict, the fields of core/record.schema.json).
What the API writes differs from the CLI's defaults in two ways, both on purpose (a notebook measures):
- no results folder unless `results_dir=` is given: the record is written to a temporary folder, removed
  after the run, and `config.results_dir` of the returned record is None;
- train writes no checkpoint unless `no_checkpoint=False` is given.
An nn.Module instance runs as copies of itself (models/registry.register_instance): training and engine
builds leave the caller's module as it was, inference runs its own weights (recorded as weights "pretrained":
the module's own), and its record's model_source is "python". It exists in this process only, so a run that
launches processes (num_accelerators > 1) takes a file.py:FUNCTION reference instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from typing import Iterator

from cnnbench.core import config
from cnnbench.core.errors import UsageError
from cnnbench.core.options import add_config_options, given_options

__all__ = ["train", "infer"]


def train(model, **options) -> dict:
    """Train `model` (a name or reference string, or an nn.Module) as `cnnbench train` does; returns the record.

    Options: `cnnbench train`'s long options with '-' as '_'. No checkpoint unless no_checkpoint=False; no
    results folder unless results_dir= is given. Raises cnnbench.CnnbenchError (UsageError: a mistake in what
    was asked) with the CLI's one-line message."""
    from cnnbench.recipes import training

    def run(cfg: config.TrainConfig) -> dict:
        if cfg.num_accelerators > 1:
            raise UsageError("cnnbench.train runs in this process; num_accelerators > 1 launches a data-parallel job of "
                             "processes: use `cnnbench train MODEL --num-accelerators N` (a file.py:FUNCTION for your "
                             "own network)")
        return training.run(cfg, started_at=time.time())

    return _execute("train", config.TrainConfig, model, {"no_checkpoint": True, **options}, run)


def infer(model, **options) -> dict:
    """Run inference on `model` as `cnnbench infer` does; returns the record.

    Options: `cnnbench infer`'s long options with '-' as '_' (engine=, precision=, scenario=, loadgen=True, ...).
    A name needs weights as on the command line (random_weights=True, pretrained=True or weights=FILE); an
    nn.Module runs its own weights. No results folder unless results_dir= is given. Raises
    cnnbench.CnnbenchError with the CLI's one-line message (EngineRefused: the engine cannot take the model)."""
    from cnnbench.recipes import inference
    from cnnbench.tools import loadgen

    if not isinstance(model, str) and not any(options.get(k) for k in ("weights", "pretrained", "random_weights")):
        options = {**options, "pretrained": True}  # the instance's own weights (registry.register_instance)

    def run(cfg: config.InferConfig) -> dict:
        return loadgen.run(cfg) if cfg.loadgen.enabled else inference.run(cfg, started_at=time.time())

    return _execute("infer", config.InferConfig, model, options, run)


class _Parser(argparse.ArgumentParser):
    """The command's options as the CLI generates them; a mistake raises the CLI's message instead of exiting."""

    def error(self, message: str):
        raise UsageError(message)


def _keywords(cls: type, prefix: str = "") -> Iterator[tuple[str, str, bool]]:
    """(keyword, flag, takes no value) of every option of `cls`: the long option with '-' as '_', as
    add_config_options spells them (config.flag_of), aliases included (channels_last)."""
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _keywords(f.default_factory, prefix + f.name + ".")
            continue
        if f.metadata.get("positional"):
            continue
        flag = config.flag_of(f)
        yield flag[2:].replace("-", "_"), flag, f.type in (bool, "bool")
        if f.metadata.get("alias"):
            alias = f.metadata["alias"][0]
            yield alias[2:].replace("-", "_"), alias, True


def _argv(kind: str, cls: type, options: dict) -> list[str]:
    """The command line that says what `options` say (None: the option's default)."""
    from cnnbench.models.entry import did_you_mean

    known = {keyword: (flag, switch) for keyword, flag, switch in _keywords(cls)}
    argv: list[str] = []
    for keyword, value in options.items():
        if keyword not in known:
            hint = did_you_mean(keyword, {k: k for k in known})
            raise UsageError(f"cnnbench.{kind}: unknown option {keyword}={value!r}{hint}; the options are `cnnbench {kind} "
                             "--help`'s long options with '-' as '_'")
        flag, switch = known[keyword]
        if value is None:
            continue
        if switch:
            if not isinstance(value, bool):
                raise UsageError(f"argument {flag}: an on/off option; give {keyword}=True or {keyword}=False, not {value!r}")
            argv += [flag] if value else []
        else:
            argv.append(f"{flag}={value}")  # one token: a value starting with '-' stays the option's
    return argv


def _execute(kind: str, cls: type, model, options: dict, run) -> dict:
    """Build the configuration as the CLI does (its generated parser, config.build), with an instance registered
    and a temporary results folder unless one is asked for, both undone after; `run(cfg)` returns the record."""
    from cnnbench.models import registry

    reference = tmp = None
    try:
        if isinstance(model, str):
            name = model
        else:
            if options.get("framework", "pytorch") != "pytorch":
                raise UsageError("an nn.Module runs with framework='pytorch'; give TensorFlow a keras:NAME or a name")
            name = reference = registry.register_instance(model)
        parser = _Parser(prog=f"cnnbench.{kind}", add_help=False)
        add_config_options(parser, cls, exclude=("model",))
        given = given_options(parser.parse_args(_argv(kind, cls, options)))
        if "results_dir" not in given:
            tmp = given["results_dir"] = tempfile.mkdtemp(prefix=f"cnnbench-{kind}-")
        record = dict(run(config.build(cls, {**given, "model": name})))
    finally:
        if reference:
            registry.unregister_instance(reference)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if tmp:
        record["config.results_dir"] = None  # nothing was kept there
    return record
