"""Data-parallel training on torch.distributed: launching a job, joining it, and agreeing across ranks.

Two ways in, one worker code path:
  - `torchrun --nproc-per-node N [--nnodes ... --rdzv-endpoint ... --node-rank ...] -m cnnbench train ...`:
    torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    GROUP_RANK (the node's rank), MASTER_ADDR and MASTER_PORT; every such process is a worker.
  - `cnnbench train --num-accelerators N` in a plain process: `launch` runs torchrun's own agent
    (torch.distributed.launcher.api, what the torchrun command runs) on this machine with N workers,
    each `python -m cnnbench train` with the same options, and exits with the job's status.

A worker joins the process group with NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK) or gloo on
the CPU. Every collective is bounded by the group's timeout (--dist-timeout), so a rank that dies or
hangs ends the job instead of hanging it; on one machine the agent notices a dead worker sooner and
stops the others. Collectives run only outside the timed steps (DDP's own all-reduce aside).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import re
import signal
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from cnnbench import environment, errors, reporting
from cnnbench.stats import throughput
from cnnbench.timing import StepTimes, measure

# What torchrun sets in each worker's environment, and what env:// initialisation reads.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Set by `launch` for its workers: when the launching command started, so that system performance
# covers the whole command (the workers' start-up included), as it does for one process.
STARTED_AT_VARIABLE = "CNNBENCH_STARTED_AT"
EXIT_MEANINGS = {errors.EXIT_USAGE: "usage error", errors.EXIT_OUT_OF_MEMORY: "out of memory",
                 errors.EXIT_RUN_FAILED: "run failed", errors.EXIT_INTERRUPTED: "interrupted"}


class JobFailed(errors.CnnbenchError):
    """A launched job ended with a failed rank; the exit code is the rank's when it is one of ours."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    """This process's place in the job. A plain single-device run is rank 0 of 1, not distributed."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this node
    distributed: bool = False  # under torchrun: DDP and collectives, with one process too
    backend: str | None = None  # set by join

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def current() -> World:
    """This process's world, read from torchrun's variables (the only place they are read)."""
    if not under_torchrun():
        return World()
    env = os.environ
    return World(rank=int(env["RANK"]), size=int(env["WORLD_SIZE"]), local_rank=int(env["LOCAL_RANK"]),
                 local_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])), distributed=True)


def planned(count: int) -> World:
    """The world a launch of `count` processes on this machine will have, seen from its rank 0."""
    return World(size=count, local_size=count, distributed=count > 1)


def check_world(requested: int, world: World, device: torch.device) -> None:
    """`--num-accelerators` against the processes there are (or will be) and the GPUs that are visible."""
    if not world.distributed and requested > 1:  # training.run called directly, not through cmd_train
        raise errors.UsageError(f"--num-accelerators {requested} needs its processes started: run `cnnbench train "
                                f"--num-accelerators {requested}` or torchrun")
    if world.distributed and requested not in (1, world.local_size):
        raise errors.UsageError(f"--num-accelerators {requested} but torchrun started {world.local_size} process(es) on this "
                                "node; under torchrun its --nproc-per-node decides: drop --num-accelerators or make them equal")
    if device.type == "cuda" and world.local_size > torch.cuda.device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise errors.UsageError(
            f"--num-accelerators (NUM_ACCELERATORS) {world.local_size} needs {world.local_size} GPUs but only "
            f"{torch.cuda.device_count()} are visible{f' (CUDA_VISIBLE_DEVICES={visible})' if visible else ''}; "
            f"use at most {torch.cuda.device_count()}")


def cpu_note(world: World, device: torch.device) -> str | None:
    if world.size > 1 and device.type == "cpu":
        return (f"{world.local_size} gloo processes share this machine's CPU cores: the run checks the correctness and "
                "accounting of data-parallel training, it does not measure a speed-up")
    return None


def share_of_cores(world: World) -> int:
    """Cores per process when the node's processes split its cores (intra-op threads, loader workers)."""
    return max(1, environment.usable_cores() // max(1, world.local_size))


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's own random stream (its synthetic batch, dropout): `--seed` plus the rank."""
    return seed + rank


def started_at() -> float | None:
    value = os.environ.get(STARTED_AT_VARIABLE)
    return float(value) if value else None


# ---------------------------------------------------------------- inside a worker


def join(world: World, device: torch.device, timeout_seconds: float) -> World:
    """Enter the process group (env://, from torchrun's variables). From here on only rank 0 prints."""
    if not world.distributed:
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device  # binds the communicator to this rank's GPU at once
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds), **options)
    reporting.console.quiet = not world.is_main
    return replace(world, backend=backend)


def leave(world: World) -> None:
    """Leave the group at the normal end of a run. After a failure the process just exits: tearing
    down a group whose peer is gone can itself block (NCCL)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` in a distributed run (with one process too, so that N=1
    measures the distributed path): it broadcasts rank 0's parameters and buffers now and averages
    the gradients of every backward pass over the ranks. Outside torchrun, the module as it is."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets instead of being copied
    # into them after every backward (the copy cost ~5% of a ResNet-50 step on this project's CPU).
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


def gather(world: World, value: object) -> list:
    """`value` from every rank, in rank order. Every rank must call it; never inside a timed step."""
    if not world.distributed:
        return [value]
    values: list = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def from_main(world: World, produce: Callable[[], object]) -> object:
    """`produce()` run on rank 0 and its result handed to every rank: one reading of a file that only
    rank 0's node may hold (the checkpoint to resume from), and the same state everywhere. An error
    there is raised on every rank."""
    if not world.distributed:
        return produce()
    box: list = [None]
    error = None
    if world.is_main:
        try:
            box[0] = ("ok", produce())
        except errors.CnnbenchError as exc:
            error, box[0] = exc, ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise errors.UsageError(value)
    return value


def measure_together(world: World, step, synchronize, *, warmup: int, max_steps: int, duration: float | None,
                     min_steps: int, after_step) -> StepTimes:
    """timing.measure, with every rank running the same number of steps.

    Each step's gradient all-reduce pairs up the ranks' steps: a rank that stopped one step early would
    leave the others waiting in it. A step budget is the same everywhere; a time budget (--duration)
    is not, as each rank reads its own clock. So under a time budget the ranks run steps in chunks
    and, between chunks and outside the timed region, agree on the slowest rank's steady time so far,
    sizing the next chunk from it.
    """
    if not world.distributed or duration is None:
        return measure(step, synchronize, warmup=warmup, max_steps=max_steps, duration=duration,
                       min_steps=min_steps, after_step=after_step)
    times = measure(step, synchronize, warmup=warmup, max_steps=min(max(min_steps, 1), max_steps), after_step=after_step)
    while not times.interrupted and len(times.steady_seconds) < max_steps:
        done = len(times.steady_seconds)
        elapsed = max(gather(world, sum(times.steady_seconds)))
        if elapsed >= duration and done >= min_steps:
            break
        chunk = min(max_steps - done, max(1, math.ceil((duration - elapsed) / (elapsed / done))))
        more = measure(step, synchronize, warmup=0, max_steps=chunk, after_step=after_step)
        times.steady_seconds += more.steady_seconds
        times.interrupted = more.interrupted
    return times


def slowest_steps(per_rank: list[dict]) -> StepTimes:
    """The job's step i took as long as the slowest rank's step i (the gradient all-reduce makes the
    others wait for it), so a straggler shows in the job's figures."""
    def slowest(key: str) -> list[float]:
        return [max(seconds) for seconds in zip(*(r[key] for r in per_rank))]

    return StepTimes(warmup_seconds=slowest("warmup_seconds"), steady_seconds=slowest("steady_seconds"))


def rank_report(device: torch.device, times: StepTimes) -> dict:
    """What each rank contributes to the record."""
    return {"host": socket.gethostname(), "device": str(device),
            "warmup_seconds": list(times.warmup_seconds), "steady_seconds": list(times.steady_seconds)}


def record_fields(world: World, per_rank: list[dict], batch: int) -> dict:
    """World size, backend, every node's host name, every rank's device and images/s. Rank r is
    `per_rank[r]` (after Ctrl-C only rank 0's report is there)."""
    hosts = list(dict.fromkeys(r["host"] for r in per_rank))
    fields = {
        "num_accelerators": world.size,
        "world_size": world.size,
        "backend": world.backend,
        "num_nodes": len(hosts),
        "hosts": hosts,
        "rank_hosts": [r["host"] for r in per_rank],
        "rank_devices": [r["device"] for r in per_rank],
        "rank_images_per_sec": [throughput(batch, r["steady_seconds"]).mean for r in per_rank],
    }
    if world.size > 1:  # what the job's per-step times (each step's slowest rank) were taken from
        fields["rank_steady_seconds"] = [r["steady_seconds"] for r in per_rank]
    return fields


@contextlib.contextmanager
def rank_errors(world: World) -> Iterator[None]:
    """A worker's error names its rank (each rank prints its own errors, nothing else but rank 0 does),
    and a failed collective (another rank died or hung) is one line, not a traceback."""
    try:
        yield
    except errors.CnnbenchError as exc:
        if world.size > 1:
            exc.args = (f"rank {world.rank} of {world.size}: {exc}",)
        raise
    except RuntimeError as exc:
        if not (world.distributed and _is_communication_error(exc)):
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[path/to/source.cc:545] " prefix
        raise errors.CnnbenchError(
            f"rank {world.rank} of {world.size} lost contact with the other ranks ({first[:200]}); "
            "another rank failed or hung: its own message says why") from None


def _is_communication_error(exc: RuntimeError) -> bool:
    # NCCL errors are DistBackendError; gloo raises plain RuntimeErrors that name their transport.
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(marker in text for marker in ("gloo", "NCCL", "ProcessGroup", "Connection reset", "Connection closed"))


# ---------------------------------------------------------------- launching from a plain process


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
