"""Command line: `cnnbench models | train | train-all`.

User mistakes end in one line and exit 2; out of memory exits 3; Ctrl-C exits 130 after the
statistics of the completed steps are printed. No traceback for anything a user can fix.
"""

from __future__ import annotations

import argparse
import sys

from cnnbench import errors


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(errors.EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def add_measure_options(p: argparse.ArgumentParser, *, warmup: int = 20) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    g.add_argument("--num-batches", type=int, default=500, help="steady-state steps to time (default 500, the original's)")
    g.add_argument("--warmup", type=int, default=warmup, help=f"steps before timing starts, excluded from steady-state figures (default {warmup})")
    g.add_argument("--display-every", type=int, default=100, help="print a step line every N steps (default 100)")
    g.add_argument("--duration", type=_positive_float, default=None,
                   help="stop after this many seconds of steady-state time (at least --min-steady-steps steps; --num-batches stays the upper bound)")
    g.add_argument("--min-steady-steps", type=int, default=3, help="with --duration: at least this many steady steps (default 3)")


def add_placement_options(p: argparse.ArgumentParser, precisions: tuple[str, ...]) -> None:
    g = p.add_argument_group("placement")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    g.add_argument("--precision", default="fp32", help=f"{' | '.join(precisions)} (fp16/bf16: autocast mixed precision; tf32: CUDA only)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")


def add_train_options(p: argparse.ArgumentParser) -> None:
    from cnnbench.placement import TRAIN_PRECISIONS

    add_measure_options(p)
    add_placement_options(p, TRAIN_PRECISIONS)
    g = p.add_argument_group("training")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (compilation happens in warm-up and is reported apart)")
    g.add_argument("--image-size", type=int, default=None, help="input height and width (default: the model's, 224)")
    g.add_argument("--learning-rate", type=float, default=None, help="override the per-model learning rate")
    g.add_argument("--seed", type=int, default=0)


def train_config_from(args: argparse.Namespace, model: str, batch_size: int | None = None, **overrides):
    from cnnbench.config import MeasureConfig, PlacementConfig, TrainConfig

    measure = MeasureConfig(
        batch_size=batch_size if batch_size is not None else args.batch_size, num_batches=args.num_batches,
        warmup=args.warmup, display_every=args.display_every, duration=args.duration, min_steady_steps=args.min_steady_steps,
    )
    placement = PlacementConfig(device=args.device, precision=args.precision, channels_last=args.channels_last)
    cfg = TrainConfig(
        model=model, image_size=args.image_size, learning_rate=args.learning_rate, compile=args.compile,
        seed=args.seed, log_dir=getattr(args, "log_dir", None), results_dir=args.results_dir,
        measure=measure, placement=placement,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnbench", description="Training and inference benchmark for convolutional networks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the registered models with parameters and FLOPs")
    p.add_argument("--image-size", type=int, default=None)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="training benchmark for one model and batch size")
    p.add_argument("model", help="registered name or path to a JSON spec file")
    add_train_options(p)
    p.add_argument("--log-dir", default=None, help="checkpoint directory: saved at the end, resumed from if present (default log_<model>_<batch>)")
    p.add_argument("--results-dir", default="results_train", help="where the JSON-lines record and CSV tables go (default results_train)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-all", help="sweep models x batch sizes, one process per configuration, and build the results tables")
    p.add_argument("--models", default=None, help="comma-separated (default: googlenet,resnet50,resnet152,densenet121,synNet)")
    p.add_argument("--batch-sizes", default="16,32,64", help="comma-separated (default 16,32,64)")
    p.add_argument("--plan", choices=["auto", "original", "cpu"], default="auto",
                   help="auto: the original's 500 batches / 20 warm-up on a GPU, the bounded CPU plan on a CPU; "
                        "explicit --num-batches/--warmup/--duration override the plan")
    add_train_options(p)
    p.set_defaults(warmup=None, num_batches=None)  # None: the plan decides
    p.add_argument("--results-dir", default="results_train", help="moved aside to <dir>_<timestamp> if it exists (default results_train)")
    p.set_defaults(func=cmd_train_all)
    return parser


def cmd_models(args: argparse.Namespace) -> int:
    from cnnbench.models.registry import count_parameters, forward_flops, model_names, resolve_entry
    from cnnbench.reporting import console
    from rich.table import Table

    table = Table(title="cnnbench models (forward GFLOPs per image; a multiply-add counts as 2 FLOPs)")
    for column in ("model", "parameters", "GFLOPs", "input size", "preprocessing"):
        table.add_column(column)
    for name in model_names():
        entry = resolve_entry(name)
        size = args.image_size or entry.input_size
        with __import__("torch").device("meta"):
            params = count_parameters(entry.build(size))
        table.add_row(entry.name, f"{params:,}", f"{forward_flops(entry, size) / 1e9:.2f}", f"{size}x{size}", entry.preprocessing)
    console.print(table)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnbench import training

    record = training.run(train_config_from(args, args.model))
    return errors.EXIT_INTERRUPTED if record["status"] == "interrupted" else 0


def cmd_train_all(args: argparse.Namespace) -> int:
    from cnnbench import sweep

    return sweep.train_all(args)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's --help and its (one-line) usage errors
        return int(exc.code or 0)
    try:
        return args.func(args)
    except errors.CnnbenchError as exc:
        print(f"cnnbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cnnbench: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
