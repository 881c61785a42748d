"""Command-line options generated from the configuration tree (config.py): one argparse option per leaf
field, with the field's type, default, help, choices and aliases, and nothing else. cli.py builds every
command's parser with it, and data/commands.py the `cnnbench data` commands', so no parser writes a default of
its own. Options the user did not give are absent from the parse (argparse.SUPPRESS): the tree's defaults
apply, and a sweep knows what was asked for explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from cnnbench.core import config


def _bounded(kind: type) -> typing.Callable[[str], object]:
    def parse(text: str):
        value = kind(text)  # ValueError -> argparse's "invalid int value: 'x'"
        if kind is int and abs(value) > config.MAX_INT:
            raise argparse.ArgumentTypeError(f"{text} is out of range (at most {config.MAX_INT})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _value_type(cls: type, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_options(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", exclude: tuple[str, ...] = (),
                       target=None) -> None:
    """One command-line option per leaf field of `cls` (nested dataclasses become option groups)."""
    target = target or parser
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if path in exclude:
            continue
        if dataclasses.is_dataclass(f.default_factory):
            group = parser.add_argument_group(f.name)
            add_config_options(parser, f.default_factory, prefix=path + ".", exclude=exclude, target=group)
            continue
        meta, kind, default = f.metadata, _value_type(cls, f), config.field_default(f)
        if meta.get("positional"):
            target.add_argument(f.name, help=meta["help"], **{k: meta[k] for k in ("nargs", "metavar") if meta.get(k)})
            continue
        shown = f" (default {default})" if default not in (None, False, "") and meta.get("show_default", True) else ""
        common = dict(dest=path, default=argparse.SUPPRESS, help=meta["help"] + shown)
        if kind is bool:
            assert default is False, f"{path}: boolean options default to off"
            target.add_argument(config.flag_of(f), action="store_true", **common)
        else:
            target.add_argument(config.flag_of(f), type=_bounded(kind) if kind in (int, float) else kind,
                                choices=meta.get("choices"), metavar=meta.get("metavar") or (None if meta.get("choices") else f.name.upper()), **common)
        if meta.get("alias"):
            flag, value = meta["alias"]
            target.add_argument(flag, dest=path, action="store_const", const=value, default=argparse.SUPPRESS,
                                help=f"the same as {config.flag_of(f)} {value}")


def given_options(args: argparse.Namespace, prefix: str = "") -> dict[str, object]:
    """The options the user gave, by dotted config name, those under `prefix` with it removed."""
    skip = ("func", "command", "synth_action", "data_command")
    return {k.removeprefix(prefix): v for k, v in vars(args).items()
            if k not in skip and (k.startswith(prefix) if prefix else not k.startswith("sweep."))}
