"""The errors a user can cause, each with the exit code the command line gives it.

A `UsageError` is a mistake in what was asked (unknown model, impossible option):
the CLI prints its one-line message and exits 2, never with a traceback.
`OutOfMemory` is distinct (exit 3) so that a sweep can record it and go on.
`EngineRefused` (exit 5) is an engine that cannot take the model (an export ONNX refuses, an int8 quantisation
that fails, an OpenVINO conversion that fails): one line names the engine, the model and the reason, so that a
sweep records the configuration as failed with it and goes on, and a script tells it from a typo (exit 2).
`RecordNotSaved` and `CheckpointNotSaved` are late failures of a run whose figures exist (exit 4):
their one line says where the data went instead, or which option to change.
"""

from __future__ import annotations

from pathlib import Path

EXIT_REGRESSION = 1  # cnnbench compare --fail-below: a configuration got slower beyond noise
EXIT_USAGE = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_RUN_FAILED = 4
EXIT_ENGINE_REFUSED = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (timeout, SLURM, Kubernetes)
EXIT_CRASH = 70  # an uncaught exception: a bug in cnnbench (sysexits.h EX_SOFTWARE, "internal software error")

# What each exit status means, for `cnnbench --help` and docs/exit-codes.md: CI tells a regression from a crash.
EXIT_CODES = (
    (0, "success (compare: no regression beyond noise)"),
    (EXIT_REGRESSION, "compare --fail-below: a configuration got slower beyond noise, or failed in NEW"),
    (EXIT_USAGE, "a mistake in what was asked: one line says what to change"),
    (EXIT_OUT_OF_MEMORY, "out of memory (the record says so; a sweep records it and goes on)"),
    (EXIT_RUN_FAILED, "the run failed late (its figures exist): the line says where the data went; "
                      "train-all/infer-all --strict: a configuration failed"),
    (EXIT_ENGINE_REFUSED, "the engine cannot take the model (export, conversion or int8 quantisation failed): the "
                          "line names the engine, the model and the reason; another engine may take it"),
    (EXIT_CRASH, "cnnbench crashed: a bug; the traceback is printed, please report it"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C, SIGINT) after recording what completed"),
    (EXIT_TERMINATED, "terminated (SIGTERM) after recording what completed"),
)


class CnnbenchError(Exception):
    exit_code = EXIT_RUN_FAILED


class UsageError(CnnbenchError):
    """What is wrong and what to do, in one line."""

    exit_code = EXIT_USAGE


class EngineRefused(UsageError):
    """An engine that cannot take a model: `step` is what failed (the ONNX export, the int8 quantisation, the
    OpenVINO conversion, ...), `cause` the library's own complaint. A UsageError (the request cannot be run as
    asked, and no traceback is printed) with its own exit code. The engine raises it without the model's name,
    which engines.build_engine adds (with_model)."""

    exit_code = EXIT_ENGINE_REFUSED

    def __init__(self, engine: str, step: str, cause: BaseException | str, model: str | None = None):
        self.engine, self.step, self.model = engine, step, model
        self.reason = cause if isinstance(cause, str) else one_line(cause)
        super().__init__(f"--engine {engine} cannot take {f'model {model}' if model else 'this model'}: {step} failed "
                         f"({self.reason}); nothing was measured; --engine eager runs any model PyTorch runs")

    def with_model(self, model: str) -> "EngineRefused":
        return EngineRefused(self.engine, self.step, self.reason, model)


class RecordNotSaved(CnnbenchError):
    """The run's record could not join the results folder; it went to `fallback` (None: nowhere, the
    record itself is then part of the message, so that it still reaches the terminal)."""

    def __init__(self, records_path: Path, fallback: Path | None, cause: BaseException, record_line: str = ""):
        self.records_path, self.fallback, self.cause = Path(records_path), fallback, cause
        where = (f"saved it to {fallback} instead; once the folder is writable, append it with "
                 f"`cat {fallback} >> {records_path}`" if fallback is not None
                 else f"no fallback file could be written either; the record: {record_line}")
        super().__init__(f"could not add the run's record to {records_path} ({one_line(cause)}); {where}")


class CheckpointNotSaved(CnnbenchError):
    def __init__(self, path: Path, cause: BaseException, option: str = "--log-dir"):
        self.path, self.cause = Path(path), cause
        super().__init__(f"cannot save the checkpoint {path} ({one_line(cause)}); "
                         f"free some space or give {option} a folder you can write to")


class OutOfMemory(CnnbenchError):
    """`hint` replaces the default advice when the caller knows better (see `out_of_memory`)."""

    exit_code = EXIT_OUT_OF_MEMORY

    def __init__(self, batch_size: int, detail: str = "", hint: str | None = None):
        self.batch_size = batch_size
        self.hint = hint or "try a smaller --batch-size"
        message = f"out of memory at batch size {batch_size}"
        if detail:
            message += f" ({detail})"
        super().__init__(f"{message}; {self.hint}")


def one_line(exc: BaseException) -> str:
    """An exception as `Type: first line`, short enough for a one-line message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError, the CPU allocator's failure, and TensorFlow's
    ResourceExhaustedError (by name: TensorFlow is optional and not imported here)."""
    import torch

    if type(exc).__name__ == "ResourceExhaustedError":
        return True

    if isinstance(exc, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower()
    )
