"""`cnnbench data convert | sample | bench`: make, convert and time real datasets.

Their options come from the configuration tree (config.DataConvertConfig, DataSampleConfig, DataBenchConfig)
through options.add_config_options, as every other command's do: no default is written here.
"""

from __future__ import annotations

import argparse

from cnnbench.core import config
from cnnbench.core.errors import UsageError
from cnnbench.core.options import add_config_options, given_options


def add_data_commands(subparsers) -> None:
    """Add the `data` command group to the CLI's subparsers."""
    data = subparsers.add_parser("data", help="real datasets: write a sample, convert folders to TFRecord, time the input pipeline")
    sub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))
    for name, cls, func, what in (
        ("convert", config.DataConvertConfig, cmd_convert,
         "image folder (train/<class>/*, val/<class>/*) -> ImageNet-style TFRecord shards"),
        ("sample", config.DataSampleConfig, cmd_sample,
         "write a small real labelled dataset (scikit-learn's handwritten digits, 10 classes)"),
        ("bench", config.DataBenchConfig, cmd_bench, "decode + preprocess throughput of the input pipeline alone (no model)"),
    ):
        p = sub.add_parser(name, help=what)
        add_config_options(p, cls)
        p.set_defaults(func=func)


def parse_workers(text: str | None) -> list[int]:
    from cnnbench.core.environment import usable_cores
    from cnnbench.core.terminal import warn

    cores = usable_cores()
    if text is None:
        return sorted({1, cores})
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--workers must be comma-separated whole numbers like 1,2,4; got {text!r}") from None
    if not counts or any(c < 0 for c in counts):
        raise UsageError(f"--workers must list worker counts of 0 or more, like 1,2,4; got {text!r}")
    if max(counts) > cores:  # each worker is a process with its own copy of the pipeline; beyond the cores they only queue
        warn(f"--workers {max(counts)}: more loader processes than this machine's {cores} usable cores; "
             "they share the cores, so the figures beyond it measure contention, not the pipeline")
    return counts


def cmd_convert(args: argparse.Namespace) -> int:
    from cnnbench.data.sample import convert_folder_to_tfrecord
    from cnnbench.core.terminal import say

    cfg = config.build(config.DataConvertConfig, given_options(args))
    summary = convert_folder_to_tfrecord(cfg.src, cfg.dst, cfg.shards, cfg.validation_shards,
                                         cfg.label_offset, cfg.skip_corrupt)
    say(f"wrote {summary['train']} training and {summary['validation']} validation images of {summary['classes']} classes "
        f"to {cfg.dst} ({summary['reencoded']} re-encoded as JPEG, {summary['skipped']} undecodable skipped)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from cnnbench.data.sample import write_sample_dataset
    from cnnbench.core.terminal import say

    cfg = config.build(config.DataSampleConfig, given_options(args))
    counts = write_sample_dataset(cfg.dst, tfrecord=cfg.tfrecord, image_size=cfg.image_size,
                                  image_format=cfg.format, max_per_class=cfg.max_per_class)
    layout = "TFRecord shards" if cfg.tfrecord else f"{cfg.format.upper()} image folder"
    say(f"wrote {counts['train']} training and {counts['val']} validation images (10 classes, "
        f"{cfg.image_size}x{cfg.image_size}) to {cfg.dst} as a {layout}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cnnbench.data.bench import bench_pipeline
    from cnnbench.core.terminal import say, summary_table

    cfg = config.build(config.DataBenchConfig, given_options(args))
    cfg.validate()
    records = bench_pipeline(cfg.data_dir, cfg.split, parse_workers(cfg.workers), cfg.batch_size, cfg.image_size,
                             cfg.num_batches, preset=cfg.preset, train=cfg.train_transform,
                             label_offset=cfg.label_offset, skip_corrupt=cfg.skip_corrupt)
    say(f"input pipeline: {records[0]['format']} {cfg.data_dir} [{cfg.split}], {records[0]['preprocess']}")
    summary_table("decode + preprocess throughput (no model)", records, [
        ("workers", "workers"), ("images", "images"), ("seconds", "seconds"),
        ("images/s", "images_per_sec"), ("images/s per worker", "images_per_sec_per_worker"),
        ("undecodable skipped", "corrupt_images"),
    ])
    return 0
