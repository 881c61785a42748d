"""Starting a data-parallel job from a plain process: `cnnbench train --num-accelerators N` runs
torchrun's own agent (torch.distributed.launcher.api, what the torchrun command runs) on this
machine with N workers, each `python -m cnnbench train` with the same options, and turns a failed
rank into one line and the job's exit code. What runs inside each worker is distributed.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import tempfile
import uuid
from typing import Iterator

from cnnbench import errors
from cnnbench.distributed import STARTED_AT_VARIABLE, planned, share_of_cores

EXIT_MEANINGS = {errors.EXIT_USAGE: "usage error", errors.EXIT_OUT_OF_MEMORY: "out of memory",
                 errors.EXIT_RUN_FAILED: "run failed", errors.EXIT_INTERRUPTED: "interrupted"}


class JobFailed(errors.CnnbenchError):
    """A launched job ended with a failed rank; the exit code is the rank's when it is one of ours."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launch(argv: list[str], count: int, launched_at: float) -> int:
    """Run `python -m cnnbench ARGV` as `count` workers on this machine under torchrun's agent.

    Returns 0 when every rank succeeded; raises JobFailed naming the failed rank(s) otherwise. The
    agent stops the other workers as soon as one fails (SIGTERM, then SIGKILL), so none is left behind.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    workers_env = {STARTED_AT_VARIABLE: repr(launched_at)}
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does, but the cores split rather than 1 each
        workers_env["OMP_NUM_THREADS"] = str(share_of_cores(planned(count)))
    with tempfile.TemporaryDirectory(prefix="cnnbench-torchelastic-") as logs, _environment(workers_env):
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=count, run_id=f"cnnbench-{uuid.uuid4().hex[:12]}",
            # torchrun --standalone's rendezvous: on this machine, on a free port.
            rdzv_backend="c10d", rdzv_endpoint="localhost:0",
            max_restarts=0,  # a benchmark that restarts would time the restart
            monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(config, sys.executable)("-m", "cnnbench", *argv)
        except ChildFailedError as exc:
            raise JobFailed(*_failure_summary(exc.failures, count)) from None
        except SignalException as exc:  # Ctrl-C or a kill of this process: the agent has stopped the workers
            return errors.EXIT_INTERRUPTED if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
    return 0


def _failure_summary(failures: dict, count: int) -> tuple[str, int]:
    """One line naming the rank(s) that failed, and the job's exit code.

    The agent stops the surviving workers with SIGTERM once one fails: those are not the cause, unless
    nothing else failed. A rank that lost contact with a failed one exits with code 4 too; the job's
    exit code is the other failures' when they agree on one of ours (2 usage, 3 out of memory, 130).
    """
    causes = {rank: f for rank, f in failures.items() if f.exitcode != -signal.SIGTERM} or failures
    parts = []
    for rank, failure in sorted(causes.items()):
        code = failure.exitcode
        if code < 0:
            parts.append(f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) was killed by {signal.Signals(-code).name}")
        else:
            meaning = f" ({EXIT_MEANINGS[code]})" if code in EXIT_MEANINGS else ""
            parts.append(f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) exited with code {code}{meaning}")
    codes = {f.exitcode for f in causes.values()}
    codes = (codes - {errors.EXIT_RUN_FAILED}) or codes
    exit_code = next(iter(codes)) if len(codes) == 1 and codes <= EXIT_MEANINGS.keys() else errors.EXIT_RUN_FAILED
    return (f"distributed training failed on {socket.gethostname()}: {'; '.join(parts)}; "
            f"the other rank(s) of {count} were stopped"), exit_code


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Variables the workers inherit, set for the launch only."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
