"""One typed configuration tree per command: every option's type, default, help and check live here.

The command line is generated from these dataclasses (cli.py reads their fields), so an option's default is
written once. `validate()` runs before any work starts and each error names the option to set. The
resolved tree is saved, flattened to dotted names, in every result record; a sweep writes each
child's command line back from its tree (`to_argv`), never from the parser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from cnnbench.core.errors import UsageError
from cnnbench.engines import table as engine_table

# Largest integer an option may take: torch and numpy hold sizes and seeds in 64-bit integers, and a
# batch of 2**31 images is already far beyond any device; bigger values are a typo, not a request.
MAX_INT = 2**31 - 1
MAX_DIST_TIMEOUT = 7 * 24 * 3600.0

SCENARIOS = ("offline", "single-stream", "multi-stream", "server")
# The built-in loop runs these two; the others need LoadGen (--loadgen).
BUILTIN_SCENARIOS = ("offline", "single-stream")
LOADGEN_MODES = ("performance", "accuracy")
# MLPerf's MultiStream query: 8 samples (LoadGen's mlperf.conf, *.MultiStream.samples_per_query = 8).
MULTI_STREAM_SAMPLES = 8
# The Server's defaults on a CPU, measured (benchmarks/loadgen_scenarios.py, issue 26): ResNet-50 int8 on ONNX
# Runtime, 2-core EPYC, at 80% of Offline under a 100 ms p99 bound, batches of at most 4 and a 5 ms wait were
# VALID (p99 87.9 ms) where 8 and 10 ms were on the edge (89.5 VALID, 99.9 INVALID) and 16 and 20-30 ms over it
# (loadgen_scenarios-20261207T214148Z, -20261207T214554Z): a CPU gains little from larger batches (5.2 ms an image
# at 8 against 5.0 at 16) and a query waits for the batch before its own.
SERVER_CPU_MAX_BATCH = 4
SERVER_CPU_WAIT_SHARE = 1 / 20  # of the latency bound; elsewhere a tenth
MEMORY_FORMATS = ("auto", "nchw", "nhwc")
# torch.compile's modes (torch.compile's documentation: "default", "reduce-overhead", "max-autotune",
# "max-autotune-no-cudagraphs"); a mode outside these fails only after the model is built.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PREPROCESS_PRESETS = ("torchvision", "torchvision-v2", "aimatrix")
DATA_FORMATS = ("tfrecord", "folder")
PLANS = ("auto", "original", "cpu", "quick")
# Issue 15: the original's framework as a second backend (tfbackend/); PyTorch's engines and TensorFlow's.
FRAMEWORKS = ("pytorch", "tensorflow")
INT8_ACTIVATIONS = ("auto", "u8", "s8")
# What `cnnbench profile` counts bytes at (tools/profile/layers.py, BYTES_PER_ELEMENT); --measure runs all but int8.
PROFILE_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
# The AI Matrix original's figures, each written here once: the models its sweeps run, in its tables' row order
# (train-all.sh, process_results.py); the batches it times per configuration and the warm-up steps before them
# (train-all.sh, nvcnn.py); the batches of its pressure test (train-all-pressure.sh).
ORIGINAL_MODELS = ("googlenet", "resnet50", "resnet152", "densenet121", "synNet")
ORIGINAL_NUM_BATCHES = 500
ORIGINAL_WARMUP = 20
PRESSURE_NUM_BATCHES = 2000


def option(default=None, help: str = "", *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           metavar: str | None = None, alias: tuple[str, object] | None = None, positional: bool = False,
           show_default: bool = True, nargs: str | None = None):
    """A config field that is also a command-line option.

    flag: the option's spelling when it is not --field-name; alias: (flag, value) another flag that
    sets the same field to a fixed value (--channels-last sets memory_format to nhwc); nargs: argparse's,
    for a positional that takes several values (`cnnbench profile MODEL...`).
    """
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "alias": alias,
            "positional": positional, "show_default": show_default, "nargs": nargs}
    return field(default=default, metadata=meta)


def same_as(cls: type, name: str, *, default=dataclasses.MISSING, when: str = "", help: str | None = None):
    """The option `name` as `cls` declares it (its default, help, choices and alias), for a command that has the
    same option at its own top level: device, precision, memory format, warm-up and seed are declared once
    (PlacementConfig, MeasureConfig, RunConfig) and reused, and each keeps its flat path in the records of the
    commands that reuse it (config.device, config.seed, ...). `default`: the command's own where it differs
    (max-batch warms up 1 step, not 20); `when`: a prefix saying when the option applies; `help`: the command's
    own wording where the meaning shifts (data convert writes the label offset that training subtracts)."""
    declared = cls.__dataclass_fields__[name]
    meta = {**declared.metadata, "help": when + (declared.metadata["help"] if help is None else help)}
    return field(default=declared.default if default is dataclasses.MISSING else default, metadata=meta)


@dataclass
class MeasureConfig:
    batch_size: int = option(64, "images per step")
    num_batches: int = option(ORIGINAL_NUM_BATCHES, f"steady-state steps to time, the original's {ORIGINAL_NUM_BATCHES}; "
                                                    "with --duration the upper bound")
    warmup: int = option(ORIGINAL_WARMUP, "steps before timing starts, excluded from the steady-state figures "
                             "(cuDNN autotuning, allocator growth, compilation)")
    display_every: int = option(100, "print a step line every N steps")
    duration: float | None = option(None, "stop after this many seconds of steady-state time (at least --min-steady-steps "
                                          "steps; --num-batches stays the upper bound)", metavar="SECONDS")
    min_steady_steps: int = option(3, "with --duration: at least this many steady steps")
    # Issue 26: a window that stops once its figure is known, not at a fixed time. The result line's +/- (the
    # original's standard error of per-step images/s) is what is judged, so the stop is visible in every record.
    stop_at_stderr: float | None = option(None, "with --duration: stop earlier, once the +/- of Images/sec (its "
                                                "standard error) is at most this percentage of the mean and "
                                                "--min-steady-seconds seconds have passed", metavar="PERCENT")
    min_steady_seconds: float = option(0.0, "with --stop-at-stderr: at least this many seconds of steady-state time",
                                 metavar="SECONDS")
    # Issue 12: power, energy, clocks and temperature sampled in a thread during the timed steps (telemetry.py).
    no_telemetry: bool = option(False, "do not sample power, energy, clocks and temperature during the timed steps")

    def validate(self) -> None:
        _int_at_least(self.batch_size, 1, "--batch-size")
        _int_at_least(self.num_batches, 1, "--num-batches")
        _int_at_least(self.display_every, 1, "--display-every")
        _int_at_least(self.min_steady_steps, 1, "--min-steady-steps")
        _int_at_least(self.warmup, 0, "--warmup")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration}")
        if self.stop_at_stderr is not None and not 0 < self.stop_at_stderr < 100:
            raise UsageError(f"--stop-at-stderr must be a percentage between 0 and 100, got {self.stop_at_stderr}")
        if not 0 <= self.min_steady_seconds < math.inf:
            raise UsageError(f"--min-steady-seconds must be a number of seconds, 0 or more, got {self.min_steady_seconds}")

    def window(self, duration: float | None) -> dict:
        """timing.measure's stopping arguments: `duration` (None: a fixed number of steps), the least steps, and
        the standard-error stop as a fraction."""
        target = None if self.stop_at_stderr is None else self.stop_at_stderr / 100
        return {"duration": duration, "min_steps": self.min_steady_steps, "stderr_target": target,
                "min_duration": self.min_steady_seconds}


@dataclass
class PlacementConfig:
    device: str = option("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    precision: str = option("fp32", f"fp32 | tf32 | fp16 | bf16 (| int8 for inference: {engine_table.int8_help()}); "
                                    "fp16/bf16: autocast mixed precision; tf32: CUDA only")
    memory_format: str = option("auto", "activation and weight layout; auto: channels-last (nhwc) where it is faster "
                                        "(CPUs, CUDA GPUs with tensor cores), nchw for the ONNX engines",
                                choices=MEMORY_FORMATS, alias=("--channels-last", "nhwc"))


@dataclass
class DataConfig:
    data_dir: str | None = option(None, "ImageNet-style TFRecord shards or image folders (train/, val/ or validation/); "
                                        "default: synthetic input")
    num_epochs: int | None = option(None, "with --data-dir: whole passes over the split instead of --num-batches")
    data_format: str | None = option(None, "tfrecord | folder; default: detected from the directory", choices=DATA_FORMATS)
    split: str | None = option(None, "default: train for training, validation for inference")
    label_offset: int = option(1, "subtracted from TFRecord labels (1: label 0 is ImageNet's background class)")
    workers: int | None = option(None, "data-loader worker processes; default: the usable cores")
    preprocess: str | None = option(None, "default: what the weights expect; aimatrix: the original's table "
                                          "(resize 256x256, crop 224, its scales)", choices=PREPROCESS_PRESETS)
    skip_corrupt: bool = option(False, "skip undecodable images (counted, excluded from accuracy)")
    # Training augmentation: RandomResizedCrop's smallest area fraction and the flip probability. None:
    # the model's own (a spec file's `training` section), else torchvision's ImageNet recipe, 0.08 and 0.5.
    min_crop_scale: float | None = option(None, "training: RandomResizedCrop's smallest area fraction; default: the spec "
                                                "file's training.min_crop_scale, else 0.08 (torchvision's recipe)")
    flip: float | None = option(None, "training: horizontal flip probability; default: the spec file's training.flip, "
                                      "else 0.5")

    def with_augmentation(self, model_min_crop_scale: float | None, model_flip: float | None) -> DataConfig:
        """The training augmentation that runs: the flag, else the model's own (a spec file's `training`
        section: ImageNet's flips and 8% crops are wrong for digits, text, medical images), else
        torchvision's ImageNet recipe (references/classification: RandomResizedCrop scale (0.08, 1), flip 0.5)."""
        def pick(flag, model, recipe):
            return flag if flag is not None else model if model is not None else recipe

        return dataclasses.replace(self, min_crop_scale=pick(self.min_crop_scale, model_min_crop_scale, 0.08),
                                   flip=pick(self.flip, model_flip, 0.5))

    def validate(self) -> None:
        if self.min_crop_scale is not None and not 0 < self.min_crop_scale <= 1:
            raise UsageError(f"--min-crop-scale must be in (0, 1], got {self.min_crop_scale}")
        if self.flip is not None and not 0 <= self.flip <= 1:
            raise UsageError(f"--flip must be a probability in [0, 1], got {self.flip}")
        if self.num_epochs is not None:
            _int_at_least(self.num_epochs, 1, "--num-epochs")
            if self.data_dir is None:
                raise UsageError("--num-epochs needs --data-dir (synthetic input has no epochs); use --num-batches")
        if self.workers is not None:
            _int_at_least(self.workers, 0, "--workers")


@dataclass
class RunConfig:
    """What every benchmark run has: a model, an input, a device, a way to measure, a place for results."""

    model: str = option("", "registered name (any case), torchvision classifier (resnet18, ...), timm:NAME, keras:NAME "
                            "(--framework tensorflow), path/to/file.py:FUNCTION, package.module:FUNCTION or a JSON "
                            "spec file", positional=True)
    framework: str = option("pytorch", "pytorch | tensorflow (pip install 'cnnbench[tensorflow]'): the same workloads, "
                                       "measured loop, statistics and tables on TensorFlow", choices=FRAMEWORKS)
    image_size: int | None = option(None, "input height and width; default: the model's (224)")
    seed: int = option(0, "seed of weights, synthetic input and shuffling")
    log_dir: str | None = option(None, "checkpoint directory; default log_<model>_<batch>, as the original's scripts")
    results_dir: str = option("results", "where the JSON-lines record and CSV tables go")
    # Set by a sweep's --repeat N on each of a configuration's N processes (1..N); recorded as `repeat`.
    repeat: int | None = option(None, "which of several repeated processes of one configuration this run is (set by "
                                      "train-all/infer-all --repeat; recorded as `repeat`)", flag="--repeat-index",
                                metavar="K")
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        if not self.model:
            raise UsageError("no model given; name one (see `cnnbench models`) or a JSON spec file")
        self.measure.validate()
        self.data.validate()
        if self.image_size is not None:
            _int_at_least(self.image_size, 1, "--image-size")
        if self.repeat is not None:
            _int_at_least(self.repeat, 1, "--repeat-index")
        if self.framework == "tensorflow" and self.placement.memory_format == "nchw":
            raise UsageError("--framework tensorflow runs channels-last (NHWC), TensorFlow's native layout on CPUs; "
                             "drop --memory-format nchw")


@dataclass
class TrainConfig(RunConfig):
    log_dir: str | None = option(None, "checkpoint directory: saved at the end (unless --no-checkpoint), resumed from "
                                       "with --resume; default log_<model>_<batch>")
    results_dir: str = option("results_train", "where the JSON-lines record and CSV tables go")
    learning_rate: float | None = option(None, "override the per-model learning rate")
    compile: bool = option(False, "torch.compile the model (with --framework tensorflow: XLA, jit_compile=True); "
                                  "compilation happens in warm-up and is reported apart")
    eval_at_end: bool = option(False, "with --data-dir: top-1/top-5 on the validation split after training")
    # The original's NUM_ACCELERATORS; under torchrun, torchrun's --nproc-per-node decides instead.
    num_accelerators: int = option(1, "data-parallel processes on this machine, one per GPU (gloo processes on a CPU); "
                                      "--batch-size is per process", metavar="N")
    dist_timeout: float = option(60.0, "seconds a collective waits for the other ranks before the job fails",
                                 metavar="SECONDS")
    # Issue 24: a rerun into the same log dir measures what the first run did, unless resuming is asked for.
    resume: bool = option(False, "continue from the checkpoint in --log-dir (its weights, optimizer state and step "
                                 "count; the learning-rate schedule spans this run's own steps); without it an existing "
                                 "checkpoint is not read, and is overwritten at the end")
    no_checkpoint: bool = option(False, "write nothing to --log-dir (a run that only measures)")

    def validate(self) -> None:
        super().validate()
        _int_at_least(self.num_accelerators, 1, "--num-accelerators")
        # A week: far beyond any collective's legitimate wait, and what datetime.timedelta holds with room to spare.
        if not 0 < self.dist_timeout <= MAX_DIST_TIMEOUT:
            raise UsageError(f"--dist-timeout must be a number of seconds in (0, {MAX_DIST_TIMEOUT}], got {self.dist_timeout}")
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise UsageError(f"--learning-rate must be a positive finite number, got {self.learning_rate}")
        if self.eval_at_end and self.data.data_dir is None:
            raise UsageError("--eval-at-end needs --data-dir (a validation split to evaluate on)")
        if self.compile and self.measure.warmup < 1:
            raise UsageError("--compile needs --warmup 1 or more, so that compilation stays out of the steady-state figures")


@dataclass
class LoadGenConfig:
    """`cnnbench infer --loadgen`: MLCommons LoadGen issues the queries and judges the run (loadgen.py).
    Durations, query counts and the latency bound default to MLPerf's, read from LoadGen's own mlperf.conf."""

    enabled: bool = option(False, "measure through MLCommons LoadGen (pip install 'cnnbench[loadgen]') under MLPerf's "
                                  "rules; --scenario offline | single-stream | multi-stream | server", flag="--loadgen")
    mode: str = option("performance", "performance | accuracy (needs --data-dir: top-1/top-5 from LoadGen's accuracy "
                                      "log, checked against plain inference)", flag="--loadgen-mode", choices=LOADGEN_MODES)
    target_qps: float | None = option(None, "server: Poisson arrivals at this many queries (one image each) per second",
                                      flag="--target-qps")
    # MLPerf's ResNet-50 Server bound (mlperf.conf: resnet50.Server.target_latency = 15, in ms).
    latency_bound_ms: float = option(15.0, "server: the 99th-percentile latency bound (MLPerf's for ResNet-50)",
                                     flag="--latency-bound-ms")
    max_batch: int | None = option(None, "server: the largest dynamic batch (the engine's batch); default --batch-size, "
                                         f"at most {SERVER_CPU_MAX_BATCH} on a CPU",
                                   flag="--server-max-batch")
    max_wait_ms: float | None = option(None, "server: longest wait for a batch to fill, from its oldest query's arrival; "
                                             "default a tenth of --latency-bound-ms, a twentieth on a CPU",
                                       flag="--server-max-wait-ms")
    workers: int = option(1, "offline and server: worker threads taking batches from the queue (on CUDA each on its "
                             "own stream)", flag="--server-workers")
    find_peak_qps: bool = option(False, "server: search for the highest --target-qps whose run is VALID (bracketing, "
                                        "then bisection); prints each probe", flag="--find-peak-qps")
    peak_probes: int = option(10, "with --find-peak-qps: at most this many LoadGen runs", flag="--peak-probes")
    min_duration: float | None = option(None, "shorten the run to this many seconds (MLPerf's 600 otherwise); the record "
                                              "then says it is not MLPerf-compliant", flag="--min-duration",
                                        metavar="SECONDS")
    min_queries: int | None = option(None, "shorten the run to this many queries (MLPerf's otherwise: offline 24576 "
                                           "samples, multi-stream 662, single-stream and server 100)",
                                     flag="--min-queries")
    samples: int | None = option(None, "images in LoadGen's sample library; default 1024 synthetic ones (MLPerf's "
                                       "performance sample count for ResNet-50), with --data-dir every image of the split",
                                 flag="--loadgen-samples")

    def validate(self, scenario: str, data_dir: str | None) -> None:
        if not self.enabled:
            given = [flag_of(f) for f in dataclasses.fields(self) if getattr(self, f.name) != field_default(f)]
            if given:
                raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to LoadGen runs; add --loadgen")
            if scenario not in BUILTIN_SCENARIOS:
                raise UsageError(f"--scenario {scenario} runs through MLCommons LoadGen; add --loadgen "
                                 f"(the built-in loop runs {' and '.join(BUILTIN_SCENARIOS)})")
            return
        server = scenario == "server"
        for value, flag in ((self.target_qps, "--target-qps"), (self.max_batch, "--server-max-batch"),
                            (self.max_wait_ms, "--server-max-wait-ms"), (self.find_peak_qps or None, "--find-peak-qps")):
            if value is not None and not server:
                raise UsageError(f"{flag} applies to --scenario server, not {scenario}")
        if server and self.target_qps is None and not self.find_peak_qps:
            raise UsageError("--scenario server needs --target-qps QPS (or --find-peak-qps to search for it)")
        for value, flag in ((self.target_qps, "--target-qps"), (self.latency_bound_ms, "--latency-bound-ms"),
                            (self.min_duration, "--min-duration")):
            if value is not None and not 0 < value < math.inf:
                raise UsageError(f"{flag} must be a positive number, got {value}")
        if self.max_wait_ms is not None and not 0 <= self.max_wait_ms < math.inf:
            raise UsageError(f"--server-max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        for value, flag in ((self.max_batch, "--server-max-batch"), (self.min_queries, "--min-queries"),
                            (self.samples, "--loadgen-samples"), (self.workers, "--server-workers"),
                            (self.peak_probes, "--peak-probes")):
            if value is not None:
                _int_at_least(value, 1, flag)
        if self.mode == "accuracy" and data_dir is None:
            raise UsageError("--loadgen-mode accuracy needs --data-dir (labelled images to count top-1/top-5 on)")
        if self.mode == "accuracy" and self.find_peak_qps:
            raise UsageError("--find-peak-qps searches in performance mode; drop --loadgen-mode accuracy")


@dataclass
class InferConfig(RunConfig):
    log_dir: str | None = option(None, "where the training checkpoint is read from; default log_<model>_<batch>")
    results_dir: str = option("results_infer", "where the JSON-lines record and CSV tables go")
    engine: str = option("eager", engine_table.engine_help())
    compile_mode: str | None = option(None, "torch.compile mode; default max-autotune on CUDA, max-autotune-no-cudagraphs "
                                            "on CPU", choices=COMPILE_MODES)
    scenario: str = option("offline", "offline (back-to-back batches) | single-stream (batch 1, one query at a time; "
                                      "headline p90 latency); with --loadgen also multi-stream (8 images a query, p99) "
                                      "and server (Poisson arrivals, dynamic batching)", choices=SCENARIOS)
    weights: str | None = option(None, "a state_dict or checkpoint file (torchvision's published files load as they are)")
    pretrained: bool = option(False, "torchvision's ImageNet weights (cached under TORCH_HOME)")
    random_weights: bool = option(False, "no weights: a pure speed run")
    calib_batches: int = option(10, "int8 calibration batches (the original's 10)")
    # u8: uint8 activations (U8S8), the form x86's int8 dot-product instructions take; s8: symmetric int8
    # (S8S8), the only form TensorRT's explicit quantisation takes (engines.quantize_int8).
    int8_activations: str = option("auto", "int8 activation type: auto (u8 on the CPU, s8 on CUDA), u8 or s8",
                                   choices=INT8_ACTIVATIONS)
    guard_batches: int = option(4, "batches compared against eager fp32")
    cache_path: str | None = option(None, "keep exported / quantised / compiled artefacts here and reuse them")
    # ONNX Runtime's intra-op threads spin-wait for work between operators by default. Kept on: turning it off to
    # leave the cores to LoadGen's issue thread and the batcher raised the Server's p99 from 89.5 to 134 ms at 80%
    # of Offline (benchmarks/results/loadgen_scenarios-20261207T214148Z.txt; issue 26).
    intra_op_spinning: str = option("on", "onnxruntime: its intra-op threads spin-wait between operators (ONNX Runtime's "
                                          "default, on) or sleep (off)", choices=("on", "off"))
    intra_op_threads: int = option(0, "onnxruntime: threads of one run's operators (0: ONNX Runtime's default, one per "
                                      "core); with several --server-workers, cores / workers keeps them off each other")
    loadgen: LoadGenConfig = field(default_factory=LoadGenConfig)

    @property
    def serving(self) -> bool:
        """LoadGen's Server: queries arrive one by one and are batched as they come (tools/batching.py)."""
        return self.loadgen.enabled and self.scenario == "server"

    def engine_batch(self, device_type: str) -> int:
        """The batch the engine is built for: a query's images in single- and multi-stream (MLPerf: one
        query at a time), the largest dynamic batch in server (SERVER_CPU_MAX_BATCH at most on a CPU unless
        --server-max-batch says), --batch-size otherwise."""
        if self.scenario == "single-stream":
            return 1
        if self.scenario == "multi-stream":
            return MULTI_STREAM_SAMPLES
        if self.scenario == "server" and self.loadgen.max_batch:
            return self.loadgen.max_batch
        if self.scenario == "server" and device_type == "cpu":
            return min(self.measure.batch_size, SERVER_CPU_MAX_BATCH)
        return self.measure.batch_size

    def validate(self) -> None:
        super().validate()
        self.loadgen.validate(self.scenario, self.data.data_dir)
        self.validate_framework()
        _int_at_least(self.calib_batches, 1, "--calib-batches")
        _int_at_least(self.guard_batches, 0, "--guard-batches")
        for flag, given in (("--intra-op-spinning", self.intra_op_spinning != "on"), ("--intra-op-threads", self.intra_op_threads)):
            if given and self.engine != "onnxruntime":
                raise UsageError(f"{flag} applies to --engine onnxruntime, not {self.engine}")
        _int_at_least(self.intra_op_threads, 0, "--intra-op-threads")
        chosen = [flag for flag, on in (("--weights", self.weights), ("--pretrained", self.pretrained),
                                        ("--random-weights", self.random_weights)) if on]
        if len(chosen) > 1:
            raise UsageError(f"{' and '.join(chosen)} name different weights; give one of them")

    def validate_framework(self) -> None:
        """Engines belong to a framework; TensorFlow's runs start from random weights or its own checkpoint."""
        engine_table.find(self.framework, self.engine)  # an engine of another framework, or none: one line
        if self.framework == "pytorch":
            return
        if self.compile_mode is not None:
            raise UsageError("--compile-mode is torch.compile's; TensorFlow's compile engine is XLA, with no modes")
        for given, flag in ((self.weights, "--weights"), (self.pretrained, "--pretrained")):
            if given:
                raise UsageError(f"{flag} runs with --framework pytorch only; TensorFlow starts from its own training "
                                 "checkpoint in --log-dir or --random-weights")


@dataclass
class SweepConfig:
    """What a sweep adds to the options of the runs it starts."""

    models: str | None = option(None, "comma-separated, any model `cnnbench train` takes; default: "
                                      f"{','.join(ORIGINAL_MODELS)}")
    frameworks: str | None = option(None, "comma-separated frameworks to sweep, e.g. pytorch,tensorflow (one pair of "
                                          "tables each, in one results folder); default: --framework's")
    batch_sizes: str = option("16,32,64", "comma-separated")
    plan: str = option("auto", f"auto: the original's {ORIGINAL_NUM_BATCHES} batches after {ORIGINAL_WARMUP} warm-up steps on "
                               "a GPU, a bounded plan on a CPU; "
                               "quick: batch 16 only, a few steady seconds per configuration; explicit "
                               "--num-batches/--warmup/--duration override the plan", choices=PLANS)
    quick: bool = option(False, "the same as --plan quick (./run.sh --quick)")
    time_budget: float | None = option(None, "bound the whole sweep to about this many seconds: the steady time is spread "
                                             "over the configurations, each keeping 1 warm-up and 2 steady steps",
                                       metavar="SECONDS")
    # Issue 24: sweeps that resume, split over a cluster, repeat, and tell CI when a configuration failed.
    dry_run: bool = option(False, "print the plan (every configuration, its estimate and its exact command line) and "
                                  "exit: nothing runs, nothing is written, no folder is moved aside")
    resume: bool = option(False, "skip each configuration whose record in --results-dir ended ok with the same "
                                 "configuration, run the rest; nothing is moved aside")
    shard: str | None = option(None, "run the K-th of N disjoint slices of the configurations (every N-th from the "
                                     "K-th), into the same --results-dir, never moving it aside: N shards together run "
                                     "each configuration once (a SLURM job array: --shard $SLURM_ARRAY_TASK_ID/N)",
                               metavar="K/N")
    repeat: int = option(1, "run each configuration in this many separate processes; the tables and `cnnbench compare` "
                            "then use the spread across processes", metavar="N")
    strict: bool = option(False, "exit 4 when any configuration failed (default: 0 once the sweep ran to its end)")

    def validate(self) -> None:
        if self.time_budget is not None and not 0 < self.time_budget < math.inf:
            raise UsageError(f"--time-budget must be a positive number of seconds, got {self.time_budget}")
        _int_at_least(self.repeat, 1, "--repeat")
        self.shard_slice()

    def shard_slice(self) -> tuple[int, int]:
        """--shard K/N as (K, N), 1 <= K <= N; (1, 1) without --shard."""
        if self.shard is None:
            return 1, 1
        parts = str(self.shard).split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
            raise UsageError(f"--shard {self.shard!r}: give K/N with 1 <= K <= N, e.g. --shard 2/4 for the second of 4 slices")
        return int(parts[0]), int(parts[1])


@dataclass
class TrainSweepConfig(SweepConfig):
    num_accelerators: str = option("1", "comma-separated process counts to sweep, e.g. 1,2,4; a scaling-efficiency "
                                        "table compares each with 1", metavar="N[,N...]")


@dataclass
class InferSweepConfig(SweepConfig):
    engines: str | None = option(None, "comma-separated engines; optimized: the device's optimized engine as the "
                                       "original's --use_trt chose it, the first installed of "
                                       f"({engine_table.optimized_help()}); default: eager fp32 and the device's fastest "
                                       f"engines at fp32 and reduced precision ({engine_table.default_pairs_help()}; "
                                       "those not installed left out)")
    precisions: str | None = option(None, "comma-separated precisions, crossed with --engines (impossible pairs are "
                                          "skipped); default: see --engines")
    # Issue 26: speed does not depend on which trained weights run, and one set for every batch size lets one
    # export, one int8 calibration and one engine serve them all (engines/table.shares_builds).
    weights_batch: str = option("auto", "which training checkpoint every batch size reads: auto: one per model, "
                                        "log_<model>_<B> of the first B of --batch-sizes that holds one; each: "
                                        "log_<model>_<batch> per batch size (the original's infer-all.sh); B: "
                                        "log_<model>_<B>; --log-dir, --weights, --pretrained and --random-weights "
                                        "take precedence", metavar="auto|each|B")

    def validate(self) -> None:
        super().validate()
        if self.weights_batch not in ("auto", "each") and not (str(self.weights_batch).isdigit()
                                                              and int(self.weights_batch) >= 1):
            raise UsageError(f"--weights-batch {self.weights_batch!r}: give auto, each or a batch size such as 64")


@dataclass
class ProfileConfig:
    """`cnnbench profile MODEL...`: each model's per-layer workload (tools/profile/), written as a profile file."""

    models: tuple[str, ...] = option((), "registered names (any case), torchvision classification models (resnet18, "
                                         "mobilenet_v3_large, ...), JSON spec files, or saved profiles (shown again)",
                                     positional=True, nargs="+", metavar="MODEL")
    image_size: int | None = option(None, "input height and width; default: each model's own (224; inception_v3 299)")
    batch_size: int = option(16, "images per step: FLOPs and bytes are counted for the batch (activations grow with "
                                 "it, weights do not), and shown per image where it says so")
    precision: str = option("fp32", "bytes per value: fp32 and tf32 4, fp16 and bf16 2, int8 1; with --measure the "
                                    "precision that runs (fp16/bf16 autocast, tf32 CUDA only)", choices=PROFILE_PRECISIONS)
    out: str | None = option(None, "the profile file; default profile_<model>.json; with several models (or an existing "
                                   "folder) a folder for profile_<model>.json", metavar="PATH")
    measure: bool = option(False, "also time each operation type on this device, forward and backward (torch.profiler)")
    device: str = same_as(PlacementConfig, "device", when="with --measure: ")
    warmup: int = same_as(MeasureConfig, "warmup", default=2, when="with --measure: ")
    steps: int = option(3, "with --measure: profiled training steps (forward and backward)")

    def validate(self) -> None:
        if not self.models:
            raise UsageError("no model given; name one or more: see `cnnbench models`, any torchvision classification "
                             "model, a JSON spec file or a saved profile")
        if self.image_size is not None:
            _int_at_least(self.image_size, 1, "--image-size")
        _int_at_least(self.batch_size, 1, "--batch-size")
        _int_at_least(self.warmup, 0, "--warmup")
        _int_at_least(self.steps, 1, "--steps")
        if self.precision not in PROFILE_PRECISIONS:
            raise UsageError(f"unknown --precision {self.precision!r}; use one of: {', '.join(PROFILE_PRECISIONS)}")
        if self.measure and self.precision == "int8":
            raise UsageError("--measure runs fp32, tf32, fp16 or bf16 (eager PyTorch has no int8 training step); "
                             "drop --measure to count int8's bytes")


@dataclass
class SynthConfig:
    """`cnnbench synth`: a synthetic network (a spec file) matching a weighted mix of models (synth.py)."""

    target: str | None = option(None, "the mix: comma-separated MODEL[:WEIGHT] (registered or torchvision models, spec "
                                      "files, saved profiles); weights are shares of the fleet's time, default equal",
                                metavar="MODEL[:WEIGHT],...")
    out: str = option("synthetic.json", "the spec file written", metavar="PATH")
    seed: int = option(0, "seed of the layer sampling: the same seed and targets give the same spec")
    image_size: int = option(224, "input height and width the mix is profiled at and the network is made for (and "
                                  "with --calibrate measured at)")
    gflops: float | None = option(None, "FLOP budget per image (GFLOPs): a shorter benchmark of the same character, "
                                        "fewer layers of the same widths; default: the mix's own FLOPs")
    layers: int | None = option(None, "convolutions in the network; default: as many as carry the budget at the mix's "
                                      "own layer sizes")
    batch_size: int = option(16, "images per step the arithmetic intensity is counted at (weights read once per batch), "
                                 "and with --calibrate measured at")
    precision: str = option("fp32", "bytes per value the arithmetic intensity is counted at; with --calibrate the "
                                    "precision measured (fp32, tf32 on CUDA, fp16, bf16 autocast)",
                            choices=PROFILE_PRECISIONS)
    name: str | None = option(None, "the network's name (records and tables); default: the file's stem")
    small_budget: str = option("batch", "with --gflops below the mix's: batch = the mix's layer sizes, run at "
                                        "synth.batch_scale x the batch; wider = fewer, wider layers so the framework "
                                        "overhead keeps the targets' share at their batch size (may miss the motif "
                                        "goals)", choices=("batch", "wider"))
    calibrate: bool = option(False, "measure the time shares per layer kind (conv, batch norm, activation, pool, add, "
                                    "concat, gate) of the targets and the proxy on --device (eager training steps at "
                                    "--precision, --batch-size, --image-size) and adjust the proxy until they match")
    calibrate_rounds: int = option(4, "with --calibrate: at most this many adjust-and-measure rounds")
    calibrate_tolerance: float = option(0.05, "with --calibrate: every kind's time share within this of the mix's "
                                              "(a fraction: 0.05 = 5 percentage points)")
    calibrate_steps: int = option(2, "with --calibrate: profiled training steps per measurement")
    calibrate_engine: str = option("eager", "with --calibrate: eager (PyTorch training steps, at --precision fp32, tf32, "
                                            "fp16 or bf16) or onnxruntime (inference on ONNX Runtime's CPU provider, "
                                            "its own profiler, at --precision fp32 or int8)",
                                   choices=("eager", "onnxruntime"))
    warmup: int = same_as(MeasureConfig, "warmup", default=1, when="with --calibrate: ")
    device: str = same_as(PlacementConfig, "device", when="with --calibrate: ")

    def validate(self) -> None:
        _int_at_least(self.image_size, 8, "--image-size")
        _int_at_least(self.batch_size, 1, "--batch-size")
        _int_at_least(self.seed, 0, "--seed")
        if self.layers is not None:
            _int_at_least(self.layers, 1, "--layers")
        if self.gflops is not None and not 0 < self.gflops < math.inf:
            raise UsageError(f"--gflops must be a positive number of GFLOPs per image, got {self.gflops}")
        if not self.out.endswith(".json"):
            raise UsageError(f"--out {self.out}: a spec file's name ends in .json (models are found by it)")
        _int_at_least(self.calibrate_rounds, 1, "--calibrate-rounds")
        _int_at_least(self.calibrate_steps, 1, "--calibrate-steps")
        _int_at_least(self.warmup, 0, "--warmup")
        if not 0 < self.calibrate_tolerance < 1:
            raise UsageError(f"--calibrate-tolerance is a share of a step's time between 0 and 1 (0.05: 5 percentage "
                             f"points), got {self.calibrate_tolerance}")


@dataclass
class SynthValidateConfig:
    """`cnnbench synth validate SPEC --target ...`: the proxy against the mix it stands for, timed on this
    device (synth_validation.py)."""

    spec: str = option("", "the synthetic network's spec file (from `cnnbench synth`)", positional=True)
    target: str | None = option(None, "the mix it stands for, as given to `cnnbench synth`: MODEL[:WEIGHT],... "
                                      "(models it can run: registered, torchvision or spec files)",
                                metavar="MODEL[:WEIGHT],...")
    image_size: int | None = option(None, "input height and width of every run; default: the spec's")
    batch_sizes: str = option("4,16", "comma-separated batch sizes; every configuration runs at each")
    configs: str | None = option(None, "comma-separated configurations, each train-PRECISION or ENGINE-PRECISION; "
                                       "default on a CPU train-fp32 and every installed engine at fp32 and int8 "
                                       "(eager, compile, onnxruntime, openvino), plus train-bf16 and the engine "
                                       "table's default bf16 pair where the CPU has native bf16 (the listing is "
                                       "printed); on CUDA train-fp32, train-bf16, eager-fp32, eager-tf32, "
                                       "eager-bf16, eager-fp16, compile-bf16")
    baseline: str = option("eager-fp32", "the configuration speed-ups are taken against (at the first batch size)")
    num_batches: int = option(10, "timed steps of each run")
    warmup: int = same_as(MeasureConfig, "warmup", default=3)
    device: str = same_as(PlacementConfig, "device")
    compile_mode: str | None = option(None, "torch.compile mode of the compile configurations; default: cnnbench infer's",
                                      choices=COMPILE_MODES)
    seed: int = same_as(RunConfig, "seed")
    results_dir: str = option("results_synth", "runs/ gets every run's record (as train and infer write them); "
                                               "validation.jsonl and validation.csv the comparison")
    reuse: bool = option(False, "reuse a run recorded in --results-dir by an earlier validation whose whole configuration "
                                "matches, instead of running it again")
    synnet: bool = option(False, "also time AI Matrix's synNet and judge it against the same target runs, beside the "
                                 "proxy (made for the equal mix of densenet121, googlenet, resnet152, resnet50)")
    proxy_batch_scale: int | None = option(None, "run the proxy at this multiple of each batch size; default: its "
                                                 "spec's synth.batch_scale (a smaller --gflops budget's: a step does a "
                                                 "target step's FLOPs), 1 without one")

    def validate(self) -> None:
        if not self.spec:
            raise UsageError("no spec file given: `cnnbench synth validate SPEC.json --target MODEL[:WEIGHT],...`")
        if self.image_size is not None:
            _int_at_least(self.image_size, 8, "--image-size")
        _int_at_least(self.num_batches, 1, "--num-batches")
        _int_at_least(self.warmup, 1, "--warmup")
        _int_at_least(self.seed, 0, "--seed")
        if self.proxy_batch_scale is not None:
            _int_at_least(self.proxy_batch_scale, 1, "--proxy-batch-scale")


# --- Issue 12: `cnnbench max-batch` and `cnnbench soak` (maxbatch.py, soak.py) ---------------------------

MAX_BATCH_MODES = ("train", "infer")
# Below this batch a 5% tolerance is less than one image: the search is exact there (issue 23).
MAX_BATCH_EXACT_BELOW = 32


@dataclass
class MaxBatchConfig:
    """`cnnbench max-batch MODEL`: the largest batch that runs, each probe in its own process (maxbatch.py)."""

    model: str = same_as(RunConfig, "model")
    mode: str = option("train", "train: training steps; infer: inference batches", choices=MAX_BATCH_MODES)
    engine: str = option("eager", f"{' | '.join(engine_table.names('pytorch'))} (infer); train: eager or compile "
                                  "(torch.compile)")
    precision: str = same_as(PlacementConfig, "precision")
    device: str = same_as(PlacementConfig, "device")
    memory_format: str = same_as(PlacementConfig, "memory_format")
    image_size: int | None = same_as(RunConfig, "image_size")
    first_batch: int = option(1, "the first batch size tried; the search grows it until a probe fails")
    largest_batch: int = option(8192, "never probe above this batch size")
    tolerance: float = option(5.0, "stop when the largest batch that ran is within this many percent of the smallest that "
                                   f"did not (exact below batch {MAX_BATCH_EXACT_BELOW}); 0: exact bisection",
                              metavar="PERCENT")
    # One step: the allocator's peak is reached in the first.
    warmup: int = same_as(MeasureConfig, "warmup", default=1, when="each probe's: ")
    steps: int = option(2, "timed steps of each probe, for its images/s")
    memory_limit_gib: float | None = option(None, "bound each probe's resident host memory (its process tree), killed "
                                                  "and counted as out of memory above it; default: half the RAM, at "
                                                  "most 80 percent of what is available when the search starts",
                                            metavar="GIB")
    probe_timeout: float = option(1800.0, "seconds a probe may take; a slower one counts as failed", metavar="SECONDS")
    results_dir: str = option("results_max_batch", "where each probe's record, the search's record and the tables go")
    seed: int = same_as(RunConfig, "seed")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("no model given; name one (see `cnnbench models`) or a JSON spec file")
        _int_at_least(self.first_batch, 1, "--first-batch")
        _int_at_least(self.largest_batch, 1, "--largest-batch")
        if self.first_batch > self.largest_batch:
            raise UsageError(f"--first-batch {self.first_batch} is above --largest-batch {self.largest_batch}")
        _int_at_least(self.warmup, 0, "--warmup")
        _int_at_least(self.steps, 1, "--steps")
        if not 0 <= self.tolerance < 100:
            raise UsageError(f"--tolerance must be a percentage from 0 to below 100, got {self.tolerance}")
        if self.memory_limit_gib is not None and not 0 < self.memory_limit_gib < math.inf:
            raise UsageError(f"--memory-limit-gib must be a positive number of GiB, got {self.memory_limit_gib}")
        if not 0 < self.probe_timeout < math.inf:
            raise UsageError(f"--probe-timeout must be a positive number of seconds, got {self.probe_timeout}")
        if self.mode == "train" and self.engine not in ("eager", "compile"):
            raise UsageError(f"--engine {self.engine} runs inference only; training takes eager or compile (or --mode infer)")


@dataclass
class SoakMeasureConfig(MeasureConfig):
    num_batches: int | None = option(None, f"steady-state steps: default the original pressure test's {PRESSURE_NUM_BATCHES:,}; with "
                                           "--duration as many as the time allows")


@dataclass
class SoakConfig(TrainConfig):
    """`cnnbench soak MODEL`: a long training run (the original's pressure test, batch 64 x 2,000 batches)
    with a verdict on sustained performance (soak.py)."""

    log_dir: str | None = option(None, "checkpoint directory; default log_pressure_<model>_<batch>")
    results_dir: str = option("results_train_pressure", "where the JSON-lines record and CSV tables go")
    measure: SoakMeasureConfig = field(default_factory=SoakMeasureConfig)
    drop_threshold: float = option(5.0, "flag the run when the last tenth of the steps runs this many percent slower "
                                        "(images/s) than the first tenth", metavar="PERCENT")

    def resolved(self) -> SoakConfig:
        """--num-batches left out: the original's 2,000, or no bound but --duration when that is given."""
        if self.measure.num_batches is not None:
            return self
        steps = MAX_INT if self.measure.duration is not None else PRESSURE_NUM_BATCHES
        return dataclasses.replace(self, measure=dataclasses.replace(self.measure, num_batches=steps))

    def validate(self) -> None:
        TrainConfig.validate(self.resolved())
        if not 0 < self.drop_threshold < 100:
            raise UsageError(f"--drop-threshold must be a percentage in (0, 100), got {self.drop_threshold}")


# --- Issue 13: reading results: `cnnbench results`, `report` and `compare` (store.py, report.py, compare.py) ---
COMPARE_FORMATS = ("markdown", "csv", "json")


@dataclass
class ResultsConfig:
    """`cnnbench results DIR...`: rebuild the tables of results folders from their records."""

    dirs: tuple[str, ...] = option((), "results folders (runs.jsonl inside; validation.jsonl too)", positional=True,
                                   nargs="+", metavar="DIR")


@dataclass
class ReportConfig:
    """`cnnbench report [DIR...]`: one self-contained HTML file of charts and tables (report.py)."""

    dirs: tuple[str, ...] = option((), "results folders or record files (runs.jsonl, validation.jsonl), searched "
                                       "recursively; default: results_train and results_infer where they exist",
                                   positional=True, nargs="*", metavar="DIR")
    out: str = option("report.html", "the HTML file written", metavar="PATH")
    title: str = option("cnnbench report", "the page's title")

    def validate(self) -> None:
        if not self.out.endswith((".html", ".htm")):
            raise UsageError(f"--out {self.out}: the report is an HTML file; give a name ending in .html")


@dataclass
class CompareConfig:
    """`cnnbench compare BASE NEW`: images/s of the configurations two runs share, with a noise-aware verdict."""

    base: str = option("", "the baseline: a results folder (searched recursively) or a record file", positional=True)
    new: str = option("", "the run compared with it, the same kinds of path", positional=True)
    threshold: float = option(0.03, "a change smaller than this fraction of the baseline is no change, whatever the noise")
    noise_factor: float = option(3.0, "a change must also exceed this many standard errors of the difference "
                                      "(sqrt(se_base^2 + se_new^2), each run's standard error of the mean images/s)")
    fail_below: float | None = option(None, "exit 1 when a configuration got slower beyond noise and threshold with a "
                                            "ratio new/base below this (e.g. 0.95), or failed in NEW only", metavar="RATIO")
    format: str = option("markdown", "output format", choices=COMPARE_FORMATS)

    def validate(self) -> None:
        if not 0 <= self.threshold < 1:
            raise UsageError(f"--threshold must be a fraction in [0, 1), got {self.threshold}")
        if not 0 <= self.noise_factor < math.inf:
            raise UsageError(f"--noise-factor must be a finite number of standard errors, 0 or more, got {self.noise_factor}")
        if self.fail_below is not None and not 0 < self.fail_below < math.inf:
            raise UsageError(f"--fail-below must be a positive ratio new/base such as 0.95, got {self.fail_below}")


# --- `cnnbench models` and `cnnbench data convert | sample | bench` ---------------------------------------
SAMPLE_FORMATS = ("png", "jpeg")
BENCH_SPLITS = ("train", "val")


@dataclass
class ModelsConfig:
    """`cnnbench models`: the registered models with parameters and FLOPs, and this machine's peaks."""

    image_size: int | None = same_as(RunConfig, "image_size")
    # Issue 24: a cached peak is the denominator of every later run's MFU; this measures it again now.
    remeasure_peaks: bool = option(False, "measure this machine's peaks again now, whatever the cache holds (cached "
                                          "only when the machine is quiet: core/efficiency.py)")

    def validate(self) -> None:
        if self.image_size is not None:
            _int_at_least(self.image_size, 1, "--image-size")


@dataclass
class DataConvertConfig:
    """`cnnbench data convert SRC DST`: image folders to ImageNet-style TFRecord shards (data/sample.py)."""

    src: str = option("", "folder holding train/ and/or val/ (or validation/) with one sub-folder per class", positional=True)
    dst: str = option("", "new or empty directory for train-*-of-* and validation-*-of-* shards", positional=True)
    shards: int = option(8, "training shards")
    validation_shards: int | None = option(None, "validation shards; default shards/8, at least 1")
    label_offset: int = same_as(DataConfig, "label_offset", help="stored label = class index + this (1: ImageNet's 1..1000, "
                                                                 "what training with --label-offset 1 reads)")
    skip_corrupt: bool = option(False, "leave out undecodable images instead of stopping")


@dataclass
class DataSampleConfig:
    """`cnnbench data sample DST`: a small real labelled dataset, scikit-learn's handwritten digits (data/sample.py)."""

    dst: str = option("", "new or empty directory", positional=True)
    tfrecord: bool = option(False, "write TFRecord shards instead of an image folder")
    image_size: int = option(64, "side of the written images in pixels")
    format: str = option("png", "image folder file format", choices=SAMPLE_FORMATS)
    max_per_class: int | None = option(None, "at most this many images per class and split")


@dataclass
class DataBenchConfig:
    """`cnnbench data bench --data-dir DIR`: decode + preprocess throughput of the input pipeline alone (data/bench.py)."""

    data_dir: str | None = option(None, "image folder or TFRecord directory (required)")
    workers: str | None = option(None, "comma-separated loader worker counts; default 1 and all usable cores")
    batch_size: int = same_as(MeasureConfig, "batch_size")
    image_size: int = option(224, "crop size")
    split: str = option("train", "the split read", choices=BENCH_SPLITS)
    num_batches: int = option(20, "timed batches per worker count")
    preset: str | None = option(None, "preprocessing: torchvision (default), torchvision-v2 or aimatrix",
                                choices=PREPROCESS_PRESETS)
    train_transform: bool = option(False, "time the training transform (random resized crop + flip)")
    label_offset: int = same_as(DataConfig, "label_offset")
    skip_corrupt: bool = option(False, "count and skip undecodable images")

    def validate(self) -> None:
        if self.data_dir is None:
            raise UsageError("cnnbench data bench needs --data-dir (an image folder or TFRecord directory)")


def _int_at_least(value: object, least: int, option_name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= MAX_INT:
        what = "an integer of at least 1" if least == 1 else f"{least} or more"
        raise UsageError(f"{option_name} must be {what}, got {value}")


def flatten(config: object, prefix: str = "config") -> dict[str, object]:
    """Dataclass tree -> {"config.measure.batch_size": 64, ...}: flat, stable names for records and CSV."""
    flat: dict[str, object] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def describe(config: object) -> list[str]:
    """Lines `name = value` for a full listing (a sweep log's head)."""
    return [f"{k.removeprefix('config.')} = {v}" for k, v in flatten(config).items()]


def field_default(f: dataclasses.Field) -> object:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def build(cls: type, given: dict[str, object], prefix: str = ""):
    """The tree of `cls` with the dotted names in `given` set (the options the user gave) and defaults elsewhere."""
    values = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            values[f.name] = build(f.default_factory, given, name + ".")
        elif name in given:
            values[f.name] = given[name]
    return cls(**values)


def to_argv(config: object) -> list[str]:
    """The command-line options that rebuild `config` (the positional model first): every field that
    differs from its default, so a new option passes through a sweep with no edit anywhere."""
    positional: list[str] = []
    options: list[str] = []
    for f, value in _leaves(config):
        if value == field_default(f):
            continue
        if f.metadata.get("positional"):
            positional.append(str(value))
        elif isinstance(value, bool):
            options.append(flag_of(f))
        else:
            options += [flag_of(f), str(value)]
    return positional + options


def _leaves(config: object):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value)
        else:
            yield f, value
