"""Command line: `cnnbench models | train | train-all | infer | infer-all | data`.

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


def add_measure_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    g.add_argument("--num-batches", type=int, default=500, help="steady-state steps to time (default 500, the original's)")
    g.add_argument("--warmup", type=int, default=20, help="steps before timing starts, excluded from steady-state figures (default 20)")
    g.add_argument("--display-every", type=int, default=100, help="print a step line every N steps (default 100)")
    g.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds of steady-state time (at least --min-steady-steps steps; --num-batches stays the upper bound)")
    g.add_argument("--min-steady-steps", type=int, default=3, help="with --duration: at least this many steady steps (default 3)")
    g.add_argument("--image-size", type=int, default=None, help="input height and width (default: the model's, 224)")
    g.add_argument("--seed", type=int, default=0)


def add_placement_options(p: argparse.ArgumentParser, precisions: tuple[str, ...]) -> None:
    g = p.add_argument_group("placement")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    g.add_argument("--precision", default="fp32", help=f"{' | '.join(precisions)} (fp16/bf16: autocast mixed precision; tf32: CUDA only)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("real data (default: synthetic)")
    g.add_argument("--data-dir", default=None, help="ImageNet-style TFRecord shards or image folders (train/, val/ or validation/)")
    g.add_argument("--num-epochs", type=int, default=None, help="with --data-dir: whole passes over the split instead of --num-batches")
    g.add_argument("--data-format", choices=["tfrecord", "folder"], default=None, help="default: detected from the directory")
    g.add_argument("--split", default=None, help="default: train for training, validation for inference")
    g.add_argument("--label-offset", type=int, default=1, help="subtracted from TFRecord labels (default 1: label 0 is ImageNet's background class)")
    g.add_argument("--workers", type=int, default=None, help="data-loader worker processes (default: the usable cores)")
    g.add_argument("--preprocess", choices=["torchvision", "torchvision-v2", "aimatrix"], default=None,
                   help="default: what the weights expect; aimatrix: the original's table (resize 256x256, crop 224, its scales)")
    g.add_argument("--skip-corrupt", action="store_true", help="skip undecodable images (counted, excluded from accuracy)")
    g.add_argument("--min-crop-scale", type=float, default=0.08, help="training: RandomResizedCrop's smallest area fraction (default 0.08, torchvision's recipe)")
    g.add_argument("--flip", type=float, default=0.5, help="training: horizontal flip probability (default 0.5)")


def add_train_options(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    from cnnbench.placement import TRAIN_PRECISIONS

    add_measure_options(p)
    add_placement_options(p, TRAIN_PRECISIONS)
    add_data_options(p)
    g = p.add_argument_group("training")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (compilation happens in warm-up and is reported apart)")
    g.add_argument("--learning-rate", type=float, default=None, help="override the per-model learning rate")
    g.add_argument("--eval-at-end", action="store_true", help="with --data-dir: top-1/top-5 on the validation split after training")
    g = p.add_argument_group("several accelerators (data-parallel, torch.distributed)")
    if sweep:
        g.add_argument("--num-accelerators", default="1", metavar="N[,N...]",
                       help="comma-separated process counts to sweep, e.g. 1,2,4 (default 1); a scaling-efficiency table compares each with 1")
    else:
        g.add_argument("--num-accelerators", type=int, default=1, metavar="N",
                       help="data-parallel processes on this machine, one per GPU (gloo processes on a CPU); --batch-size is per process "
                            "(default 1; under torchrun, its --nproc-per-node decides)")
    g.add_argument("--dist-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds a collective waits for the other ranks before the job fails (default 60)")


def add_infer_options(p: argparse.ArgumentParser) -> None:
    from cnnbench.engines import ENGINES
    from cnnbench.placement import PRECISIONS

    add_measure_options(p)
    add_placement_options(p, PRECISIONS)
    add_data_options(p)
    g = p.add_argument_group("inference")
    g.add_argument("--engine", default="eager", help=f"{' | '.join(ENGINES)} (default eager)")
    g.add_argument("--compile-mode", default=None, help="torch.compile mode (default max-autotune on CUDA, max-autotune-no-cudagraphs on CPU)")
    g.add_argument("--scenario", default="offline", help="offline (back-to-back batches) | single-stream (batch 1, one query at a time; headline p90 latency)")
    g.add_argument("--weights", default=None, help="a state_dict or checkpoint file (torchvision's published files load as they are)")
    g.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights (cached under TORCH_HOME)")
    g.add_argument("--random-weights", action="store_true", help="no weights: a pure speed run")
    g.add_argument("--calib-batches", type=int, default=10, help="int8 calibration batches (default 10, the original's)")
    g.add_argument("--guard-batches", type=int, default=4, help="batches compared against eager fp32 (default 4)")
    g.add_argument("--cache-path", default=None, help="keep exported / quantised / compiled artefacts here and reuse them")


def add_sweep_options(p: argparse.ArgumentParser, results_dir: str) -> None:
    p.add_argument("--models", default=None, help="comma-separated (default: googlenet,resnet50,resnet152,densenet121,synNet)")
    p.add_argument("--batch-sizes", default="16,32,64", help="comma-separated (default 16,32,64)")
    p.add_argument("--plan", choices=["auto", "original", "cpu"], default="auto",
                   help="auto: the original's 500 batches / 20 warm-up on a GPU, a bounded plan on a CPU; "
                        "explicit --num-batches/--warmup/--duration override the plan")
    p.add_argument("--results-dir", default=results_dir, help=f"moved aside to <dir>_<timestamp> if it exists (default {results_dir})")
    p.set_defaults(warmup=None, num_batches=None)  # None: the plan decides


def placement_from(args: argparse.Namespace):
    from cnnbench.placement import PRECISIONS, TRAIN_PRECISIONS, resolve_placement

    allowed = PRECISIONS if args.command.startswith("infer") else TRAIN_PRECISIONS
    return resolve_placement(args.device, args.precision, args.channels_last, allowed)


def config_from(kind: str, args: argparse.Namespace, model: str, overrides: dict | None = None):
    """The typed configuration of `cnnbench train|infer` from parsed options (plus a sweep's overrides)."""
    from cnnbench.config import DataConfig, InferConfig, MeasureConfig, PlacementConfig, TrainConfig

    o = {**vars(args), **(overrides or {})}
    measure = MeasureConfig(batch_size=o["batch_size"], num_batches=o["num_batches"], warmup=o["warmup"],
                            display_every=o["display_every"], duration=o["duration"], min_steady_steps=o["min_steady_steps"])
    placement = PlacementConfig(device=o["device"], precision=o["precision"], channels_last=o["channels_last"])
    data = DataConfig(data_dir=o["data_dir"], num_epochs=o["num_epochs"], data_format=o["data_format"], split=o["split"],
                      label_offset=o["label_offset"], workers=o["workers"], preprocess=o["preprocess"], skip_corrupt=o["skip_corrupt"],
                      min_crop_scale=o["min_crop_scale"], flip=o["flip"])
    common = dict(model=model, image_size=o["image_size"], seed=o["seed"], log_dir=o.get("log_dir"),
                  results_dir=o["results_dir"], measure=measure, placement=placement, data=data)
    if kind == "train":
        return TrainConfig(**common, learning_rate=o["learning_rate"], compile=o["compile"], eval_at_end=o["eval_at_end"],
                           num_accelerators=o["num_accelerators"], dist_timeout=o["dist_timeout"])
    return InferConfig(**common, engine=o["engine"], compile_mode=o["compile_mode"], scenario=o["scenario"],
                       weights=o["weights"], pretrained=o["pretrained"], random_weights=o["random_weights"],
                       calib_batches=o["calib_batches"], guard_batches=o["guard_batches"], cache_path=o["cache_path"])


def check_infer_config(cfg) -> None:
    """What a sweep can check before it starts: the engine/precision pair and that weights exist."""
    from pathlib import Path

    from cnnbench import checkpoints, weights
    from cnnbench.engines import check_engine
    from cnnbench.models.registry import resolve_entry
    from cnnbench.placement import PRECISIONS, resolve_placement

    placement = resolve_placement(cfg.placement.device, cfg.placement.precision, cfg.placement.channels_last, PRECISIONS)
    check_engine(cfg.engine, placement.precision, placement.device.type)
    if not (cfg.weights or cfg.pretrained or cfg.random_weights):
        entry = resolve_entry(cfg.model)
        log_dir = Path(cfg.log_dir) if cfg.log_dir else checkpoints.default_log_dir(entry.name, cfg.measure.batch_size)
        if not checkpoints.checkpoint_path(log_dir).exists():
            raise weights.missing(entry, log_dir)


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

    p = sub.add_parser("train-all", help="sweep models x batch sizes (x accelerator counts), one job per configuration, and build the results tables")
    add_train_options(p, sweep=True)
    add_sweep_options(p, "results_train")
    p.set_defaults(func=lambda args: _sweep("train", args))

    p = sub.add_parser("infer", help="inference benchmark for one model, batch size, engine and precision")
    p.add_argument("model", help="registered name or path to a JSON spec file")
    add_infer_options(p)
    p.add_argument("--log-dir", default=None, help="where the training checkpoint is read from (default log_<model>_<batch>)")
    p.add_argument("--results-dir", default="results_infer", help="where the JSON-lines record and CSV tables go (default results_infer)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("infer-all", help="sweep models x batch sizes x engines x precisions and build the results tables")
    add_infer_options(p)
    add_sweep_options(p, "results_infer")
    p.add_argument("--engines", default="eager", help="comma-separated engines (default eager)")
    p.add_argument("--precisions", default="fp32", help="comma-separated precisions (default fp32); impossible pairs are skipped")
    p.set_defaults(func=lambda args: _sweep("infer", args))

    from cnnbench.data.commands import add_data_commands

    add_data_commands(sub)
    return parser


def cmd_models(args: argparse.Namespace) -> int:
    import torch
    from rich.table import Table

    from cnnbench.models.registry import count_parameters, forward_flops, model_names, resolve_entry
    from cnnbench.reporting import console

    table = Table(title="cnnbench models (forward GFLOPs per image; a multiply-add counts as 2 FLOPs)")
    for column in ("model", "parameters", "GFLOPs", "input size", "preprocessing"):
        table.add_column(column)
    for name in model_names():
        entry = resolve_entry(name)
        size = args.image_size or entry.input_size
        with torch.device("meta"):
            params = count_parameters(entry.build(size))
        table.add_row(entry.name, f"{params:,}", f"{forward_flops(entry, size) / 1e9:.2f}", f"{size}x{size}", entry.preprocessing)
    console.print(table)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One process trains; under torchrun this process is one rank of a job; with --num-accelerators N
    (N > 1) this process launches the job's N workers, each running this same command."""
    from cnnbench import distributed, environment, training
    from cnnbench.reporting import say
    from cnnbench.sweep import child_argv

    cfg = config_from("train", args, args.model)
    if distributed.under_torchrun():
        world = distributed.current()
        with distributed.rank_errors(world):
            record = training.run(cfg)
    elif cfg.num_accelerators > 1:
        launched_at = environment.process_start_time()
        _, _, placement = training.resolve(cfg, distributed.planned(cfg.num_accelerators))
        say(f"Launching {cfg.num_accelerators} data-parallel processes on this machine with torchrun's agent "
            f"({'nccl' if placement.device.type == 'cuda' else 'gloo'}); rank 0 reports")
        return distributed.launch(child_argv("train", args, args.model, {}), cfg.num_accelerators, launched_at)
    else:
        record = training.run(cfg)
    return errors.EXIT_INTERRUPTED if record["status"] == "interrupted" else 0


def cmd_infer(args: argparse.Namespace) -> int:
    from cnnbench import inference

    record = inference.run(config_from("infer", args, args.model))
    return errors.EXIT_INTERRUPTED if record["status"] == "interrupted" else 0


def _sweep(kind: str, args: argparse.Namespace) -> int:
    from cnnbench import sweep

    return sweep.sweep(kind, args)


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
