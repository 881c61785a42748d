"""Command line: `cnnbench models | profile | synth [validate] | train | train-all | infer | infer-all | max-batch |
soak | soak-all | data | results | report | compare`.

Every option of every command is generated from the typed configuration tree in config.py (its fields'
types, defaults, help and choices) by options.py; this module adds no default of its own. Options the user
did not give are absent from the parse, so the tree's defaults apply and a sweep knows what was asked for
explicitly.

User mistakes end in one line and exit 2; out of memory exits 3; Ctrl-C exits 130 and SIGTERM 143,
each after the statistics of the completed steps are printed and recorded.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

import cnnbench
from cnnbench.core import config, errors
from cnnbench.core.options import add_config_options, given_options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(errors.EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnbench", description="Training and inference benchmark for convolutional networks.",
                     epilog="exit status:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in errors.EXIT_CODES),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cnnbench {cnnbench.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the registered models with parameters and FLOPs")
    add_config_options(p, config.ModelsConfig)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="per-layer workload profile of models: operation types, geometry, FLOPs, bytes, "
                                       "distributions; --measure adds time shares on this device")
    add_config_options(p, config.ProfileConfig)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("synth", help="generate a synthetic network matching a weighted mix of models (a spec file); "
                                     "`synth validate` times it against the mix")
    add_config_options(p, config.SynthConfig)
    p.set_defaults(func=cmd_synth)
    actions = p.add_subparsers(dest="synth_action", parser_class=_Parser)
    v = actions.add_parser("validate", help="time the proxy and its targets over engines, precisions and batch sizes; "
                                            "compare time per image, speed-ups and their ranks")
    add_config_options(v, config.SynthValidateConfig)
    v.set_defaults(func=cmd_synth_validate)

    p = sub.add_parser("train", help="training benchmark for one model and batch size")
    add_config_options(p, config.TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("infer", help="inference benchmark for one model, batch size, engine and precision")
    add_config_options(p, config.InferConfig)
    p.set_defaults(func=cmd_infer)

    for kind, run_cls, sweep_cls, what in (
        ("train", config.TrainConfig, config.TrainSweepConfig, "models x batch sizes (x accelerator counts)"),
        ("infer", config.InferConfig, config.InferSweepConfig, "models x batch sizes x engines x precisions"),
    ):
        p = sub.add_parser(f"{kind}-all", help=f"sweep {what}, one process per configuration, and build the results tables")
        add_config_options(p, run_cls, exclude=("model", "num_accelerators", "resume", "repeat"))  # the sweep's own
        add_config_options(p, sweep_cls, prefix="sweep.", target=p.add_argument_group("sweep"))
        p.set_defaults(func=lambda args, kind=kind, run_cls=run_cls, sweep_cls=sweep_cls: _sweep(kind, run_cls, sweep_cls, args))

    add_hardware_commands(sub)
    for name, cls, func, what in (
        ("results", config.ResultsConfig, cmd_results, "rebuild results.csv and runs.csv of results folders from their records"),
        ("report", config.ReportConfig, cmd_report, "one self-contained HTML file of charts and a table of every run"),
        ("compare", config.CompareConfig, cmd_compare, "compare two runs configuration by configuration, with a "
                                                       "noise-aware verdict and the environment's differences first"),
    ):
        p = sub.add_parser(name, help=what)
        add_config_options(p, cls)
        p.set_defaults(func=func)

    from cnnbench.data.commands import add_data_commands

    add_data_commands(sub)
    return parser


def add_hardware_commands(sub) -> None:
    """Issue 12: the largest batch that fits, and the pressure test (one run, and the sweep)."""
    p = sub.add_parser("max-batch", help="the largest batch that trains (or infers) without running out of memory, "
                                         "each probe in its own process, with images/s at every probe")
    add_config_options(p, config.MaxBatchConfig)
    p.set_defaults(func=cmd_max_batch)
    p = sub.add_parser("soak", help="the pressure test for one model: a long training run (batch "
                                    f"{config.MeasureConfig.batch_size} x {config.PRESSURE_NUM_BATCHES:,} batches, "
                                    "or --duration) and a verdict on whether performance held")
    add_config_options(p, config.SoakConfig)
    p.set_defaults(func=cmd_soak)
    p = sub.add_parser("soak-all", help="the original's pressure sweep: every model soaked, one process each, "
                                        "results_train_pressure/ tables and verdicts")
    add_config_options(p, config.SoakConfig, exclude=("model", "num_accelerators", "resume", "repeat"))
    add_config_options(p, config.TrainSweepConfig, prefix="sweep.", target=p.add_argument_group("sweep"))
    p.set_defaults(func=lambda args: _sweep("soak", config.SoakConfig, config.TrainSweepConfig, args))


def cmd_max_batch(args: argparse.Namespace) -> int:
    from cnnbench.tools import maxbatch

    return maxbatch.run(config.build(config.MaxBatchConfig, given_options(args)))


def cmd_soak(args: argparse.Namespace) -> int:
    from cnnbench.tools import soak

    return _run_training(config.build(config.SoakConfig, given_options(args)), soak.run)


def cmd_models(args: argparse.Namespace) -> int:
    import torch
    from rich.table import Table

    from cnnbench.models.registry import count_parameters, forward_flops, model_names, resolve_entry
    from cnnbench.core.terminal import console

    table = Table(title="cnnbench models (forward GFLOPs per image; a multiply-add counts as 2 FLOPs; a training "
                        "step counts 3 forwards)")
    for column in ("model", "parameters", "GFLOPs", "input size", "classes", "preprocessing", "train GFLOPs"):
        table.add_column(column)
    cfg = config.build(config.ModelsConfig, given_options(args))
    cfg.validate()
    for name in model_names():
        entry = resolve_entry(name)
        size = cfg.image_size or entry.input_size
        with torch.device("meta"):
            params = count_parameters(entry.build(size))
        flops = forward_flops(entry, size) / 1e9
        table.add_row(entry.name, f"{params:,}", f"{flops:.2f}", f"{size}x{size}", str(entry.num_classes),
                      entry.preprocessing, f"{3 * flops:.2f}")
    console.print(table)
    _peak_lines(cfg.remeasure_peaks)
    return 0


def _peak_lines(remeasure: bool = False) -> None:
    """This machine's peak per precision (efficiency.py: datasheet, or measured once and cached), the
    denominator of every run's MFU."""
    import torch

    from cnnbench.core import efficiency
    from cnnbench.core.terminal import say

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = ("fp32", "tf32", "fp16", "bf16", "int8") if device.type == "cuda" else ("fp32", "bf16", "int8")
    say(f"Peak of {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'this CPU'} "
        "(MFU = images/s x GFLOPs per image / peak; measured peaks are cached after their first measurement):")
    for precision in precisions:
        peak = efficiency.peak(device, precision, remeasure=remeasure)
        unit = "TOPS" if precision == "int8" else "TFLOP/s"
        say(f"  {precision}: " + (f"{peak.tflops:.4g} {unit} ({peak.source})" if peak.tflops else peak.source))


def cmd_profile(args: argparse.Namespace) -> int:
    from cnnbench.tools.profile import command

    return command.run(config.build(config.ProfileConfig, given_options(args)))


def cmd_synth(args: argparse.Namespace) -> int:
    from cnnbench.tools import synth

    return synth.run(config.build(config.SynthConfig, given_options(args)))


def cmd_synth_validate(args: argparse.Namespace) -> int:
    from cnnbench.tools import synth_validation

    return synth_validation.run(config.build(config.SynthValidateConfig, given_options(args)))


def cmd_results(args: argparse.Namespace) -> int:
    from cnnbench.core import store

    for folder in config.build(config.ResultsConfig, given_options(args)).dirs:
        written = store.rebuild(folder)
        print(f"{folder}: rebuilt {', '.join(p.name for p in written)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnbench.tools import report

    return report.run(config.build(config.ReportConfig, given_options(args)))


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnbench.tools import compare

    return compare.run(config.build(config.CompareConfig, given_options(args)))


def cmd_train(args: argparse.Namespace) -> int:
    """One process trains; under torchrun this process is one rank of a job; with --num-accelerators N
    (N > 1) this process launches the job's N workers, each running this same command."""
    from cnnbench.recipes import training

    cfg = config.build(config.TrainConfig, given_options(args))
    return _run_training(cfg, training.run)


def _run_training(cfg, run) -> int:
    """`cnnbench train` and `cnnbench soak`: this process trains with `run`, or launches the job's workers
    (which run the same command: launcher.launch; TensorFlow's replicas are threads of this process)."""
    from cnnbench import backends
    from cnnbench.backends.pytorch import distributed, launcher
    from cnnbench.core import environment
    from cnnbench.recipes import training
    from cnnbench.core.terminal import say

    if distributed.under_torchrun():
        world = distributed.current()
        with distributed.rank_errors(world):
            record = run(cfg)
    elif backends.launches_processes(cfg):
        launched_at = environment.process_start_time()
        device = training.preflight(cfg, distributed.planned(cfg.num_accelerators)).placement.device
        backend = distributed.backend_for(device)
        say(f"Launching {cfg.num_accelerators} data-parallel processes on this machine with torchrun's agent "
            f"({backend}); rank 0 reports")
        return launcher.launch(cfg, backend, launched_at)
    else:
        record = run(cfg)
    return exit_code(record)


def cmd_infer(args: argparse.Namespace) -> int:
    from cnnbench.recipes import inference
    from cnnbench.tools import loadgen

    cfg = config.build(config.InferConfig, given_options(args))
    return exit_code((loadgen.run if cfg.loadgen.enabled else inference.run)(cfg))


def exit_code(record: dict) -> int:
    """0, or the stop's code once the completed steps are recorded (a diverged run: its figures recorded, exit 4)."""
    return {"interrupted": errors.EXIT_INTERRUPTED, "terminated": errors.EXIT_TERMINATED,
            "diverged": errors.EXIT_RUN_FAILED}.get(record["status"], 0)


def _sweep(kind: str, run_cls: type, sweep_cls: type, args: argparse.Namespace) -> int:
    from cnnbench.recipes import sweep

    base = config.build(run_cls, given_options(args))
    settings = config.build(sweep_cls, given_options(args, "sweep."))
    explicit = set(given_options(args)) | {f"sweep.{name}" for name in given_options(args, "sweep.")}
    return sweep.sweep(kind, settings, base, explicit=explicit)


def _terminate(signum, frame):
    # SIGTERM (timeout, SLURM, Kubernetes) stops a run like Ctrl-C: after the current step, with the
    # completed steps printed and recorded (status "terminated").
    from cnnbench.core.timing import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's --help and its (one-line) usage errors
        return int(exc.code or 0)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except errors.CnnbenchError as exc:
        print(f"cnnbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from cnnbench.core.timing import Terminated

        terminated = isinstance(exc, Terminated)
        print(f"cnnbench: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return errors.EXIT_TERMINATED if terminated else errors.EXIT_INTERRUPTED
    except Exception:  # not a user's mistake (those are CnnbenchErrors): a bug, with its own exit status for CI
        traceback.print_exc()
        print(f"cnnbench: internal error (exit {errors.EXIT_CRASH}): this is a bug in cnnbench {cnnbench.__version__}, "
              "not in what you asked; please report the traceback above with the command line", file=sys.stderr)
        return errors.EXIT_CRASH
    finally:
        signal.signal(signal.SIGTERM, previous)
