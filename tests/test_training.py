import json
import math
import os
import signal
from pathlib import Path

import pytest

from cnnbench.core import errors
from helpers import TINY, read_jsonl

TINY16 = ["--image-size", "16", *TINY[2:]]  # TINY for the tiny spec, at its own 16 px


def test_training_on_a_learnable_task_lowers_the_loss(cli, tiny_spec):
    # The synthetic batch is fixed, so the task is learnable: the network can memorise it.
    code, out, _ = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "8", "--num-batches", "30",
                       "--warmup", "0", "--learning-rate", "0.05", "--display-every", "10")
    assert code == 0
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["status"] == "ok" and record["model"] == "tinyNet"
    assert record["final_loss"] < 0.5 * record["initial_loss"]
    assert "Images/sec:" in out and "System performance in images/second is:" in out


def test_record_holds_config_figures_and_environment(cli):
    code, out, _ = cli("train", "resnet50", *TINY)
    assert code == 0
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["steady_steps"] == 3 and record["warmup_steps"] == 1 and len(record["steady_seconds"]) == 3
    assert record["config.measure.batch_size"] == 2 and record["config.image_size"] == 64
    assert record["images_per_sec"] > 0 and record["system_images_per_sec"] > 0
    assert record["images_processed"] == 2 * 4
    assert record["system_images_per_sec"] < record["images_per_sec"]  # start-up is part of the system figure
    for key in ("env.host", "env.cpu_model", "env.ram_gib", "env.torch", "env.torchvision", "env.cnnbench", "env.timestamp", "env.gpu_count"):
        assert key in record
    assert f"Images/sec: {record['images_per_sec']:.1f}" in out
    # the header prints the resolved configuration and the environment
    assert "batch_size=2" in out and "torch 2." in out and "isa = " in out
    assert record["env.cpu_isa"] and record["memory_format"] == "nhwc"  # auto: channels-last on a CPU
    # memory: the process's peak on a CPU; NVML's device figure only on CUDA (recording.memory_fields)
    assert record["peak_memory_mib"] > 0 and record["device_memory_used_mib"] is None


def test_step_lines_every_display_every(cli):
    code, out, _ = cli("train", "resnet50", *TINY[:-1], "2", "--num-batches", "4")
    lines = [l.split() for l in out.splitlines() if l.strip() and l.split()[0].isdigit()]
    assert [int(l[0]) for l in lines] == [3, 5]  # steps counted from 1, warm-up step included
    assert all(len(l) == 5 for l in lines)  # step epoch img/s loss lr


def test_resume_from_checkpoint_continues_the_step_count(cli, tiny_spec):
    # The tiny spec: resuming is the same for any model, and its checkpoint is kilobytes, not 200 MB.
    code, _, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck")
    assert code == 0
    code, out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck", "--resume")
    assert code == 0 and "Resuming from checkpoint ck/checkpoint.pt at step 4" in out
    first, second = read_jsonl("results_train/runs.jsonl")
    assert (first["start_step"], first["end_step"]) == (0, 4)
    assert (second["start_step"], second["end_step"], second["resumed"]) == (4, 8, True)


def _learning_rates(out: str) -> list[float]:
    """The lr column of the step lines (step epoch img/s loss lr)."""
    return [float(l.split()[4]) for l in out.splitlines() if len(l.split()) == 5 and l.split()[0].isdigit()]


def test_a_rerun_into_the_same_log_dir_starts_fresh_without_resume(cli, tiny_spec):
    """Issue 24: a second identical run resumed silently, at a learning rate of 0, so it measured another workload."""
    code, first_out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck")
    assert code == 0
    code, out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck")
    assert code == 0 and "Resuming" not in out
    assert "Not resuming: ck/checkpoint.pt exists and is overwritten at the end; this run starts fresh (--resume " in out
    assert "start: fresh (no checkpoint read); checkpoint saved in ck" in out
    first, second = read_jsonl("results_train/runs.jsonl")
    assert (second["start_step"], second["end_step"], second["resumed"]) == (0, 4, False)
    assert _learning_rates(out) == _learning_rates(first_out) and _learning_rates(out)[0] > 0  # the same schedule


def test_resume_continues_the_weights_at_a_learning_rate_of_its_own_steps(cli, tiny_spec):
    code, first_out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck")
    assert code == 0 and _learning_rates(first_out)[-1] == 0.0  # the first run's schedule ends at 0
    code, out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck", "--resume")
    assert code == 0 and "start: resumed from step 4 of ck/checkpoint.pt" in out
    assert _learning_rates(out)[:2] == _learning_rates(first_out)[:2] and _learning_rates(out)[0] > 0
    first, second = read_jsonl("results_train/runs.jsonl")
    assert second["resumed"] and second["initial_loss"] < first["initial_loss"]  # the trained weights continued


def test_resume_without_a_checkpoint_is_one_line(cli, tiny_spec):
    code, _, err = cli("train", tiny_spec, *TINY16, "--log-dir", "nothing_here", "--resume")
    assert code == 2 and "--resume: no checkpoint in nothing_here/checkpoint.pt" in err


def test_no_checkpoint_writes_nothing_to_the_log_dir(cli, tiny_spec, tmp_path):
    code, out, _ = cli("train", tiny_spec, *TINY16, "--log-dir", "ck", "--no-checkpoint")
    assert code == 0 and "no checkpoint written (--no-checkpoint)" in out
    assert not (tmp_path / "ck").exists() and read_jsonl("results_train/runs.jsonl")[-1]["checkpoint"] is None


def test_checkpoint_of_another_model_is_refused(cli, tiny_spec):
    assert cli("train", tiny_spec, *TINY16, "--log-dir", "ck")[0] == 0
    code, _, err = cli("train", "resnet50", *TINY, "--log-dir", "ck", "--resume")  # read only when resuming (issue 24)
    assert code == 2 and "written for model tinyNet, not resnet50" in err


def test_out_of_memory_is_recorded_with_its_own_exit_code(cli, monkeypatch):
    import cnnbench.backends.pytorch.training as training

    def exploding_step(*args, **kwargs):
        def step():
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step

    monkeypatch.setattr(training, "make_train_step", exploding_step)
    code, _, err = cli("train", "resnet50", *TINY)
    assert code == errors.EXIT_OUT_OF_MEMORY == 3
    assert "out of memory at batch size 2" in err and "Traceback" not in err
    assert read_jsonl("results_train/runs.jsonl")[-1]["status"] == "oom"


def test_ctrl_c_prints_statistics_of_completed_steps_and_exits_130(cli, monkeypatch):
    import cnnbench.backends.pytorch.training as training

    real = training.make_train_step

    def interrupted_after_three(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped():
            calls.append(1)
            if len(calls) == 4:  # warm-up step, two steady steps, then Ctrl-C
                raise KeyboardInterrupt
            return step()
        return wrapped

    monkeypatch.setattr(training, "make_train_step", interrupted_after_three)
    code, out, _ = cli("train", "resnet50", *TINY[:5], "10", *TINY[6:])
    assert code == 130
    assert "Images/sec:" in out
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["status"] == "interrupted" and record["steady_steps"] == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(cli, precision):
    code, _, err = cli("train", "resnet50", *TINY, "--image-size", "32", "--precision", precision, "--channels-last")
    if code == 2 and "not supported by this PyTorch build" in err:
        pytest.skip(err)
    assert code == 0, err
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["precision"] == precision and record["channels_last"] is True and record["memory_format"] == "nhwc"
    assert isinstance(record["final_loss"], float) and math.isfinite(record["final_loss"])


def test_compile_keeps_compilation_out_of_the_steady_state(cli, tiny_spec):
    code, _, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "4", "--num-batches", "3",
                       "--warmup", "1", "--compile")
    assert code == 0, err
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["compile"] is True and record["compile_seconds"] == record["warmup_seconds"][0]
    assert max(record["steady_seconds"]) < record["compile_seconds"]  # the first (compiling) step is warm-up


def test_a_loss_that_is_not_finite_ends_the_record_as_diverged(cli, tiny_spec):
    code, out, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "4", "--num-batches", "4",
                         "--warmup", "1", "--learning-rate", "1e30", "--log-dir", "ck")
    assert code == errors.EXIT_RUN_FAILED
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["status"] == "diverged" and "not a finite number" in record["reason"]
    assert record["final_loss"] is None  # NaN is no JSON number: a missing figure
    assert record["images_per_sec"] > 0 and record["steady_steps"] == 4  # the speed figures stand
    assert record["checkpoint"] is None and not (Path("ck") / "checkpoint.pt").exists()
    assert "training diverged" in out


def test_memory_format_flag_and_its_channels_last_alias(cli, tiny_spec):
    for flags, expected in ((["--memory-format", "nchw"], "nchw"), (["--channels-last"], "nhwc"), ([], "nhwc")):
        code, _, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "2", "--num-batches", "1",
                           "--warmup", "0", "--log-dir", f"ck{len(flags)}{expected}", *flags)
        assert code == 0, err
        assert read_jsonl("results_train/runs.jsonl")[-1]["memory_format"] == expected


def test_spec_training_section_sets_the_augmentation_and_flags_win(tiny_spec, tmp_path):
    from cnnbench.backends.pytorch import distributed, training
    from cnnbench.core.config import DataConfig, TrainConfig
    from cnnbench.models.registry import resolve_entry

    spec = json.loads(tiny_spec.read_text())
    spec["training"].update(flip=0.0, min_crop_scale=0.5)
    path = tmp_path / "digits.json"
    path.write_text(json.dumps(spec))
    entry = resolve_entry(str(path))
    world = distributed.World()
    data, _ = training.data_for(TrainConfig(model=str(path), data=DataConfig(data_dir="d")), entry, world)
    assert (data.flip, data.min_crop_scale) == (0.0, 0.5)
    data, _ = training.data_for(TrainConfig(model=str(path), data=DataConfig(data_dir="d", flip=0.25)), entry, world)
    assert (data.flip, data.min_crop_scale) == (0.25, 0.5)
    data, _ = training.data_for(TrainConfig(model="resnet50", data=DataConfig(data_dir="d")), resolve_entry("resnet50"), world)
    assert (data.flip, data.min_crop_scale) == (0.5, 0.08)  # torchvision's ImageNet recipe


def test_sigterm_stops_after_the_current_step_and_records_what_completed(cli, tiny_spec, monkeypatch):
    """What timeout, SLURM and Kubernetes send: the completed steps are printed and recorded, exit 143.
    In this process: the real signal, sent to it from inside the fifth step (a warm-up step, then steady
    ones), reaches the handler cnnbench.cli.main sets. A process's exit status 143 on SIGTERM is checked
    end to end in tests/test_faults.py (inference; the launcher of a 2-rank training job)."""
    import cnnbench.backends.pytorch.training as training

    real = training.make_train_step

    def signalled_in_the_fifth_step(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped():
            calls.append(1)
            if len(calls) == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return step()
        return wrapped

    monkeypatch.setattr(training, "make_train_step", signalled_in_the_fifth_step)
    code, out, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "2", "--num-batches", "100000",
                         "--warmup", "1", "--display-every", "1")
    assert code == 143, err
    assert "Images/sec:" in out and "Traceback" not in err
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["status"] == "terminated" and record["steady_steps"] >= 3
    assert record["checkpoint"] is None


# ---------------------------------------------------------------- the timed loop and the display (issue 10)


def test_device_work_queued_after_a_step_is_synchronised_before_the_next_clock_read(monkeypatch):
    """On CUDA a kernel queued after a step's clock stopped (inference counts accuracy on the device in
    its display callback) would run inside the next timed step. A fake device counts the work queued
    and not yet synchronised; every clock read of the loop must find none."""
    from cnnbench.core import timing

    queued = [0]
    reads: list[int] = []  # the work in flight at each clock read

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            reads.append(queued[0])
            return float(len(reads))

    def step():
        queued[0] += 1  # the step's kernels

    def synchronize():
        queued[0] = 0

    def after_step(index, steady, output, seconds):
        queued[0] += 1  # e.g. Accuracy.add: topk, compare, sum, queued without a host read

    monkeypatch.setattr(timing, "time", Clock)
    times = timing.measure(step, synchronize, warmup=2, max_steps=3, after_step=after_step)
    assert len(times.warmup_seconds) == 2 and len(times.steady_seconds) == 3
    assert len(reads) == 2 * 5 and reads == [0] * 10


def test_training_display_reads_the_loss_on_the_host_and_queues_nothing():
    """The training display's only tensor operation is `.item()` at a display step, a read that waits
    for the loss: it leaves no device work behind for the next timed step."""
    from types import SimpleNamespace

    import torch
    from torch.overrides import TorchFunctionMode

    from cnnbench.recipes.training import StepDisplay

    class Calls(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    display = StepDisplay(2, 4, 0, 100, lambda: 0.1, SimpleNamespace(advance=lambda: None))
    losses = [torch.tensor(float(i)) for i in range(5)]
    with Calls() as calls:
        for index, loss in enumerate(losses):  # a warm-up step, then four steady ones: two display steps
            display(index, index > 0, loss, 0.5)
    assert calls.names == ["__float__", "__float__"]  # float(loss): the host read, at the two display steps only
    assert display.losses() == (0.0, 4.0)


# ---------------------------------------------------------------- learning rate of a data-parallel job


@pytest.mark.parametrize("model", ["resnet50", "resnet152", "googlenet", "densenet121"])
def test_n_ranks_of_batch_b_take_the_learning_rate_of_one_process_of_batch_nb(model):
    from cnnbench.core.config import MeasureConfig, TrainConfig
    from cnnbench.models.registry import resolve_entry
    from cnnbench.recipes.training import initial_learning_rate

    entry = resolve_entry(model)

    def rate(ranks: int, batch: int, **options) -> float:
        return initial_learning_rate(TrainConfig(model=model, measure=MeasureConfig(batch_size=batch), **options), entry, ranks)

    for ranks, batch in ((2, 32), (4, 16), (8, 64)):
        assert rate(ranks, batch) == rate(1, ranks * batch)
        assert rate(ranks, batch, learning_rate=0.3) == 0.3  # an explicit --learning-rate is taken as given
    if model.startswith("resnet"):  # the original's rule on the global batch: nvcnn.py's total_batch_size / 1024
        assert rate(2, 32) == 64 / 1024 != rate(1, 32)
