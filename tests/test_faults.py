"""Faults: nothing lost, nothing cryptic (issue 9).

Each section covers one kind of fault; add new cases to the section they belong to.
  1. results folder: concurrent writers, torn lines, file modes
  2. pre-flight: folders a run cannot write, found before any work
  3. saving the record when the folder fails at the end of a run
  4. checkpoints: saving into a folder that cannot take it, files that are not checkpoints
  5. --weights files of the wrong kind or for another model
  6. out of memory: advice that can work
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnbench import checkpoints, errors, reporting, results, weights
from cnnbench.models.registry import resolve_entry
from helpers import read_jsonl


def _record(model="resnet50", batch=16, **extra):
    return {"kind": "train", "model": model, "batch_size": batch, "precision": "fp32", "status": "ok",
            "system_images_per_sec": 1.0, "images_per_sec": 2.0, **extra}


@pytest.fixture
def warnings_seen(monkeypatch):
    """The warning lines the results module shows (reporting.warn), in order."""
    seen: list[str] = []
    monkeypatch.setattr(reporting, "warn", seen.append)
    monkeypatch.setattr(results, "_warned_torn", set())  # each test starts with no torn line reported
    return seen


def _one_line(message: str) -> bool:
    return "\n" not in message.strip()


# Running as an unprivileged user. Tests run as root, who ignores file permissions, so the cases that
# need a permission to be denied run a small script that drops to nobody (65534) after its imports:
# the interpreter lives under /root, which nobody cannot enter.
NOBODY = 65534
SKIP_CODE = 77


def run_as_nobody(body: str, cwd: Path) -> subprocess.CompletedProcess:
    script = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from cnnbench import errors, results\n"
        "try:\n"
        f"    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "except OSError:\n"
        f"    sys.exit({SKIP_CODE})\n"
        + body
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=120)
    if done.returncode == SKIP_CODE:
        pytest.skip("cannot switch to the nobody user here")
    return done


@pytest.fixture
def shared_dir():
    """A folder nobody can enter (pytest's tmp_path is inside root's private folder), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as nobody")
    path = Path(tempfile.mkdtemp(prefix="cnnbench-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


# --- 1. results folder: concurrent writers, torn lines, file modes ------------------------------------

def _append_many(results_dir: str, writer: int, count: int, barrier) -> None:
    barrier.wait()  # every writer starts at once, so the appends really interleave
    for i in range(count):
        results.append_record(Path(results_dir), _record(writer=writer, index=i))


def test_concurrent_appends_keep_every_record(tmp_path):
    writers, count = 4, 25
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(writers)
    procs = [context.Process(target=_append_many, args=(str(tmp_path), w, count, barrier)) for w in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * writers
    records = read_jsonl(tmp_path / "runs.jsonl")
    assert sorted((r["writer"], r["index"]) for r in records) == [(w, i) for w in range(writers) for i in range(count)]
    # The tables were rebuilt under the lock from every line: the last rebuild saw all 100.
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + writers * count


def test_a_torn_last_line_is_skipped_and_the_next_record_starts_on_its_own_line(tmp_path, warnings_seen):
    results.append_record(tmp_path, _record(batch=16))
    with open(tmp_path / "runs.jsonl", "a") as handle:
        handle.write('{"kind": "train", "model": "resn')  # a crash mid-write: no newline
    results.append_record(tmp_path, _record(batch=32))
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert lines[1] == '{"kind": "train", "model": "resn'
    assert json.loads(lines[2])["batch_size"] == 32
    assert [r["batch_size"] for r in results.read_records(tmp_path)] == [16, 32]
    assert warnings_seen == [f"{tmp_path / 'runs.jsonl'}: skipped 1 torn line (not a JSON record): line 2"]
    assert "batch 32" in (tmp_path / "results.csv").read_text()


def test_torn_lines_anywhere_are_counted_and_reported_once(tmp_path, warnings_seen):
    good = json.dumps(_record())
    (tmp_path / "runs.jsonl").write_text(f"{good}\n\x00\x00\x00\n{good}\n[1, 2]\n{{\"model\n")
    records, torn = results.read_records_counting(tmp_path)
    assert len(records) == 2 and torn == [2, 4, 5]
    results.read_records(tmp_path)
    results.read_records(tmp_path)  # a sweep reads the folder after every run: one warning, not one per read
    assert len(warnings_seen) == 1 and warnings_seen[0].endswith("skipped 3 torn lines (not a JSON record): lines 2, 4, 5")


def test_appending_never_parses_what_is_there(tmp_path, warnings_seen):
    (tmp_path / "runs.jsonl").write_text("not json at all\n")
    results.append_record(tmp_path, _record())
    assert (tmp_path / "runs.jsonl").read_text().splitlines()[1] == json.dumps(_record())
    assert results.read_records(tmp_path) == [_record()]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        results.append_record(tmp_path / "out", _record())
        results.atomic_write_text(tmp_path / "out" / "notes.txt", "x")
    finally:
        os.umask(previous)
    for name in ["runs.jsonl", "runs.csv", "results.csv", results.LOCK_FILE, "notes.txt"]:
        assert oct((tmp_path / "out" / name).stat().st_mode & 0o777) == oct(mode), name


# --- 2. pre-flight: folders a run cannot write ----------------------------------------------------------

def test_preflight_accepts_a_folder_that_does_not_exist_yet_and_creates_nothing(tmp_path):
    results.ensure_writable(tmp_path / "a" / "b", "--results-dir")
    results.ensure_writable(tmp_path, "--log-dir")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--results-dir", "--log-dir"])
def test_preflight_refuses_a_regular_file_in_the_folders_place(tmp_path, option):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(errors.UsageError) as info:
        results.ensure_writable(tmp_path / "taken", option)
    message = str(info.value)
    assert message == f"{option} {tmp_path / 'taken'} is a file; remove it or give {option} another folder"
    assert info.value.exit_code == 2
    with pytest.raises(errors.UsageError, match="cannot be created: .* is a file"):
        results.ensure_writable(tmp_path / "taken" / "sub", option)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.UsageError, match="dangling is not a folder; remove it"):
        results.ensure_writable(tmp_path / "dangling", option)


def test_preflight_refuses_a_read_only_folder_as_an_unprivileged_user(shared_dir):
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    done = run_as_nobody(
        "for target in ['locked', 'locked/new/deeper', '.']:\n"
        "    try:\n"
        "        results.ensure_writable(Path(target), '--results-dir')\n"
        "        print(json.dumps([target, 'ok']))\n"
        "    except errors.UsageError as exc:\n"
        "        print(json.dumps([target, str(exc)]))\n",
        cwd=shared_dir,
    )
    assert done.returncode == 0, done.stderr
    outcome = dict(json.loads(line) for line in done.stdout.splitlines())
    assert outcome["locked"] == (f"--results-dir locked: cannot write in {locked} (Permission denied); "
                                 "give --results-dir a folder you can write to")
    assert outcome["locked/new/deeper"].startswith(f"--results-dir locked/new/deeper: cannot write in {locked} ")
    assert "cannot write in" in outcome["."]  # shared_dir is root's, 0755: nobody cannot write there either
    assert list(locked.iterdir()) == []


# --- 3. saving the record when the folder fails at the end of a run -------------------------------------

def test_save_record_appends_when_it_can(tmp_path):
    assert results.save_record(tmp_path / "res", _record()) == tmp_path / "res" / "runs.jsonl"
    assert read_jsonl(tmp_path / "res" / "runs.jsonl") == [_record()]


def test_a_results_folder_replaced_by_a_file_sends_the_record_to_a_fallback_file(tmp_path):
    res = tmp_path / "res"
    results.ensure_writable(res, "--results-dir")  # the pre-flight passed ...
    res.write_text("someone put a file here")      # ... then the folder went away
    record = _record(images_per_sec=float("nan"))
    with pytest.raises(errors.RecordNotSaved) as info:
        results.save_record(res, record)
    exc = info.value
    assert exc.exit_code == errors.EXIT_RUN_FAILED == 4
    assert exc.fallback.parent == tmp_path and exc.fallback.name.startswith("cnnbench-record-")
    assert json.loads(exc.fallback.read_text()) == {**record, "images_per_sec": None}
    message = str(exc)
    assert _one_line(message)
    assert f"could not add the run's record to {res / 'runs.jsonl'} (FileExistsError:" in message
    assert f"saved it to {exc.fallback} instead" in message


def test_a_full_disk_with_the_current_folder_gone_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    def disk_full(path, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "_append_line", disk_full)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(errors.RecordNotSaved, match=r"\(OSError: \[Errno 28\] No space left on device\)") as info:
        results.save_record(tmp_path / "res", _record())
    assert info.value.fallback.parent == tmp_path / "tmp"
    assert json.loads(info.value.fallback.read_text()) == _record()


def test_two_fallbacks_in_the_same_second_get_two_files(tmp_path):
    first, second = results.write_fallback('{"a": 1}\n'), results.write_fallback('{"a": 2}\n')
    assert first != second and first.parent == second.parent == tmp_path
    assert (first.read_text(), second.read_text()) == ('{"a": 1}\n', '{"a": 2}\n')


def test_with_no_fallback_either_the_record_itself_is_in_the_message(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_append_line", lambda path, line: (_ for _ in ()).throw(PermissionError(13, "denied")))
    monkeypatch.setattr(results, "write_fallback", lambda line: None)
    with pytest.raises(errors.RecordNotSaved) as info:
        results.save_record(tmp_path, _record(model="googlenet"))
    message = str(info.value)
    assert _one_line(message) and info.value.fallback is None
    assert message.endswith("no fallback file could be written either; the record: " + json.dumps(_record(model="googlenet")))


def test_save_record_into_a_folder_nobody_may_write(shared_dir):
    res = shared_dir / "res"
    results.append_record(res, _record(batch=16))  # root's folder and files, 0755 and 0644
    work = shared_dir / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    done = run_as_nobody(
        "try:\n"
        f"    results.save_record(Path({str(res)!r}), {{'model': 'googlenet', 'batch_size': 32, 'status': 'ok'}})\n"
        "except errors.RecordNotSaved as exc:\n"
        "    print(exc.exit_code, exc.fallback, exc, sep='\\n')\n",
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    code, fallback, message = done.stdout.splitlines()
    assert code == "4" and Path(fallback).parent == work
    assert json.loads(Path(fallback).read_text())["model"] == "googlenet"
    assert "(PermissionError: [Errno 13] Permission denied" in message and f"saved it to {fallback}" in message
    assert [r["batch_size"] for r in read_jsonl(res / "runs.jsonl")] == [16]


def test_tables_that_cannot_be_rebuilt_are_a_warning_once_the_record_is_kept(tmp_path, monkeypatch, warnings_seen):
    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "write_tables", no_space)
    assert results.save_record(tmp_path, _record()) == tmp_path / "runs.jsonl"
    assert read_jsonl(tmp_path / "runs.jsonl") == [_record()]  # kept once, not also in a fallback file
    assert warnings_seen == [f"record kept in {tmp_path / 'runs.jsonl'}, but the tables were not rebuilt "
                             "([Errno 28] No space left on device)"]


# --- 4. checkpoints ------------------------------------------------------------------------------------

def _training_state():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}


def test_checkpoint_into_a_log_dir_that_is_a_file_is_one_line_naming_the_option(tmp_path):
    (tmp_path / "log").write_text("a file")
    with pytest.raises(errors.CheckpointNotSaved) as info:
        checkpoints.save(tmp_path / "log", model_name="tinyNet", step=3, **_training_state())
    assert info.value.exit_code == 4 and _one_line(str(info.value))
    assert str(info.value).startswith(f"cannot save the checkpoint {tmp_path / 'log' / 'checkpoint.pt'} (FileExistsError:")
    assert str(info.value).endswith("free some space or give --log-dir a folder you can write to")


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    state = _training_state()
    path = checkpoints.save(tmp_path, model_name="tinyNet", step=3, **state)

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(errors.CheckpointNotSaved, match=r"\(OSError: \[Errno 28\] No space left on device\)"):
        checkpoints.save(tmp_path, model_name="tinyNet", step=6, **state)
    assert checkpoints.load(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_checkpoint_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = checkpoints.save(tmp_path, model_name="tinyNet", step=1, **_training_state())
    finally:
        os.umask(previous)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_log_dir_file_that_is_not_a_checkpoint_is_named(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "checkpoint.pt")
    state = checkpoints.load(tmp_path / "checkpoint.pt")
    with pytest.raises(errors.UsageError) as info:
        checkpoints.check_model(state, "tinyNet", tmp_path / "checkpoint.pt")
    assert str(info.value) == (f"{tmp_path / 'checkpoint.pt'} is not a cnnbench checkpoint (it holds a list of 1 items); "
                               "delete it or point --log-dir elsewhere")


# --- 5. --weights files of the wrong kind or for another model ------------------------------------------

class Pickled:  # a class: torch.load with weights_only refuses to rebuild it
    pass


@pytest.fixture
def tiny_entry(tiny_spec):
    return resolve_entry(str(tiny_spec))


def _resolve_file(entry, path, log_dir="nowhere"):
    return weights.resolve(entry, weights_file=str(path), pretrained=False, random_weights=False, log_dir=Path(log_dir))


EXPECTED = ("expected a state_dict (a dict of tensor names to tensors, as torch.save(model.state_dict(), FILE) "
            "writes) or a cnnbench checkpoint; give --weights such a file")

WRONG_KIND = [
    ("list", [torch.zeros(2), torch.ones(2)], "holds a list of 2 items; " + EXPECTED),
    ("tensor", torch.zeros(3, 4), "holds a bare tensor of shape (3, 4); " + EXPECTED),
    ("empty", {}, "holds an empty dict; " + EXPECTED),
    ("numbers", {"epoch": 3, "w": torch.zeros(1)}, "holds a dict with keys 'epoch', 'w', whose entry 'epoch' is an int, not a tensor; " + EXPECTED),
]


@pytest.mark.parametrize("name, content, message", WRONG_KIND, ids=[w[0] for w in WRONG_KIND])
def test_a_weights_file_of_the_wrong_kind_says_what_it_holds(tmp_path, tiny_entry, name, content, message):
    torch.save(content, tmp_path / f"{name}.pt")
    with pytest.raises(errors.UsageError) as info:
        _resolve_file(tiny_entry, tmp_path / f"{name}.pt")
    assert str(info.value) == f"--weights {tmp_path / f'{name}.pt'} {message}"


def test_a_weights_checkpoint_of_another_model_names_that_model_and_weights(tmp_path, tiny_entry):
    checkpoints.save(tmp_path / "ck", model_name="resnet50", step=3, **_training_state())
    path = tmp_path / "ck" / "checkpoint.pt"
    with pytest.raises(errors.UsageError) as info:
        _resolve_file(tiny_entry, path)
    assert str(info.value) == (f"checkpoint {path} was written for model resnet50, not tinyNet; "
                               "give --weights a file written for tinyNet")
    # The same checkpoint found through --log-dir keeps the --log-dir advice.
    with pytest.raises(errors.UsageError, match="not tinyNet; use another --log-dir$"):
        weights.resolve(tiny_entry, weights_file=None, pretrained=False, random_weights=False, log_dir=tmp_path / "ck")


def test_a_state_dict_of_another_network_says_the_tensors_do_not_match(tmp_path, tiny_entry):
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    chosen = _resolve_file(tiny_entry, tmp_path / "linear.pt")
    with pytest.raises(errors.UsageError) as info:
        weights.load_into(tiny_entry.build(16), tiny_entry, chosen)
    message = str(info.value)
    assert message.startswith(f"file {tmp_path / 'linear.pt'} does not fit tinyNet: tensor ")
    assert "tensors differ); its tensor names or shapes do not match the model; " in message
    assert message.endswith("give --weights a state_dict or checkpoint written for tinyNet")
    assert "--log-dir" not in message


def test_a_pickle_with_code_is_refused_without_suggesting_an_unsafe_load(tmp_path, tiny_entry):
    torch.save({"w": Pickled()}, tmp_path / "pickled.pt")
    with pytest.raises(errors.UsageError) as info:
        _resolve_file(tiny_entry, tmp_path / "pickled.pt")
    message = str(info.value)
    assert _one_line(message) and "weights_only" not in message and "False" not in message
    assert message.startswith(f"{tmp_path / 'pickled.pt'} is not a plain state_dict or checkpoint: it holds Python objects, "
                              "which cnnbench never unpickles")
    assert message.endswith("give --weights a state_dict (torch.save(model.state_dict(), FILE)) or a cnnbench checkpoint")


def test_a_truncated_weights_file_is_one_line(tmp_path, tiny_entry):
    torch.save(tiny_entry.build(16).state_dict(), tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200])
    with pytest.raises(errors.UsageError) as info:
        _resolve_file(tiny_entry, tmp_path / "cut.pt")
    assert _one_line(str(info.value)) and str(info.value).startswith(f"cannot read {tmp_path / 'cut.pt'} as a PyTorch file (")


WEIGHTS_ON_THE_COMMAND_LINE = [
    ("list.pt", [torch.zeros(2)], "holds a list of 1 items; expected a state_dict"),
    ("pickled.pt", {"w": Pickled()}, "is not a plain state_dict or checkpoint"),
]


@pytest.mark.parametrize("name, content, message", WEIGHTS_ON_THE_COMMAND_LINE, ids=[w[0] for w in WEIGHTS_ON_THE_COMMAND_LINE])
def test_bad_weights_on_the_command_line_exit_2_with_one_line(cli, tiny_spec, name, content, message):
    torch.save(content, name)
    code, out, err = cli("infer", tiny_spec, "--weights", name, "--image-size", "16", "--batch-size", "2")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


# --- 6. out of memory -----------------------------------------------------------------------------------

def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_batch_one_estimate_counts_parameters_and_activations():
    parameters = (3 * 4 * 9 + 4) + (256 * 10 + 10)
    image, conv, relu, flat, linear = 3 * 64, 256, 256, 256, 10
    # training: weights, gradients and momentum, and every leaf's output kept for the backward pass
    assert errors.batch_one_bytes(_small_net, 8, training=True) == 3 * 4 * parameters + 4 * (image + conv + relu + flat + linear)
    # inference: the weights and about two activations at a time
    assert errors.batch_one_bytes(_small_net, 8, training=False) == 4 * parameters + 4 * (image + 2 * conv)
    assert errors.batch_one_bytes(_small_net, 8, training=False, bytes_per_value=2) == 4 * parameters + 2 * (image + 2 * conv)


def test_the_estimate_runs_on_the_meta_device_and_grows_with_the_image(tiny_entry):
    small = errors.batch_one_bytes(lambda: tiny_entry.build(16), 16, training=True)
    large = errors.batch_one_bytes(lambda: tiny_entry.build(64), 64, training=True)
    assert 0 < small < large
    # 100,000 px would need over 100 GB for the input alone; on the meta device it costs nothing.
    assert errors.batch_one_bytes(lambda: tiny_entry.build(100_000), 100_000, training=False) > 3 * 100_000**2 * 4


def test_oom_advice_is_the_image_size_when_batch_1_cannot_fit(tiny_entry):
    huge = errors.out_of_memory(2, build=lambda: tiny_entry.build(100_000), image_size=100_000, device="cpu")
    message = str(huge)
    assert isinstance(huge, errors.OutOfMemory) and huge.exit_code == 3 and _one_line(message)
    assert message.startswith("out of memory at batch size 2; batch 1 alone needs at least ")
    assert "reduce --image-size (now 100000) or use a smaller model or spec, not the batch size" in message
    assert "smaller --batch-size" not in message
    fits = errors.out_of_memory(2, build=lambda: tiny_entry.build(16), image_size=16, device="cpu")
    assert str(fits) == "out of memory at batch size 2; try a smaller --batch-size"


def test_oom_advice_falls_back_to_the_batch_when_nothing_is_known():
    def broken():
        raise RuntimeError("this network cannot be built on the meta device")

    assert str(errors.out_of_memory(4, build=broken, image_size=64, device="cpu")) == \
        "out of memory at batch size 4; try a smaller --batch-size"
    assert str(errors.out_of_memory(4, detail="CUDA")) == "out of memory at batch size 4 (CUDA); try a smaller --batch-size"
    assert str(errors.OutOfMemory(8, hint="reduce --image-size")) == "out of memory at batch size 8; reduce --image-size"


def test_available_memory_is_the_whole_device():
    assert errors.available_bytes("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        assert errors.available_bytes("cuda:0") == torch.cuda.get_device_properties(0).total_memory
    assert errors.available_bytes("meta") is None
