"""`cnnbench data convert | sample | bench`: make, convert and time real datasets."""

from __future__ import annotations

import argparse

from cnnbench.core.errors import UsageError


def add_data_commands(subparsers) -> None:
    """Add the `data` command group to the CLI's subparsers."""
    data = subparsers.add_parser("data", help="real datasets: write a sample, convert folders to TFRecord, time the input pipeline")
    sub = data.add_subparsers(dest="data_command", required=True, parser_class=type(data))

    p = sub.add_parser("convert", help="image folder (train/<class>/*, val/<class>/*) -> ImageNet-style TFRecord shards")
    p.add_argument("src", help="folder holding train/ and/or val/ (or validation/) with one sub-folder per class")
    p.add_argument("dst", help="new or empty directory for train-*-of-* and validation-*-of-* shards")
    p.add_argument("--shards", type=int, default=8, help="training shards (default 8)")
    p.add_argument("--validation-shards", type=int, default=None, help="validation shards (default shards/8, at least 1)")
    p.add_argument("--label-offset", type=int, default=1, help="stored label = class index + this (default 1, ImageNet's 1..1000)")
    p.add_argument("--skip-corrupt", action="store_true", help="leave out undecodable images instead of stopping")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("sample", help="write a small real labelled dataset (scikit-learn's handwritten digits, 10 classes)")
    p.add_argument("dst", help="new or empty directory")
    p.add_argument("--tfrecord", action="store_true", help="write TFRecord shards instead of an image folder")
    p.add_argument("--image-size", type=int, default=64, help="side of the written images in pixels (default 64)")
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="image folder file format (default png)")
    p.add_argument("--max-per-class", type=int, default=None, help="at most this many images per class and split")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="decode + preprocess throughput of the input pipeline alone (no model)")
    p.add_argument("--data-dir", required=True, help="image folder or TFRecord directory")
    p.add_argument("--workers", default=None, help="comma-separated loader worker counts (default 1 and all usable cores)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--image-size", type=int, default=224, help="crop size (default 224)")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--num-batches", type=int, default=20, help="timed batches per worker count (default 20)")
    p.add_argument("--preset", default=None, help="torchvision (default), torchvision-v2 or aimatrix")
    p.add_argument("--train-transform", action="store_true", help="time the training transform (random resized crop + flip)")
    p.add_argument("--label-offset", type=int, default=1, help="TFRecord labels minus this must be 0..999 (default 1)")
    p.add_argument("--skip-corrupt", action="store_true", help="count and skip undecodable images")
    p.set_defaults(func=cmd_bench)


def parse_workers(text: str | None) -> list[int]:
    from cnnbench.core.environment import usable_cores

    if text is None:
        return sorted({1, usable_cores()})
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--workers must be comma-separated whole numbers like 1,2,4; got {text!r}") from None
    if not counts or any(c < 0 for c in counts):
        raise UsageError(f"--workers must list worker counts of 0 or more, like 1,2,4; got {text!r}")
    return counts


def cmd_convert(args: argparse.Namespace) -> int:
    from cnnbench.data.sample import convert_folder_to_tfrecord
    from cnnbench.core.terminal import say

    summary = convert_folder_to_tfrecord(args.src, args.dst, args.shards, args.validation_shards,
                                         args.label_offset, args.skip_corrupt)
    say(f"wrote {summary['train']} training and {summary['validation']} validation images of {summary['classes']} classes "
        f"to {args.dst} ({summary['reencoded']} re-encoded as JPEG, {summary['skipped']} undecodable skipped)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from cnnbench.data.sample import write_sample_dataset
    from cnnbench.core.terminal import say

    counts = write_sample_dataset(args.dst, tfrecord=args.tfrecord, image_size=args.image_size,
                                  image_format=args.format, max_per_class=args.max_per_class)
    layout = "TFRecord shards" if args.tfrecord else f"{args.format.upper()} image folder"
    say(f"wrote {counts['train']} training and {counts['val']} validation images (10 classes, "
        f"{args.image_size}x{args.image_size}) to {args.dst} as a {layout}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cnnbench.data.bench import bench_pipeline
    from cnnbench.core.terminal import say, summary_table

    records = bench_pipeline(args.data_dir, args.split, parse_workers(args.workers), args.batch_size, args.image_size,
                             args.num_batches, preset=args.preset, train=args.train_transform,
                             label_offset=args.label_offset, skip_corrupt=args.skip_corrupt)
    say(f"input pipeline: {records[0]['format']} {args.data_dir} [{args.split}], {records[0]['preprocess']}")
    summary_table("decode + preprocess throughput (no model)", records, [
        ("workers", "workers"), ("images", "images"), ("seconds", "seconds"),
        ("images/s", "images_per_sec"), ("images/s per worker", "images_per_sec_per_worker"),
        ("undecodable skipped", "corrupt_images"),
    ])
    return 0
