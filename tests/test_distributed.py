"""Data-parallel training on torch.distributed, on the CPU with gloo: real worker processes launched
by torchrun's agent, as `cnnbench train --num-accelerators N` and `NUM_ACCELERATORS=N ./train.sh` run them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnbench.backends.pytorch import distributed, launcher

from cnnbench.core import errors
from cnnbench.cli import main
from cnnbench.data.sample import write_sample_dataset
from cnnbench.models.registry import resolve_entry
from cnnbench.core.timing import StepTimes
from helpers import cnnbench_process, read_jsonl, run_process

# No BatchNorm: a rank normalises with its own batch's statistics, so with BatchNorm two ranks of
# batch B are not one process of batch 2B, and the equivalence below would not hold. A max-pool and
# the linear head: every parameter's gradient is a mean over the batch.
LINEAR_SPEC = {
    "name": "linearNet",
    "input": {"height": 16, "width": 16, "channels": 3},
    "groups": [{"name": "pool", "layers": [{"type": "maxpool"}]}],
    "head": {"fully_connected": {"outputs": 10}},
}
# Real images (the digits, 10 classes x 2), each one an exact 16x16 crop (scale 1, no flip), no loader
# workers: the input is deterministic. The ranks split each shuffled epoch as order[rank::2], so at
# every step rank 0's batch and rank 1's batch together are the single process's batch of 4.
STEPS = 7  # 20 images / 4 per step: an epoch boundary (a new shuffle) falls inside the run
COMMON = ["--image-size", "16", "--num-batches", STEPS, "--warmup", "0", "--display-every", "1",
          "--learning-rate", "0.2", "--min-crop-scale", "1", "--flip", "0", "--workers", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank job (batch 2 per rank) and one single process (batch 4, this one) on the same data."""
    root = tmp_path_factory.mktemp("ddp")
    write_sample_dataset(root / "digits", image_size=16, max_per_class=2)
    spec = root / "linear.json"
    spec.write_text(json.dumps(LINEAR_SPEC))
    data = ["--data-dir", root / "digits"]
    started = time.monotonic()
    job = cnnbench_process("train", spec, *COMMON, *data, "--batch-size", 2, "--num-accelerators", 2,
                           "--log-dir", "log_ddp", "--results-dir", "results_ddp", cwd=root, timeout=300)
    job_seconds = time.monotonic() - started
    assert job.returncode == 0, job.stderr
    # The single process is this one (one start-up fewer): `cnnbench train` in-process, as the `cli` fixture runs it.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in ("train", spec, *COMMON, *data, "--batch-size", 4, "--log-dir", root / "log_single",
                                      "--results-dir", root / "results_single")])
    assert code == 0, err.getvalue()
    return {"root": root, "spec": spec, "job": job, "job_seconds": job_seconds}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_two_ranks_of_batch_b_train_like_one_process_of_batch_2b(two_ranks):
    root = two_ranks["root"]
    ddp, single = _weights(root / "log_ddp"), _weights(root / "log_single")
    torch.manual_seed(3)  # the run's seed: the initial weights
    initial = resolve_entry(str(two_ranks["spec"])).build(16).state_dict()
    assert ddp.keys() == single.keys() == initial.keys()
    for name in ddp:
        moved = (single[name] - initial[name]).abs().max().item()
        assert moved > 1e-2, f"{name} barely trained ({moved}); the comparison would prove nothing"
        # The gradients were averaged over the ranks: any other combination (a sum, one rank's) lands elsewhere.
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    # The same steps and schedule on both sides.
    ddp_record, = read_jsonl(root / "results_ddp" / "runs.jsonl")
    single_record, = read_jsonl(root / "results_single" / "runs.jsonl")
    assert ddp_record["end_step"] == single_record["end_step"] == STEPS
    assert ddp_record["images_processed"] == single_record["images_processed"] == 4 * STEPS


def test_one_record_and_one_checkpoint_with_figures_from_every_rank(two_ranks):
    root, job = two_ranks["root"], two_ranks["job"]
    record, = read_jsonl(root / "results_ddp" / "runs.jsonl")  # exactly one record, by rank 0
    assert sorted(p.name for p in (root / "log_ddp").iterdir()) == ["checkpoint.pt"]
    assert (record["num_accelerators"], record["world_size"], record["backend"]) == (2, 2, "gloo")
    assert record["rank_devices"] == ["cpu", "cpu"]
    assert record["hosts"] == record["rank_hosts"][:1] == [socket.gethostname()] and record["num_nodes"] == 1
    # The job's step i lasted as long as the slower rank's step i; its figures are 2 x batch per step.
    per_rank = record["rank_steady_seconds"]
    assert len(per_rank) == 2 and all(len(times) == STEPS for times in per_rank)
    assert record["steady_seconds"] == [max(a, b) for a, b in zip(*per_rank)]
    assert record["images_per_sec"] == pytest.approx(statistics.fmean(4 / t for t in record["steady_seconds"]))
    assert record["rank_images_per_sec"] == pytest.approx([statistics.fmean(2 / t for t in times) for times in per_rank])
    assert record["images_per_sec"] <= sum(record["rank_images_per_sec"]) * (1 + 1e-9)
    # System performance covers the launching command's wall time (worker start-up included).
    assert record["system_images_per_sec"] * record["wall_seconds"] == pytest.approx(4 * STEPS)
    assert record["wall_seconds"] <= two_ranks["job_seconds"]
    # Only rank 0 printed: one header, one set of step lines and final figures.
    out = job.stdout
    assert out.count("cnnbench train linearNet") == 1 and out.count("Images/sec:") == 1
    steps = [int(parts[0]) for parts in map(str.split, out.splitlines()) if len(parts) == 5 and parts[0].isdigit()]
    assert steps == list(range(1, STEPS + 1))
    assert "Per-rank images/sec: 0: " in out and "2 gloo processes share this machine's CPU cores" in out


def test_torchrun_started_by_hand_gives_the_same_job(tmp_path, tiny_spec):
    done = run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "--log-dir", str(tmp_path / "torchelastic"), "-m", "cnnbench", "train", str(tiny_spec), "--image-size", "16", "--batch-size", "2",
                        "--num-batches", "2", "--warmup", "1"], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    record, = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert (record["num_accelerators"], record["backend"], record["config.num_accelerators"]) == (2, "gloo", 1)
    assert record["images_processed"] == 2 * 2 * 3 and len(record["rank_images_per_sec"]) == 2
    assert done.stdout.count("Images/sec:") == 1 and "Launching" not in done.stdout  # torchrun launched it


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of proc(5), the parent's pid
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_long_job(tmp_path: Path, timeout: float, launcher: list[str] = ("-m", "cnnbench")) -> tuple[subprocess.Popen, dict[int, int]]:
    """A 2-rank job that would run for minutes; returns once rank 0 has printed a steady step line.
    `launcher`: how the launching Python process is started (it gets `train ...` as its arguments)."""
    spec = tmp_path / "linear.json"
    spec.write_text(json.dumps({**LINEAR_SPEC, "head": {"fully_connected": {"outputs": 1000}}}))  # synthetic labels
    job = subprocess.Popen(
        [sys.executable, *launcher, "train", str(spec), "--image-size", "16", "--batch-size", "2",
         "--num-batches", "100000", "--warmup", "1", "--display-every", "1", "--num-accelerators", "2",
         "--dist-timeout", str(timeout)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in job.stdout:
        if line.split()[:1] == ["3"]:  # the second steady step: both ranks are inside the loop
            break
    else:
        raise AssertionError(f"the job ended before its steps began: {job.wait()} {job.stderr.read()}")
    ranks = {_rank_of(pid): pid for pid in _children(job.pid)}
    assert set(ranks) == {0, 1}, ranks
    return job, ranks


def _stop(job: subprocess.Popen, ranks: dict[int, int]) -> None:
    """After a failed check: leave no process behind (a finished job has reaped its workers)."""
    if job.poll() is None:
        for pid in set(ranks.values()) & set(_children(job.pid)):
            os.kill(pid, signal.SIGKILL)
        job.kill()
        job.wait()


def test_killing_one_rank_ends_the_job_with_a_message_naming_it(tmp_path):
    job, ranks = _start_long_job(tmp_path, timeout=20)
    os.kill(ranks[1], signal.SIGKILL)
    start = time.monotonic()
    try:
        code = job.wait(timeout=30)  # the agent sees the death at once; far below the 20 s group timeout
    finally:
        _stop(job, ranks)
    stderr = job.stderr.read()
    assert time.monotonic() - start < 15
    assert code == errors.EXIT_RUN_FAILED
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("cnnbench: error: distributed training failed on ")
    assert f"rank 1 (local rank 1, pid {ranks[1]}) was killed by SIGKILL" in last
    assert not any(_alive(pid) for pid in ranks.values())  # no worker left behind
    # No record of a finished run. Rank 0 may record its completed steps as terminated: the agent's SIGTERM
    # lands between two steps (Python's handler runs then) or inside the all-reduce (the agent's SIGKILL
    # follows first), whichever the load on the machine makes it.
    saved = tmp_path / "results_train" / "runs.jsonl"
    assert all(r["status"] == "terminated" for r in (read_jsonl(saved) if saved.exists() else []))


def test_a_hung_rank_ends_the_job_after_the_group_timeout(tmp_path):
    # Nothing dies, so only the process group's timeout can notice: rank 0 waits at most --dist-timeout
    # in the gradient all-reduce for the stopped rank 1, then fails with a message.
    job, ranks = _start_long_job(tmp_path, timeout=3)
    os.kill(ranks[1], signal.SIGSTOP)
    start = time.monotonic()
    try:
        while _alive(ranks[0]) and time.monotonic() - start < 30:
            time.sleep(0.1)
        waited = time.monotonic() - start
    finally:
        os.kill(ranks[1], signal.SIGCONT)  # the agent's SIGTERM can then reach it
    try:
        code = job.wait(timeout=30)
    finally:
        _stop(job, ranks)
    stderr = job.stderr.read()
    assert 2.5 < waited < 10
    assert code == errors.EXIT_RUN_FAILED
    assert "cnnbench: error: rank 0 of 2 lost contact with the other ranks" in stderr
    assert "rank 0 (local rank 0, pid" in stderr.strip().splitlines()[-1]
    assert not any(_alive(pid) for pid in ranks.values())


# NCCL's watchdog, as the launcher sees it: the launcher's view of the job says NCCL (this machine has
# no GPU, so the workers run gloo), and rank 0 dies as the watchdog ends a rank, by SIGABRT.
AS_IF_NCCL = ["-c", "import sys; from cnnbench import cli; from cnnbench.backends.pytorch import launcher; real = launcher.launch; "
              "launcher.launch = lambda cfg, backend, at: real(cfg, 'nccl', at); sys.exit(cli.main(sys.argv[1:]))"]


def test_a_rank_ended_by_nccls_watchdog_is_reported_as_lost_contact(tmp_path):
    job, ranks = _start_long_job(tmp_path, timeout=3, launcher=AS_IF_NCCL)
    os.kill(ranks[0], signal.SIGABRT)
    try:
        code = job.wait(timeout=30)
    finally:
        _stop(job, ranks)
    last = job.stderr.read().strip().splitlines()[-1]
    assert code == errors.EXIT_RUN_FAILED
    assert last.startswith("cnnbench: error: distributed training failed on ")
    assert (f"rank 0 (local rank 0, pid {ranks[0]}) lost contact with the other ranks: NCCL's watchdog ended it "
            "(SIGABRT) when a collective had not completed within --dist-timeout 3 s or had failed") in last
    # (rank 1 is stopped by the agent, or here loses contact with rank 0 in turn: it may be named too)
    assert not any(_alive(pid) for pid in ranks.values())


def test_killing_the_launcher_outright_stops_its_workers(tmp_path):
    # SIGKILL leaves the launcher (and torchrun's agent inside it) no chance to stop the workers: Linux
    # sends each of them SIGTERM when their parent dies, and they stop after their current step.
    job, ranks = _start_long_job(tmp_path, timeout=20)
    job.kill()
    job.wait()
    start = time.monotonic()
    try:
        while any(_alive(pid) for pid in ranks.values()) and time.monotonic() - start < 15:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in ranks.values()), "workers outlived their launcher"
    finally:
        for pid in ranks.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - start < 10
    # Stopped as on SIGTERM, rank 0 keeps what completed; unless the other rank's exit broke the step's
    # all-reduce first (both get the signal at once), which ends rank 0 as a lost contact instead.
    records = read_jsonl(tmp_path / "results_train" / "runs.jsonl") if (tmp_path / "results_train" / "runs.jsonl").exists() else []
    assert all(r["status"] == "terminated" and r["steady_steps"] >= 2 for r in records)


@pytest.mark.usefixtures("cpu_calibration")
def test_sweep_over_accelerator_counts_writes_the_efficiency_table(cli, tmp_path, tiny_spec):
    # The sweep in this process (its configurations are child processes all the same, the 2-rank one a real
    # gloo job): it shares the suite's calibration (conftest.cpu_calibration) with the other in-process sweeps.
    code, _, err = cli("train-all", "--models", tiny_spec, "--batch-sizes", "2", "--num-accelerators", "1,2",
                       "--image-size", "16", "--num-batches", "3", "--warmup", "1")
    assert code == 0, err
    results = tmp_path / "results_train"
    one, two = read_jsonl(results / "runs.jsonl")
    assert (one["num_accelerators"], two["num_accelerators"]) == (1, 2)
    assert sorted(p.name for p in results.glob("result_*.txt")) == ["result_tinyNet_2.txt", "result_tinyNet_2_x2.txt"]
    table = list(csv.reader((results / "results.csv").open()))
    assert ["System performance, unit is images/second (fp32, 2 accelerators)"] in table
    efficiency = table[table.index(["Scaling efficiency, unit is percent"]) + 2:]
    assert efficiency[0] == ["model", "accelerators", "batch 2"]
    model, count, value = efficiency[1]
    assert (model, count) == ("tinyNet", "2")
    assert float(value) == pytest.approx(100 * two["images_per_sec"] / (2 * one["images_per_sec"]), abs=0.05)


# ---------------------------------------------------------------- mistakes, without starting workers


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that shows two CUDA devices (only their count and compute capability, for the memory
    format, are asked for before a launch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize("args, message", [
    (["train", "resnet50", "--num-accelerators", "0"], "--num-accelerators must be an integer of at least 1, got 0"),
    (["train", "resnet50", "--num-accelerators", "two"], "argument --num-accelerators: invalid int value: 'two'"),
    (["train-all", "--num-accelerators", "1,x"], "--num-accelerators: 'x' is not a positive integer; give integers of at least 1, e.g. 1,2,4"),
    (["train", "resnet50", "--num-accelerators", "2", "--dist-timeout", "0"], "--dist-timeout must be a number of seconds in (0, 604800.0], got 0.0"),
])
def test_bad_accelerator_counts(cli, args, message):
    code, out, err = cli(*args)
    assert code == errors.EXIT_USAGE
    assert message in err and len(err.strip().splitlines()) == 1
    assert not Path("results_train").exists()


def test_more_accelerators_than_gpus_names_both_numbers(cli, two_gpus):
    code, out, err = cli("train", "resnet50", "--num-accelerators", "4")
    assert code == errors.EXIT_USAGE
    assert err.strip() == ("cnnbench: error: --num-accelerators (NUM_ACCELERATORS) 4 needs 4 GPUs but only 2 are visible; "
                           "use at most 2")
    assert "Launching" not in out


def test_several_accelerators_cannot_share_one_named_gpu(cli, two_gpus):
    code, _, err = cli("train", "resnet50", "--num-accelerators", "2", "--device", "cuda:1")
    assert code == errors.EXIT_USAGE and "--device cuda:1 names one GPU" in err


def test_inference_has_no_accelerator_count(cli):
    code, _, err = cli("infer", "resnet50", "--num-accelerators", "2")
    assert code == errors.EXIT_USAGE and "unrecognized arguments: --num-accelerators 2" in err


def test_under_torchrun_its_process_count_decides(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    world = distributed.current()
    assert (world.rank, world.size, world.local_rank, world.local_size, world.distributed) == (1, 4, 1, 2, True)
    distributed.check_world(1, world, torch.device("cpu"))  # the default: torchrun decides
    distributed.check_world(2, world, torch.device("cpu"))  # the same number: fine
    with pytest.raises(errors.UsageError, match="--num-accelerators 3 but torchrun started 2 process"):
        distributed.check_world(3, world, torch.device("cpu"))


def test_the_slowest_rank_sets_each_step():
    ranks = [{"warmup_seconds": [5.0], "steady_seconds": [1.0, 3.0, 1.0]},
             {"warmup_seconds": [4.0], "steady_seconds": [2.0, 1.0, 1.5]}]
    times = distributed.slowest_steps(ranks)
    assert (times.warmup_seconds, times.steady_seconds) == ([5.0], [2.0, 3.0, 1.5])
    assert isinstance(times, StepTimes)


@pytest.mark.parametrize("exits, expected_code, named, not_named", [
    ({0: -signal.SIGTERM, 1: -signal.SIGKILL}, errors.EXIT_RUN_FAILED, ["rank 1 (local rank 1, pid 101) was killed by SIGKILL"], ["rank 0"]),
    # rank 1 ran out of memory; rank 0 then lost contact with it (code 4): the job's code is rank 1's
    ({0: errors.EXIT_RUN_FAILED, 1: errors.EXIT_OUT_OF_MEMORY}, errors.EXIT_OUT_OF_MEMORY,
     ["rank 1 (local rank 1, pid 101) exited with code 3 (out of memory)", "rank 0 (local rank 0, pid 100) exited with code 4"], []),
    ({0: errors.EXIT_USAGE, 1: errors.EXIT_USAGE}, errors.EXIT_USAGE, ["rank 0", "rank 1", "(usage error)"], []),
    ({0: -signal.SIGTERM, 1: 1}, errors.EXIT_RUN_FAILED, ["rank 1 (local rank 1, pid 101) exited with code 1;"], ["rank 0"]),
    # a rank that caught the agent's SIGTERM and stopped after its step (exit 143) was stopped too
    ({0: errors.EXIT_TERMINATED, 1: -signal.SIGKILL}, errors.EXIT_RUN_FAILED, ["rank 1 (local rank 1, pid 101) was killed by SIGKILL;"], ["rank 0"]),
])
def test_failure_report_names_the_cause(exits, expected_code, named, not_named):
    from types import SimpleNamespace

    failures = {rank: SimpleNamespace(exitcode=code, local_rank=rank, pid=100 + rank) for rank, code in exits.items()}
    message, code = launcher._failure_summary(failures, 2)
    assert code == expected_code
    assert message.startswith(f"distributed training failed on {socket.gethostname()}: ")
    assert all(text in message for text in named) and not any(text in message for text in not_named)


@pytest.fixture
def one_rank_group(monkeypatch):
    """A real gloo process group of one process, in this process: enough for DDP's constructor."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield distributed.World(size=1, distributed=True, backend="gloo")
    dist.destroy_process_group()


def test_compile_wraps_the_ddp_module_so_its_graph_splits_at_the_buckets(one_rank_group, monkeypatch):
    # Issue 10: DDP around a compiled module loses the all-reduce's overlap with the backward. A stand-in
    # for torch.compile records what it was given: the order DDP then compile, whatever the device.
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from cnnbench.backends.pytorch.training import wrap_for_training

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: compiled.append(module) or ("compiled", module))
    model, cpu = nn.Linear(3, 2), torch.device("cpu")
    trainable = wrap_for_training(model, True, one_rank_group, cpu)
    ddp, = compiled
    assert isinstance(ddp, DistributedDataParallel) and ddp.module is model
    assert trainable == ("compiled", ddp)
    # Without --compile, DDP alone; outside a distributed run, the compiled model alone.
    assert isinstance(wrap_for_training(model, False, one_rank_group, cpu), DistributedDataParallel)
    assert wrap_for_training(model, True, distributed.World(), cpu) == ("compiled", model)
    assert wrap_for_training(model, False, distributed.World(), cpu) is model


def test_compile_with_two_ranks_trains_through_the_ddp_optimizer(tmp_path, tiny_spec):
    # The same order end to end: the compiled DDP module (its graph split at the buckets) trains on gloo.
    done = cnnbench_process("train", tiny_spec, "--image-size", "16", "--batch-size", "2", "--num-batches", "2",
                            "--warmup", "1", "--num-accelerators", "2", "--compile", cwd=tmp_path, timeout=300,
                            env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})  # a cold compile
    assert done.returncode == 0, done.stderr
    record, = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert (record["status"], record["compile"], record["world_size"]) == ("ok", True, 2)
    assert max(record["steady_seconds"]) < record["compile_seconds"]  # the compiling step is the warm-up


# ---------------------------------------------------------------- NCCL's timeout path and the worker's tie, in parts


def test_an_nccl_group_gets_the_dist_timeout_and_tears_down_on_it(monkeypatch):
    """What NCCL is given when the group is created (faked: no GPU here): --dist-timeout as the group's
    timeout, and asynchronous error handling that ends the process, unless the user chose a value."""
    import datetime

    import torch.distributed as dist

    created = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout, **options: created.append(
        (backend, timeout, options, {name: os.environ.get(name) for name in distributed.NCCL_ERROR_HANDLING_NAMES})))
    for name in distributed.NCCL_ERROR_HANDLING_NAMES:  # restored after the test, whatever join sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    world = distributed.World(rank=0, size=2, local_size=2, distributed=True)
    gpu = torch.device("cuda", 0)
    assert distributed.join(world, gpu, 7.5).backend == "nccl"
    backend, timeout, options, handling = created.pop()
    assert (backend, timeout, options["device_id"]) == ("nccl", datetime.timedelta(seconds=7.5), gpu)
    assert handling == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "NCCL_ASYNC_ERROR_HANDLING": None}
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING")
    monkeypatch.setenv("NCCL_ASYNC_ERROR_HANDLING", "1")  # the user's own choice, under the older name, stays
    distributed.join(world, gpu, 7.5)
    assert created.pop()[3] == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": None, "NCCL_ASYNC_ERROR_HANDLING": "1"}
    monkeypatch.delenv("NCCL_ASYNC_ERROR_HANDLING")
    distributed.join(world, torch.device("cpu"), 7.5)  # gloo raises on its timeout: nothing to set
    assert created.pop()[:2] == ("gloo", datetime.timedelta(seconds=7.5))
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ


def test_the_launcher_is_told_the_workers_backend_and_timeout(two_gpus, monkeypatch, cli):
    seen = []
    monkeypatch.setattr(launcher, "launch", lambda cfg, backend, at: seen.append((backend, cfg.dist_timeout)) or 0)
    assert cli("train", "resnet50", "--num-accelerators", "2", "--dist-timeout", "7")[0] == 0  # --device auto: the GPUs
    assert cli("train", "resnet50", "--num-accelerators", "2", "--device", "cpu")[0] == 0
    assert seen == [("nccl", 7.0), ("gloo", 60.0)]


@pytest.mark.parametrize("backend, exits, expected_code, named", [
    ("nccl", {0: -signal.SIGABRT, 1: -signal.SIGTERM}, errors.EXIT_RUN_FAILED,
     ["rank 0 (local rank 0, pid 100) lost contact with the other ranks: NCCL's watchdog ended it (SIGABRT) when a "
      "collective had not completed within --dist-timeout 9 s or had failed; another rank failed or hung; the other"]),
    # rank 1 ran out of memory, rank 0 lost contact with it: the job's code is rank 1's
    ("nccl", {0: -signal.SIGABRT, 1: errors.EXIT_OUT_OF_MEMORY}, errors.EXIT_OUT_OF_MEMORY,
     ["rank 0 (local rank 0, pid 100) lost contact", "rank 1 (local rank 1, pid 101) exited with code 3 (out of memory)"]),
    # with gloo a lost contact is an exception and exit code 4: a SIGABRT there is a crash, named as such
    ("gloo", {0: -signal.SIGABRT, 1: -signal.SIGTERM}, errors.EXIT_RUN_FAILED,
     ["rank 0 (local rank 0, pid 100) was killed by SIGABRT;"]),
])
def test_failure_report_of_nccls_watchdog(backend, exits, expected_code, named):
    from types import SimpleNamespace

    failures = {rank: SimpleNamespace(exitcode=code, local_rank=rank, pid=100 + rank) for rank, code in exits.items()}
    message, code = launcher._failure_summary(failures, 2, backend, 9.0)
    assert code == expected_code and len(message.splitlines()) == 1
    assert all(text in message for text in named), message


# Outside a distributed run nothing is tied; inside one, the worker asks for SIGTERM (PR_GET_PDEATHSIG reads it back).
# Then a forked worker (fork clears the death signal) whose recorded launcher is not its parent any more: the
# launcher died before the tie, which then came too late, and the worker stops at once. One process start-up.
TIE = ("import ctypes, os; from cnnbench.backends.pytorch import distributed\n"
       "def tie(who):\n"
       "    value = ctypes.c_int()\n"
       "    for world in (distributed.World(), distributed.World(size=2, distributed=True)):\n"
       "        distributed.end_with_launcher(world)\n"
       "        ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)\n"
       "        print(who, 'tied to', value.value, flush=True)\n"
       "tie('here')\n"
       "child = os.fork()\n"
       "if child == 0:\n"
       "    os.environ[distributed.LAUNCHER_PID_VARIABLE] = '999999999'\n"
       "    tie('gone')\n"
       "    os._exit(0)\n"
       "print('gone exited', os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_asks_for_sigterm_when_its_launcher_dies_and_stops_if_it_already_has():
    done = run_process([sys.executable, "-c", TIE], env={distributed.LAUNCHER_PID_VARIABLE: str(os.getpid())}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["here tied to 0", f"here tied to {int(signal.SIGTERM)}",
                                        "gone tied to 0", f"gone exited {-signal.SIGTERM}"]
