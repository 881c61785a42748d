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

from cnnbench.core import config, errors
from cnnbench.core.config import SoakConfig, TrainConfig
from cnnbench.backends.pytorch.distributed import LAUNCHER_PID_VARIABLE, STARTED_AT_VARIABLE, planned, share_of_cores

EXIT_MEANINGS = {errors.EXIT_USAGE: "usage error", errors.EXIT_OUT_OF_MEMORY: "out of memory",
                 errors.EXIT_RUN_FAILED: "run failed", errors.EXIT_INTERRUPTED: "interrupted"}


class JobFailed(errors.CnnbenchError):
    """A launched job ended with a failed rank; the exit code is the rank's when it is one of ours."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launch(cfg: TrainConfig, backend: str, launched_at: float) -> int:
    """Run `python -m cnnbench train` (`soak` for a SoakConfig) with cfg as cfg.num_accelerators workers on this machine under
    torchrun's agent; backend (gloo or nccl, the one the workers will choose) and cfg.dist_timeout
    explain a failure.

    Returns 0 when every rank succeeded; raises JobFailed naming the failed rank(s) otherwise. The
    agent stops the other workers as soon as one fails (SIGTERM, then SIGKILL), so none is left behind;
    if this process is killed outright, each worker gets SIGTERM from Linux (distributed.end_with_launcher).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    command = "soak" if isinstance(cfg, SoakConfig) else "train"
    argv, count = [command, *config.to_argv(cfg)], cfg.num_accelerators
    # The agent runs in this process and starts the workers: this pid is their parent's.
    workers_env = {STARTED_AT_VARIABLE: repr(launched_at), LAUNCHER_PID_VARIABLE: str(os.getpid())}
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does, but the cores split rather than 1 each
        workers_env["OMP_NUM_THREADS"] = str(share_of_cores(planned(count)))
    with tempfile.TemporaryDirectory(prefix="cnnbench-torchelastic-") as logs, _environment(workers_env):
        agent = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=count, run_id=f"cnnbench-{uuid.uuid4().hex[:12]}",
            # torchrun --standalone's rendezvous: on this machine, on a free port.
            rdzv_backend="c10d", rdzv_endpoint="localhost:0",
            max_restarts=0,  # a benchmark that restarts would time the restart
            monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(agent, sys.executable)("-m", "cnnbench", *argv)
        except ChildFailedError as exc:
            raise JobFailed(*_failure_summary(exc.failures, count, backend, cfg.dist_timeout)) from None
        except SignalException as exc:  # Ctrl-C or a kill of this process: the agent has stopped the workers
            return errors.EXIT_INTERRUPTED if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
    return 0


def _failure_summary(failures: dict, count: int, backend: str = "gloo", dist_timeout: float = 60.0) -> tuple[str, int]:
    """One line naming the rank(s) that failed, and the job's exit code.

    The agent stops the surviving workers with SIGTERM once one fails, and they die of it or, having
    caught it, exit 143: those are not the cause, unless nothing else failed. A rank that lost contact with a failed one exits with code 4 too; the job's
    exit code is the other failures' when they agree on one of ours (2 usage, 3 out of memory, 130).
    With NCCL a rank that loses contact is blocked in a CUDA synchronisation, where no exception reaches
    it, and NCCL's watchdog ends it with SIGABRT once its collective has outlived the group's timeout
    (distributed.NCCL_TEAR_DOWN): that is reported as the same loss of contact, code 4.
    """
    stopped = (-signal.SIGTERM, errors.EXIT_TERMINATED)
    causes = {rank: f for rank, f in failures.items() if f.exitcode not in stopped} or failures
    watchdog = {rank for rank, f in causes.items() if backend == "nccl" and f.exitcode == -signal.SIGABRT}
    parts = []
    for rank, failure in sorted(causes.items()):
        code, who = failure.exitcode, f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid})"
        if rank in watchdog:
            parts.append(f"{who} lost contact with the other ranks: NCCL's watchdog ended it (SIGABRT) when a collective "
                         f"had not completed within --dist-timeout {dist_timeout:g} s or had failed; another rank failed or hung")
        elif code < 0:
            parts.append(f"{who} was killed by {signal.Signals(-code).name}")
        else:
            meaning = f" ({EXIT_MEANINGS[code]})" if code in EXIT_MEANINGS else ""
            parts.append(f"{who} exited with code {code}{meaning}")
    codes = {errors.EXIT_RUN_FAILED if rank in watchdog else f.exitcode for rank, f in causes.items()}
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
