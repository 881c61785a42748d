"""Configuration once (issue 21): every command's options come from the typed tree in config.py, each default is
written there once, and the options several commands share are declared once and reused."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from cnnbench import cli
from cnnbench.core import config, tables
from cnnbench.core.options import given_options
from cnnbench.recipes import sweep

SRC = Path(cli.__file__).resolve().parent


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, cls, given", [
    (["data", "convert", "in", "out"], config.DataConvertConfig, {"src": "in", "dst": "out"}),
    (["data", "sample", "out"], config.DataSampleConfig, {"dst": "out"}),
    (["data", "bench", "--data-dir", "d"], config.DataBenchConfig, {"data_dir": "d"}),
    (["models"], config.ModelsConfig, {}),
])
def test_data_and_models_take_their_defaults_from_the_config_tree(argv, cls, given):
    # Options left out are absent from the parse (no default written by a parser), so the tree's apply.
    args = _parse(*argv)
    assert given_options(args) == given
    assert config.build(cls, given_options(args)) == cls(**given)


def test_every_data_option_is_a_config_field_and_keeps_its_flag():
    args = _parse("data", "bench", "--data-dir", "d", "--workers", "0,2", "--batch-size", "8", "--image-size", "32",
                  "--split", "val", "--num-batches", "3", "--preset", "aimatrix", "--train-transform",
                  "--label-offset", "0", "--skip-corrupt")
    cfg = config.build(config.DataBenchConfig, given_options(args))
    assert cfg == config.DataBenchConfig(data_dir="d", workers="0,2", batch_size=8, image_size=32, split="val",
                                         num_batches=3, preset="aimatrix", train_transform=True, label_offset=0,
                                         skip_corrupt=True)
    args = _parse("data", "convert", "a", "b", "--shards", "2", "--validation-shards", "1", "--label-offset", "0",
                  "--skip-corrupt")
    assert config.build(config.DataConvertConfig, given_options(args)) == config.DataConvertConfig(
        src="a", dst="b", shards=2, validation_shards=1, label_offset=0, skip_corrupt=True)
    args = _parse("data", "sample", "d", "--tfrecord", "--image-size", "16", "--format", "jpeg", "--max-per-class", "2")
    assert config.build(config.DataSampleConfig, given_options(args)) == config.DataSampleConfig(
        dst="d", tfrecord=True, image_size=16, format="jpeg", max_per_class=2)


def test_no_parser_writes_an_option_of_its_own():
    # Every option that takes a value or sets one is generated (options.add_config_options); cli.py and
    # data/commands.py add none by hand (argparse's own --version and --help actions hold no configuration).
    def own_action(call: ast.Call) -> bool:
        return any(k.arg == "action" and isinstance(k.value, ast.Constant) and k.value.value in ("version", "help")
                   for k in call.keywords)

    for path in (SRC / "cli.py", SRC / "data" / "commands.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument" and not own_action(node)]
        assert not calls, f"{path.name} adds options by hand at lines {[c.lineno for c in calls]}"


@pytest.mark.parametrize("argv, message", [
    (["data", "bench"], "cnnbench data bench needs --data-dir"),
    (["models", "--image-size", "0"], "--image-size must be an integer of at least 1, got 0"),
])
def test_bad_input_to_data_and_models_is_one_line(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def _python_sources() -> dict[Path, str]:
    return {p: p.read_text() for p in SRC.rglob("*.py")}


def test_the_original_models_are_listed_once():
    listed = re.compile(r"""["']googlenet["'],\s*["']resnet50["'],\s*["']resnet152["'],\s*["']densenet121["'],\s*["']synNet["']""")
    found = [p.relative_to(SRC) for p, text in _python_sources().items() if listed.search(text)]
    assert found == [Path("core/config.py")]
    assert all("googlenet,resnet50,resnet152" not in text for text in _python_sources().values())  # help text included
    assert list(sweep.DEFAULT_MODELS) == tables.ORIGINAL_MODEL_ORDER == list(config.ORIGINAL_MODELS)
    assert ",".join(config.ORIGINAL_MODELS) in _fields(config.SweepConfig)["models"].metadata["help"]


@pytest.mark.parametrize("number", [500, 2000])
def test_the_original_batch_counts_are_written_once(number):
    # As numbers in the code that plans runs (the tree, the sweep's plans, the soak, the command lines, nvcnn.py's
    # translation of the original's): the constants in config.py; every plan, default and help text reads them.
    planning = [SRC / "core" / "config.py", SRC / "recipes" / "sweep.py", SRC / "tools" / "soak.py", SRC / "cli.py",
                SRC.parent.parent / "nvcnn.py"]
    where = [(p.name, node.lineno) for p in planning for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and type(node.value) is int and node.value == number]
    assert len(where) == 1 and where[0][0] == "config.py", where


def test_the_plans_and_defaults_read_the_original_figures():
    assert config.MeasureConfig().num_batches == sweep.ORIGINAL_PLAN.num_batches == config.ORIGINAL_NUM_BATCHES
    assert config.MeasureConfig().warmup == sweep.ORIGINAL_PLAN.warmup == sweep.PRESSURE_PLAN.warmup == config.ORIGINAL_WARMUP
    assert sweep.PRESSURE_PLAN.num_batches == config.PRESSURE_NUM_BATCHES
    assert config.SoakConfig(model="m").resolved().measure.num_batches == config.PRESSURE_NUM_BATCHES
    assert f"{config.ORIGINAL_NUM_BATCHES} batches after {config.ORIGINAL_WARMUP} warm-up steps" in \
        _fields(config.SweepConfig)["plan"].metadata["help"]


# (command's config, field, where it is declared, the command's own default or None for the declared one)
SHARED = [
    (config.MaxBatchConfig, "device", config.PlacementConfig, None),
    (config.MaxBatchConfig, "precision", config.PlacementConfig, None),
    (config.MaxBatchConfig, "memory_format", config.PlacementConfig, None),
    (config.MaxBatchConfig, "seed", config.RunConfig, None),
    (config.MaxBatchConfig, "warmup", config.MeasureConfig, 1),
    (config.MaxBatchConfig, "model", config.RunConfig, None),
    (config.MaxBatchConfig, "image_size", config.RunConfig, None),
    (config.SynthValidateConfig, "device", config.PlacementConfig, None),
    (config.SynthValidateConfig, "seed", config.RunConfig, None),
    (config.SynthValidateConfig, "warmup", config.MeasureConfig, 3),
    (config.ProfileConfig, "device", config.PlacementConfig, None),
    (config.ProfileConfig, "warmup", config.MeasureConfig, 2),
    (config.ModelsConfig, "image_size", config.RunConfig, None),
    (config.DataBenchConfig, "batch_size", config.MeasureConfig, None),
    (config.DataBenchConfig, "label_offset", config.DataConfig, None),
]


@pytest.mark.parametrize("cls, name, declared_in, own_default", SHARED,
                         ids=[f"{c.__name__}.{n}" for c, n, _, _ in SHARED])
def test_shared_options_are_declared_once(cls, name, declared_in, own_default):
    mine, declared = _fields(cls)[name], _fields(declared_in)[name]
    assert mine.default == (declared.default if own_default is None else own_default)
    assert mine.metadata["help"].endswith(declared.metadata["help"])
    assert {k: v for k, v in mine.metadata.items() if k != "help"} == {k: v for k, v in declared.metadata.items() if k != "help"}


def test_device_help_is_written_once():
    text = "auto (cuda if available, else cpu), cpu, cuda or cuda:N"
    assert sum(source.count(text) for source in _python_sources().values()) == 1


def test_shared_options_keep_their_record_fields():
    # Records flatten the tree as config.<path>: reusing a declaration leaves the paths as they were.
    assert {"config.device", "config.precision", "config.memory_format", "config.seed", "config.warmup"} <= \
        set(config.flatten(config.MaxBatchConfig(model="m")))
    assert {"config.device", "config.seed", "config.warmup"} <= set(config.flatten(config.SynthValidateConfig(spec="s")))
    assert {"config.placement.device", "config.measure.warmup", "config.seed"} <= set(config.flatten(config.TrainConfig(model="m")))
