"""The errors a user can cause, each with the exit code the command line gives it.

A `UsageError` is a mistake in what was asked (unknown model, impossible option):
the CLI prints its one-line message and exits 2, never with a traceback.
`OutOfMemory` is distinct (exit 3) so that a sweep can record it and go on.
"""

EXIT_USAGE = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_RUN_FAILED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class CnnbenchError(Exception):
    exit_code = EXIT_RUN_FAILED


class UsageError(CnnbenchError):
    """What is wrong and what to do, in one line."""

    exit_code = EXIT_USAGE


class OutOfMemory(CnnbenchError):
    exit_code = EXIT_OUT_OF_MEMORY

    def __init__(self, batch_size: int, detail: str = ""):
        self.batch_size = batch_size
        message = f"out of memory at batch size {batch_size}"
        if detail:
            message += f" ({detail})"
        super().__init__(message + "; try a smaller --batch-size")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and for the CPU allocator's failure."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError if hasattr(torch, "OutOfMemoryError") else torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower()
    )
