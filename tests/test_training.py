import pytest

from cnnbench import errors
from helpers import TINY, read_jsonl


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
    assert "measure.batch_size = 2" in out and "torch = " in out


def test_step_lines_every_display_every(cli):
    code, out, _ = cli("train", "resnet50", *TINY[:-1], "2", "--num-batches", "4")
    lines = [l.split() for l in out.splitlines() if l.strip() and l.split()[0].isdigit()]
    assert [int(l[0]) for l in lines] == [3, 5]  # steps counted from 1, warm-up step included
    assert all(len(l) == 5 for l in lines)  # step epoch img/s loss lr


def test_resume_from_checkpoint_continues_the_step_count(cli):
    code, _, _ = cli("train", "resnet50", *TINY, "--log-dir", "ck")
    assert code == 0
    code, out, _ = cli("train", "resnet50", *TINY, "--log-dir", "ck")
    assert code == 0 and "Resuming from checkpoint ck/checkpoint.pt at step 4" in out
    first, second = read_jsonl("results_train/runs.jsonl")
    assert (first["start_step"], first["end_step"]) == (0, 4)
    assert (second["start_step"], second["end_step"], second["resumed"]) == (4, 8, True)


def test_checkpoint_of_another_model_is_refused(cli):
    cli("train", "resnet50", *TINY, "--log-dir", "ck")
    code, _, err = cli("train", "googlenet", *TINY, "--log-dir", "ck")
    assert code == 2 and "written for model resnet50, not googlenet" in err


def test_out_of_memory_is_recorded_with_its_own_exit_code(cli, monkeypatch):
    import cnnbench.training as training

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
    import cnnbench.training as training

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
    code, _, err = cli("train", "resnet50", *TINY, "--precision", precision, "--channels-last")
    if code == 2 and "not supported by this PyTorch build" in err:
        pytest.skip(err)
    assert code == 0, err
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["precision"] == precision and record["channels_last"] is True
    assert record["final_loss"] == pytest.approx(record["final_loss"])  # finite, not NaN


def test_compile_keeps_compilation_out_of_the_steady_state(cli, tiny_spec):
    code, _, err = cli("train", tiny_spec, "--image-size", "16", "--batch-size", "4", "--num-batches", "3",
                       "--warmup", "1", "--compile")
    assert code == 0, err
    record = read_jsonl("results_train/runs.jsonl")[-1]
    assert record["compile"] is True and record["compile_seconds"] == record["warmup_seconds"][0]
    assert max(record["steady_seconds"]) < record["compile_seconds"]  # the first (compiling) step is warm-up
