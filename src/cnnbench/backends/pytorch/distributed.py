"""Data-parallel training on torch.distributed, inside a worker: its place in the job, joining the
process group, the DDP wrapper, and agreeing across ranks outside the timed steps.

Two ways in, one worker code path (launcher.py starts the second):
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
import ctypes
import datetime
import os
import re
import signal
import socket
import sys
from dataclasses import replace
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from cnnbench.backends.base import World  # noqa: F401 (distributed.World: this process's place in the job)
from cnnbench.core import environment, errors, terminal
from cnnbench.core.stats import throughput
from cnnbench.core.timing import StepTimes

# What torchrun sets in each worker's environment, and what env:// initialisation reads.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Set by `launch` for its workers: when the launching command started, so that system performance
# covers the whole command (the workers' start-up included), as it does for one process.
STARTED_AT_VARIABLE = "CNNBENCH_STARTED_AT"
# Set by `launch` for its workers: the launching process's pid (torchrun's agent runs inside it and
# starts them), so that a worker can tell whether it lost its launcher before it was tied to it.
LAUNCHER_PID_VARIABLE = "CNNBENCH_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# NCCL's asynchronous error handling, set in a worker before its NCCL group exists unless the user set
# it (either name; NCCL_ASYNC_ERROR_HANDLING is the older one). A rank whose collective outlives the
# group's timeout is blocked in a CUDA synchronisation that no exception reaches; with 1 or 3, NCCL's
# watchdog thread then takes the process down (SIGABRT), which the launcher reports as lost contact.
# 3 (tear down without aborting the communicators) is PyTorch's default (ProcessGroupNCCL.hpp, ErrorHandlingMode,
# alike in torch 2.11 and 2.14; "ProcessGroupNCCL Environment Variables" in PyTorch's docs), set here so
# that the --dist-timeout path does not rest on a default; 1 would first call ncclCommAbort, which can
# itself hang (the same header). A user's 0 or 2 (no tear-down) is kept: a hung rank then hangs the job.
NCCL_ERROR_HANDLING_NAMES = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING")
NCCL_TEAR_DOWN = "3"


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


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# ---------------------------------------------------------------- inside a worker


def end_with_launcher(world: World) -> None:
    """Tie this worker's life to the process that started it, torchrun's agent (inside the launching
    `cnnbench train --num-accelerators N`, or the torchrun command), so that a launcher killed with
    SIGKILL, which stops nothing itself, leaves no worker running: Linux sends this process SIGTERM
    when its parent dies (prctl(2), PR_SET_PDEATHSIG), and SIGTERM stops a run after its current step.

    prctl(2): the signal follows the death of the parent *thread*, the one that forked; the agent starts
    its workers from its main thread (torch.distributed.elastic's SubprocessContext), which lives as
    long as its process. A launcher that died before this call sent nothing: the parent pid differs from
    the one the launcher recorded, and the worker stops at once. Under torchrun started by hand there is
    no record, and the parent at this moment is taken for the agent.
    """
    if not world.distributed or not sys.platform.startswith("linux"):
        return
    recorded = os.environ.get(LAUNCHER_PID_VARIABLE)
    launcher = int(recorded) if recorded else os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        terminal.warn(f"cannot tie this worker to its launcher (prctl: {os.strerror(ctypes.get_errno())}); "
                       "if the launcher is killed with SIGKILL, its workers must be stopped by hand")
        return
    if os.getppid() != launcher:  # the launcher is already gone: the signal it would have caused
        signal.raise_signal(signal.SIGTERM)


def join(world: World, device: torch.device, timeout_seconds: float) -> World:
    """Enter the process group (env://, from torchrun's variables). From here on only rank 0 prints.
    Every collective is bounded by `timeout_seconds` (--dist-timeout): gloo raises, NCCL's watchdog
    ends the process (NCCL_TEAR_DOWN)."""
    if not world.distributed:
        return world
    backend = backend_for(device)
    options = {}
    if backend == "nccl":
        if not any(name in os.environ for name in NCCL_ERROR_HANDLING_NAMES):
            os.environ[NCCL_ERROR_HANDLING_NAMES[0]] = NCCL_TEAR_DOWN  # read when the group is created
        torch.cuda.set_device(device)
        options["device_id"] = device  # binds the communicator to this rank's GPU at once
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds), **options)
    terminal.set_quiet(not world.is_main)
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


def slowest_elapsed(world: World) -> Callable[[float], float] | None:
    """For timing.measure_together: the largest of every rank's steady seconds so far (a collective)."""
    if not world.distributed:
        return None
    return lambda seconds: max(gather(world, seconds))


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


def slowest_steps(per_rank: list[dict]) -> StepTimes:
    """The job's step i took as long as the slowest rank's step i (the gradient all-reduce makes the
    others wait for it), so a straggler shows in the job's figures."""
    def slowest(key: str) -> list[float]:
        return [max(seconds) for seconds in zip(*(r[key] for r in per_rank))]

    return StepTimes(warmup_seconds=slowest("warmup_seconds"), steady_seconds=slowest("steady_seconds"),
                     ended_by=per_rank[0].get("ended_by"))  # the ranks run the same steps, so end alike


def rank_report(device: torch.device, times: StepTimes) -> dict:
    """What each rank contributes to the record."""
    return {"host": socket.gethostname(), "device": str(device),
            "warmup_seconds": list(times.warmup_seconds), "steady_seconds": list(times.steady_seconds),
            "ended_by": times.ended_by}


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
