"""Faults: nothing lost, nothing cryptic (issue 9).

Each section covers one kind of fault; add new cases to the section they belong to.
  1. results folder: concurrent writers, torn lines, file modes
  2. pre-flight: folders a run cannot write, found before any work
  3. saving the record when the folder fails at the end of a run
  4. checkpoints: saving into a folder that cannot take it, files that are not checkpoints
  5. --weights files of the wrong kind or for another model
  6. out of memory: advice that can work
  7. end to end through the command line: bad options, folders, weights, model lists, signals (infer,
     a distributed job), a torn results file, unwritable folders as an unprivileged user
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnbench.backends.pytorch import checkpoints, weights
from cnnbench.recipes import run_record

from cnnbench.core import errors, files, memory, store, terminal
from cnnbench.models.registry import resolve_entry
from conftest import TINY_SPEC
from helpers import read_jsonl


def _record(model="resnet50", batch=16, **extra):
    return {"kind": "train", "model": model, "batch_size": batch, "precision": "fp32", "status": "ok",
            "system_images_per_sec": 1.0, "images_per_sec": 2.0, **extra}


def _written(**fields) -> dict:
    """_record as a results folder keeps it: every record names its schema's version first."""
    return {"schema_version": store.SCHEMA_VERSION, **_record(**fields)}


@pytest.fixture
def warnings_seen(monkeypatch):
    """The warning lines the results module shows (terminal.warn), in order."""
    seen: list[str] = []
    monkeypatch.setattr(terminal, "warn", seen.append)
    monkeypatch.setattr(store, "_warned_torn", set())  # each test starts with no torn line reported
    return seen


def _one_line(message: str) -> bool:
    return "\n" not in message.strip()


# Running as an unprivileged user. Tests run as root, who ignores file permissions, so the cases that
# need a permission to be denied run a small script that drops to nobody (65534) after its imports:
# the interpreter lives under /root, which nobody cannot enter.
NOBODY = 65534
SKIP_CODE = 77


def run_as_nobody(body: str, cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """Run `body` as nobody; `prelude` runs before the switch (imports nobody could not read)."""
    script = (
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from cnnbench.core import errors, files, store\n"
        + prelude
        + "try:\n"
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
        store.append_record(Path(results_dir), _record(writer=writer, index=i))


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
    store.append_record(tmp_path, _record(batch=16))
    with open(tmp_path / "runs.jsonl", "a") as handle:
        handle.write('{"kind": "train", "model": "resn')  # a crash mid-write: no newline
    store.append_record(tmp_path, _record(batch=32))
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert lines[1] == '{"kind": "train", "model": "resn'
    assert json.loads(lines[2])["batch_size"] == 32
    assert [r["batch_size"] for r in store.read_records(tmp_path)] == [16, 32]
    assert warnings_seen == [f"{tmp_path / 'runs.jsonl'}: skipped 1 torn line (not a JSON record): line 2"]
    assert "batch 32" in (tmp_path / "results.csv").read_text()


def test_torn_lines_anywhere_are_counted_and_reported_once(tmp_path, warnings_seen):
    good = json.dumps(_record())
    (tmp_path / "runs.jsonl").write_text(f"{good}\n\x00\x00\x00\n{good}\n[1, 2]\n{{\"model\n")
    records, torn = store.read_records_counting(tmp_path)
    assert len(records) == 2 and torn == [2, 4, 5]
    store.read_records(tmp_path)
    store.read_records(tmp_path)  # a sweep reads the folder after every run: one warning, not one per read
    assert len(warnings_seen) == 1 and warnings_seen[0].endswith("skipped 3 torn lines (not a JSON record): lines 2, 4, 5")


def test_appending_never_parses_what_is_there(tmp_path, warnings_seen):
    (tmp_path / "runs.jsonl").write_text("not json at all\n")
    store.append_record(tmp_path, _record())
    written = _written()
    assert (tmp_path / "runs.jsonl").read_text().splitlines()[1] == json.dumps(written)
    assert store.read_records(tmp_path) == [written]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store.append_record(tmp_path / "out", _record())
        files.atomic_write_text(tmp_path / "out" / "notes.txt", "x")
    finally:
        os.umask(previous)
    for name in ["runs.jsonl", "runs.csv", "results.csv", store.LOCK_FILE, "notes.txt"]:
        assert oct((tmp_path / "out" / name).stat().st_mode & 0o777) == oct(mode), name


# --- 2. pre-flight: folders a run cannot write ----------------------------------------------------------

def test_preflight_accepts_a_folder_that_does_not_exist_yet_and_creates_nothing(tmp_path):
    files.ensure_writable(tmp_path / "a" / "b", "--results-dir")
    files.ensure_writable(tmp_path, "--log-dir")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--results-dir", "--log-dir"])
def test_preflight_refuses_a_regular_file_in_the_folders_place(tmp_path, option):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(errors.UsageError) as info:
        files.ensure_writable(tmp_path / "taken", option)
    message = str(info.value)
    assert message == f"{option} {tmp_path / 'taken'} is a file; remove it or give {option} another folder"
    assert info.value.exit_code == 2
    with pytest.raises(errors.UsageError, match="cannot be created: .* is a file"):
        files.ensure_writable(tmp_path / "taken" / "sub", option)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(errors.UsageError, match="dangling is not a folder; remove it"):
        files.ensure_writable(tmp_path / "dangling", option)


def test_preflight_refuses_a_read_only_folder_as_an_unprivileged_user(shared_dir):
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    done = run_as_nobody(
        "for target in ['locked', 'locked/new/deeper', '.']:\n"
        "    try:\n"
        "        files.ensure_writable(Path(target), '--results-dir')\n"
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
    assert store.save_record(tmp_path / "res", _record()) == tmp_path / "res" / "runs.jsonl"
    assert read_jsonl(tmp_path / "res" / "runs.jsonl") == [_written()]


def test_a_results_folder_replaced_by_a_file_sends_the_record_to_a_fallback_file(tmp_path):
    res = tmp_path / "res"
    files.ensure_writable(res, "--results-dir")  # the pre-flight passed ...
    res.write_text("someone put a file here")      # ... then the folder went away
    record = _record(images_per_sec=float("nan"))
    with pytest.raises(errors.RecordNotSaved) as info:
        store.save_record(res, record)
    exc = info.value
    assert exc.exit_code == errors.EXIT_RUN_FAILED == 4
    assert exc.fallback.parent == tmp_path and exc.fallback.name.startswith("cnnbench-record-")
    assert json.loads(exc.fallback.read_text()) == {"schema_version": store.SCHEMA_VERSION, **record, "images_per_sec": None}
    message = str(exc)
    assert _one_line(message)
    assert f"could not add the run's record to {res / 'runs.jsonl'} (FileExistsError:" in message
    assert f"saved it to {exc.fallback} instead" in message


def test_a_full_disk_with_the_current_folder_gone_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    def disk_full(path, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "append_line", disk_full)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(errors.RecordNotSaved, match=r"\(OSError: \[Errno 28\] No space left on device\)") as info:
        store.save_record(tmp_path / "res", _record())
    assert info.value.fallback.parent == tmp_path / "tmp"
    assert json.loads(info.value.fallback.read_text()) == _written()


def test_two_fallbacks_in_the_same_second_get_two_files(tmp_path):
    first, second = files.write_fallback('{"a": 1}\n'), files.write_fallback('{"a": 2}\n')
    assert first != second and first.parent == second.parent == tmp_path
    assert (first.read_text(), second.read_text()) == ('{"a": 1}\n', '{"a": 2}\n')


def test_with_no_fallback_either_the_record_itself_is_in_the_message(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "append_line", lambda path, line: (_ for _ in ()).throw(PermissionError(13, "denied")))
    monkeypatch.setattr(files, "write_fallback", lambda line: None)
    with pytest.raises(errors.RecordNotSaved) as info:
        store.save_record(tmp_path, _record(model="googlenet"))
    message = str(info.value)
    assert _one_line(message) and info.value.fallback is None
    assert message.endswith("no fallback file could be written either; the record: " + json.dumps(_written(model="googlenet")))


def test_save_record_into_a_folder_nobody_may_write(shared_dir):
    res = shared_dir / "res"
    store.append_record(res, _record(batch=16))  # root's folder and files, 0755 and 0644
    work = shared_dir / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    done = run_as_nobody(
        "try:\n"
        f"    store.save_record(Path({str(res)!r}), {{'model': 'googlenet', 'batch_size': 32, 'status': 'ok'}})\n"
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

    monkeypatch.setattr(store, "write_tables", no_space)
    assert store.save_record(tmp_path, _record()) == tmp_path / "runs.jsonl"
    assert read_jsonl(tmp_path / "runs.jsonl") == [_written()]  # kept once, not also in a fallback file
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
    assert memory.batch_one_bytes(_small_net, 8, training=True) == 3 * 4 * parameters + 4 * (image + conv + relu + flat + linear)
    # inference: the weights and about two activations at a time
    assert memory.batch_one_bytes(_small_net, 8, training=False) == 4 * parameters + 4 * (image + 2 * conv)
    assert memory.batch_one_bytes(_small_net, 8, training=False, bytes_per_value=2) == 4 * parameters + 2 * (image + 2 * conv)


def test_the_estimate_runs_on_the_meta_device_and_grows_with_the_image(tiny_entry):
    small = memory.batch_one_bytes(lambda: tiny_entry.build(16), 16, training=True)
    large = memory.batch_one_bytes(lambda: tiny_entry.build(64), 64, training=True)
    assert 0 < small < large
    # 100,000 px would need over 100 GB for the input alone; on the meta device it costs nothing.
    assert memory.batch_one_bytes(lambda: tiny_entry.build(100_000), 100_000, training=False) > 3 * 100_000**2 * 4


def test_oom_advice_is_the_image_size_when_batch_1_cannot_fit(tiny_entry):
    huge = memory.out_of_memory(2, build=lambda: tiny_entry.build(100_000), image_size=100_000, device="cpu")
    message = str(huge)
    assert isinstance(huge, errors.OutOfMemory) and huge.exit_code == 3 and _one_line(message)
    assert message.startswith("out of memory at batch size 2; batch 1 alone needs at least ")
    assert "reduce --image-size (now 100000) or use a smaller model or spec, not the batch size" in message
    assert "smaller --batch-size" not in message
    fits = memory.out_of_memory(2, build=lambda: tiny_entry.build(16), image_size=16, device="cpu")
    assert str(fits) == "out of memory at batch size 2; try a smaller --batch-size"


def test_oom_advice_falls_back_to_the_batch_when_nothing_is_known():
    def broken():
        raise RuntimeError("this network cannot be built on the meta device")

    assert str(memory.out_of_memory(4, build=broken, image_size=64, device="cpu")) == \
        "out of memory at batch size 4; try a smaller --batch-size"
    assert str(memory.out_of_memory(4, detail="CUDA")) == "out of memory at batch size 4 (CUDA); try a smaller --batch-size"
    assert str(errors.OutOfMemory(8, hint="reduce --image-size")) == "out of memory at batch size 8; reduce --image-size"


def test_available_memory_is_the_whole_device():
    assert memory.available_bytes("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        assert memory.available_bytes("cuda:0") == torch.cuda.get_device_properties(0).total_memory
    assert memory.available_bytes("meta") is None


# --- 7. end to end through the command line -------------------------------------------------------------
#
# Each case runs `cnnbench ...` (in-process through the `cli` fixture, or as a real process where a signal
# or a user switch needs one) and checks what a user sees: the exit code, one line on stderr naming what to
# change, no traceback, and the record where one is due (none where the run must not start).
#
# FAULT CASES, counted as pytest cases (a parametrized case counts once per parameter set):
#   the whole file: 74 cases, all pass; sections 1-6: 37 cases; this section: 37 cases. Three defects this
#   section found were fixed with it (each case failed before its fix):
#     --image-size too large to represent (train, infer): a traceback from torch, now one line (exit 2);
#     --dist-timeout inf / 1e15: accepted, then every rank died with OverflowError; now refused (exit 2);
#     infer-all --engines '' / --precisions '': silently eager / fp32; now "--engines is empty" (exit 2).
# Update these numbers with the cases (the closing note of issue 9 quotes them).

TINY16 = ["--image-size", "16", "--batch-size", "2", "--num-batches", "2", "--warmup", "1", "--display-every", "1"]


def _one_error_line(code: int, out: str, err: str, expected_code: int = 2) -> str:
    """The single `cnnbench: error: ...` line of a refused command, after checking code and traceback."""
    assert code == expected_code, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _nothing_written(folder: Path, *, except_: tuple[str, ...] = ()) -> None:
    """No results folder, log folder, checkpoint or fallback record appeared in the current folder."""
    left = sorted(p.name for p in folder.iterdir() if p.name not in except_)
    assert left == [], left


@pytest.mark.parametrize("command", ["train", "infer"])
def test_cli_a_batch_size_beyond_64_bits_is_one_line(cli, tiny_spec, tmp_path, command):
    extra = ["--random-weights"] if command == "infer" else []
    code, out, err = cli(command, tiny_spec, "--batch-size", "99999999999999999999999", *extra)
    line = _one_error_line(code, out, err)
    assert "argument --batch-size: 99999999999999999999999 is out of range (at most 2147483647)" in line
    _nothing_written(tmp_path, except_=("tiny.json",))


@pytest.mark.parametrize("option, value", [("--batch-size", "2147483648"), ("--num-batches", "-99999999999999999999"),
                                           ("--seed", "99999999999999999999999"), ("--image-size", "1e400")])
def test_cli_integer_options_are_bounded(cli, tiny_spec, option, value):
    # One past the bound, a huge negative, the seed (handed to torch.manual_seed), a float where an int goes.
    code, out, err = cli("infer", tiny_spec, option, value, "--random-weights")
    line = _one_error_line(code, out, err)
    assert f"argument {option}: " in line


@pytest.mark.parametrize("command", ["train-all", "infer-all"])
def test_cli_a_sweep_batch_size_beyond_64_bits_is_one_line(cli, tiny_spec, tmp_path, command):
    code, out, err = cli(command, "--models", tiny_spec, "--batch-sizes", "2,99999999999999999999999")
    line = _one_error_line(code, out, err)
    assert "--batch-sizes" in line and "99999999999999999999999" in line
    _nothing_written(tmp_path, except_=("tiny.json",))


@pytest.mark.parametrize("command", ["train", "infer"])
def test_cli_an_image_size_too_large_to_represent_is_one_line(cli, tiny_spec, command):
    extra = ["--random-weights"] if command == "infer" else []
    code, out, err = cli(command, tiny_spec, "--image-size", "2147483647", "--batch-size", "1", "--num-batches", "1",
                         "--warmup", "0", *extra)
    assert code in (errors.EXIT_USAGE, errors.EXIT_OUT_OF_MEMORY)
    line = _one_error_line(code, out, err, expected_code=code)
    assert "--image-size" in line


@pytest.mark.parametrize("value", ["inf", "1e15"])
def test_cli_a_dist_timeout_that_cannot_be_represented_is_refused(cli, tiny_spec, tmp_path, value):
    code, out, err = cli("train", tiny_spec, *TINY16, "--dist-timeout", value)
    line = _one_error_line(code, out, err)
    assert "--dist-timeout" in line
    _nothing_written(tmp_path, except_=("tiny.json",))


@pytest.mark.parametrize("command", ["infer", "infer-all"])
def test_cli_a_bogus_compile_mode_is_refused_before_any_work(cli, tiny_spec, tmp_path, command):
    model = ["--models", str(tiny_spec)] if command == "infer-all" else [str(tiny_spec)]
    started = time.monotonic()
    code, out, err = cli(command, *model, "--engine" + ("s" if command == "infer-all" else ""), "compile",
                         "--compile-mode", "bogus", "--random-weights", *TINY16)
    line = _one_error_line(code, out, err)
    assert "argument --compile-mode: invalid choice: 'bogus'" in line
    assert "max-autotune-no-cudagraphs" in line  # the modes that exist are listed
    assert time.monotonic() - started < 5 and out == ""  # no header, no model built, no compilation
    _nothing_written(tmp_path, except_=("tiny.json",))


@pytest.mark.parametrize("engine", ["eager", "onnxruntime"])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_cli_a_cache_path_that_is_a_file_is_one_line_naming_the_option(cli, tiny_spec, tmp_path, engine, where):
    Path("taken").write_text("a file, not a folder")
    cache = "taken" if where == "file" else "taken/cache"
    code, out, err = cli("infer", tiny_spec, "--random-weights", "--engine", engine, "--cache-path", cache, *TINY16)
    line = _one_error_line(code, out, err)
    assert line.startswith(f"cnnbench: error: --cache-path {cache} ")
    assert "is a file" in line and "give --cache-path another folder" in line
    assert "NotADirectoryError" not in line
    assert Path("taken").read_text() == "a file, not a folder"
    _nothing_written(tmp_path, except_=("tiny.json", "taken"))


@pytest.mark.parametrize("command, option", [("train", "--results-dir"), ("train", "--log-dir"), ("infer", "--results-dir")])
def test_cli_a_results_or_log_dir_that_is_a_file_stops_the_run_before_any_step(cli, tiny_spec, tmp_path, command, option):
    Path("taken").write_text("a file")
    extra = ["--random-weights"] if command == "infer" else []
    code, out, err = cli(command, tiny_spec, *TINY16, *extra, option, "taken")
    line = _one_error_line(code, out, err)
    assert line == f"cnnbench: error: {option} taken is a file; remove it or give {option} another folder"
    assert "Images/sec" not in out and out == ""  # not one step ran: no header, no step line
    # No record anywhere (no results folder, no fallback file), no checkpoint, the file untouched.
    _nothing_written(tmp_path, except_=("tiny.json", "taken"))
    assert Path("taken").read_text() == "a file"


def _spec_with_classes(tmp_path: Path, classes: int) -> Path:
    path = tmp_path / f"tiny{classes}.json"
    path.write_text(json.dumps({**TINY_SPEC, "name": f"tiny{classes}Net", "head": {"fully_connected": {"outputs": classes}}}))
    return path


@pytest.mark.parametrize("classes", [10, 2])
def test_cli_a_head_of_few_classes_trains_and_infers_on_synthetic_data(cli, tmp_path, classes):
    spec = _spec_with_classes(tmp_path, classes)
    code, out, err = cli("train", spec, *TINY16, "--batch-size", "16", "--log-dir", "ck")
    assert code == 0, err
    assert "Traceback" not in out + err and "IndexError" not in out + err
    trained = read_jsonl("results_train/runs.jsonl")[-1]
    assert trained["status"] == "ok" and trained["model"] == f"tiny{classes}Net"
    assert trained["checkpoint"] == str(Path("ck") / "checkpoint.pt")
    code, out, err = cli("infer", spec, *TINY16, "--batch-size", "16", "--log-dir", "ck")
    assert code == 0, err
    inferred = read_jsonl("results_infer/runs.jsonl")[-1]
    assert inferred["status"] == "ok" and inferred["weights_source"] == "checkpoint"


def test_cli_weights_and_random_weights_together_are_refused(cli, tiny_spec, tmp_path):
    torch.save(resolve_entry(str(tiny_spec)).build(16).state_dict(), "w.pt")
    code, out, err = cli("infer", tiny_spec, *TINY16, "--weights", "w.pt", "--random-weights")
    line = _one_error_line(code, out, err)
    assert line == "cnnbench: error: --weights and --random-weights name different weights; give one of them"
    _nothing_written(tmp_path, except_=("tiny.json", "w.pt"))


def test_cli_random_weights_losing_to_a_checkpoint_says_so_and_records_the_truth(cli, tiny_spec):
    code, _, err = cli("train", tiny_spec, *TINY16, "--log-dir", "ck")
    assert code == 0, err
    code, out, err = cli("infer", tiny_spec, *TINY16, "--log-dir", "ck", "--random-weights")
    assert code == 0, err
    assert "Traceback" not in out + err
    warnings_ = [line for line in (out + err).splitlines() if line.startswith("WARNING:")]
    assert len(warnings_) == 1, out + err
    assert warnings_[0].startswith(f"WARNING: --random-weights: checkpoint {Path('ck') / 'checkpoint.pt'} (step ")
    assert "takes precedence" in warnings_[0] and "it is what runs" in warnings_[0]
    record = read_jsonl("results_infer/runs.jsonl")[-1]
    assert record["weights_source"] == "checkpoint"
    assert record["weights"].startswith(f"checkpoint {Path('ck') / 'checkpoint.pt'}")
    # The digest is that of the trained weights, not of a random initialisation.
    code, _, err = cli("infer", tiny_spec, *TINY16, "--log-dir", "none", "--random-weights")
    assert code == 0, err
    random_run = read_jsonl("results_infer/runs.jsonl")[-1]
    assert random_run["weights_source"] == "random" and random_run["weights_digest"] != record["weights_digest"]


@pytest.mark.parametrize("command, models", [("train-all", ""), ("infer-all", ","), ("train-all", " ; - : "),
                                             ("infer-all", "")])
def test_cli_an_empty_model_list_is_an_error_naming_models(cli, tmp_path, command, models):
    code, out, err = cli(command, "--models", models, *(["--random-weights"] if command == "infer-all" else []))
    line = _one_error_line(code, out, err)
    assert line.startswith("cnnbench: error: --models is empty")
    assert "synNet" not in line  # it did not fall back to every model
    _nothing_written(tmp_path, except_=("tiny.json",))


@pytest.mark.parametrize("option", ["--engines", "--precisions"])
def test_cli_an_empty_engine_or_precision_list_is_an_error_naming_it(cli, tiny_spec, tmp_path, option, monkeypatch):
    from cnnbench.recipes import estimate

    def started(*args):  # the configurations were accepted: the sweep would calibrate, then run them
        raise AssertionError(f"the sweep started with an empty {option}")

    monkeypatch.setattr(estimate, "calibrate", started)
    code, out, err = cli("infer-all", "--models", tiny_spec, option, "", "--random-weights", "--batch-sizes", "2",
                         "--image-size", "16", "--num-batches", "1", "--warmup", "0")
    line = _one_error_line(code, out, err)
    assert line.startswith(f"cnnbench: error: {option} is empty")
    _nothing_written(tmp_path, except_=("tiny.json",))


def _start_and_wait_for_a_step(args: list[str], cwd: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "cnnbench", *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return _wait_for_a_step(process)


def _wait_for_a_step(process: subprocess.Popen, step_token: str = "3") -> subprocess.Popen:
    """Returns once the run printed step line `step_token` (step 3: warm-up 1, then steady steps run)."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.split()[:1] == [step_token]:
            return process
    process.wait()
    raise AssertionError(f"the run ended before step {step_token}: {process.returncode}\n{''.join(seen)}{process.stderr.read()}")


@pytest.mark.parametrize("signum, code, status", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_cli_a_signal_mid_inference_prints_and_records_the_completed_batches(tmp_path, tiny_spec, signum, code, status):
    process = _start_and_wait_for_a_step(
        ["infer", str(tiny_spec), "--random-weights", "--image-size", "16", "--batch-size", "2",
         "--num-batches", "100000", "--warmup", "1", "--display-every", "1"], tmp_path)
    try:
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err
    assert "Traceback" not in out + err
    assert "Images/sec:" in out and "System performance in images/second is:" in out
    assert f"Stopped: {run_record.STOPS[signal.Signals(signum).name][1]}" in out
    assert err.strip() == ""  # the stop is a status, said on stdout with the figures; no error line
    record, = read_jsonl(tmp_path / "results_infer" / "runs.jsonl")
    assert record["status"] == status and record["reason"] == run_record.STOPS[signal.Signals(signum).name][1]
    assert record["steady_steps"] >= 2 and record["images_per_sec"] > 0
    assert f"Record: {Path('results_infer') / 'runs.jsonl'}" in out


DISTRIBUTED_RUN = ["--image-size", "16", "--batch-size", "2", "--num-batches", "100000", "--warmup", "1",
                   "--display-every", "1", "--num-accelerators", "2", "--dist-timeout", "20"]


def test_cli_sigterm_to_the_launcher_of_a_distributed_run_records_rank_0_as_terminated(tmp_path, tiny_spec):
    """SIGTERM to the launching process (what timeout, SLURM send) once rank 0 prints a steady step: the agent
    passes it to the ranks, which stop after the current step; rank 0 prints and records, the job exits 143."""
    process = _start_and_wait_for_a_step(["train", str(tiny_spec), *DISTRIBUTED_RUN], tmp_path)
    started = time.monotonic()
    try:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - started < 30  # the ranks stopped on the agent's SIGTERM, no SIGKILL after its 30 s
    assert process.returncode == 143, err
    assert "Traceback" not in out + err and "cnnbench: error" not in err  # no rank "lost contact"
    assert "Stopped: terminated by SIGTERM" in out and out.count("Images/sec:") == 1  # rank 0 alone reports
    record, = read_jsonl(tmp_path / "results_train" / "runs.jsonl")
    assert record["status"] == "terminated" and record["world_size"] == 2 and record["backend"] == "gloo"
    assert record["steady_steps"] >= 2 and record["images_per_sec"] > 0
    assert record["checkpoint"] is None and not (tmp_path / "log_tinyNet_2" / "checkpoint.pt").exists()


def test_cli_a_torn_line_in_the_results_folder_does_not_stop_a_real_run(cli, tiny_spec, monkeypatch):
    monkeypatch.setattr(store, "_warned_torn", set())
    code, _, err = cli("train", tiny_spec, *TINY16, "--log-dir", "ck1")
    assert code == 0, err
    with open("results_train/runs.jsonl", "a") as handle:
        handle.write('{"kind": "train", "model": "tin')  # a crash mid-write by another tool
    code, out, err = cli("train", tiny_spec, *TINY16, "--log-dir", "ck2")
    assert code == 0, err
    assert "Traceback" not in out + err and "JSONDecodeError" not in out + err
    torn = [line for line in (out + err).splitlines() if "torn line" in line]
    assert torn == [f"WARNING: {Path('results_train') / 'runs.jsonl'}: skipped 1 torn line (not a JSON record): line 2"]
    lines = Path("results_train/runs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["config.log_dir"] == "ck2"
    records, torn_lines = store.read_records_counting(Path("results_train"))
    assert [r["config.log_dir"] for r in records] == ["ck1", "ck2"] and torn_lines == [2]
    assert all(r["status"] == "ok" for r in records)
    assert len(Path("results_train/runs.csv").read_text().splitlines()) == 3  # header and both intact runs


# Everything `cnnbench train` and `infer` import, loaded before the switch to nobody (who cannot enter /root).
CLI_IMPORTS = ("import resource, torch, torchvision, rich\n"
               "from cnnbench import cli, engines\n"
               "from cnnbench.core import terminal\n"
               "from cnnbench.backends.pytorch import checkpoints, weights\n"
               "from cnnbench.recipes import inference, run_record, training\n"
               "from cnnbench.data import sources, synthetic\n")


def cli_prelude(spec: Path) -> str:
    """CLI_IMPORTS, then one train and one infer run as root in a scratch folder: a checkout may sit in a
    folder only root can read (a clone in a mktemp -d folder, mode 0700), and the modules, libraries and
    submodules that torch, rich and cnnbench load lazily could not be loaded any more once nobody."""
    runs = [["train", str(spec), *TINY16, "--results-dir", "{w}/r", "--log-dir", "{w}/ck"],
            ["infer", str(spec), *TINY16, "--random-weights", "--results-dir", "{w}/ri", "--log-dir", "{w}/ck"]]
    return (CLI_IMPORTS
            + "import contextlib, io, tempfile\n"
            + "with tempfile.TemporaryDirectory() as _warm, "
              "contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            + "".join(f"    assert cli.main([a.format(w=_warm) for a in {args!r}]) == 0\n" for args in runs))


@pytest.fixture(scope="module")
def cli_runs_as_nobody():
    """The two tests below, run as nobody in one process (one import of torch, one warm-up prelude): in `unwritable`,
    three commands aimed at a folder nobody cannot write; in `read_only_at_end`, a training run whose results
    folder turns read-only while the run ends. Returns the folders and each run's [code, stdout, stderr]."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as nobody")
    shared = Path(tempfile.mkdtemp(prefix="cnnbench-faults-"))  # pytest's tmp_path is inside root's private folder
    shared.chmod(0o755)
    spec = shared / "tiny.json"
    spec.write_text(json.dumps(TINY_SPEC))
    spec.chmod(0o644)
    locked = shared / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    unwritable, read_only_at_end = shared / "work", shared / "work2"
    (read_only_at_end / "res").mkdir(parents=True)
    unwritable.mkdir()
    for path in (unwritable, read_only_at_end, read_only_at_end / "res"):
        os.chown(path, NOBODY, NOBODY)
    commands = [["train", str(spec), *TINY16, "--results-dir", str(locked)],
                ["train", str(spec), *TINY16, "--log-dir", str(locked / "ck")],
                ["infer", str(spec), *TINY16, "--random-weights", "--results-dir", str(locked / "deeper")]]
    late = ["train", str(spec), *TINY16, "--results-dir", "res", "--log-dir", "ck"]
    done = run_as_nobody(  # each command's code, stdout and stderr
        "import contextlib, io\n"
        "def captured(args):\n"
        "    out, err = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "        code = cli.main(args)\n"
        "    return json.dumps([code, out.getvalue(), err.getvalue()])\n"
        f"for args in {commands!r}:\n"
        "    print(captured(args))\n"
        f"os.chdir({str(read_only_at_end)!r})\n"
        "real = terminal.final_lines\n"
        "def final_lines(*args, **kwargs):\n"
        "    real(*args, **kwargs)\n"
        "    os.chmod('res', 0o555)\n"
        "terminal.final_lines = final_lines\n"
        f"print(captured({late!r}))\n",
        cwd=unwritable, prelude=cli_prelude(spec))
    try:
        assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
        *runs, last = [json.loads(line) for line in done.stdout.splitlines()]
        yield {"locked": locked, "unwritable": unwritable, "runs": runs, "read_only_at_end": read_only_at_end, "last": last}
    finally:
        shutil.rmtree(shared)


def test_cli_an_unwritable_results_folder_as_an_unprivileged_user(cli_runs_as_nobody):
    locked, runs = cli_runs_as_nobody["locked"], cli_runs_as_nobody["runs"]
    assert len(runs) == 3
    for (code, out, err), option, target in zip(runs, ["--results-dir", "--log-dir", "--results-dir"],
                                                [locked, locked / "ck", locked / "deeper"]):
        line = _one_error_line(code, out, err)
        assert line == (f"cnnbench: error: {option} {target}: cannot write in {locked} (Permission denied); "
                        f"give {option} a folder you can write to")
        assert out == ""  # refused before the header: nothing measured, nothing to lose
    assert list(locked.iterdir()) == [] and list(cli_runs_as_nobody["unwritable"].iterdir()) == []  # no record, no fallback, no checkpoint


def test_cli_a_results_folder_that_turns_read_only_at_the_end_keeps_figures_and_record(cli_runs_as_nobody):
    """As nobody, so that the permission is really denied: the folder passes the pre-flight, then turns
    read-only while the run ends (a quota, a remount). The figures are printed first, the record goes to
    a fallback file whose path is printed, and the run exits 4."""
    work = cli_runs_as_nobody["read_only_at_end"]
    code, out, err = cli_runs_as_nobody["last"]
    assert code == errors.EXIT_RUN_FAILED == 4, out + err
    assert "Traceback" not in out + err
    assert "Images/sec:" in out and "System performance in images/second is:" in out
    line, = err.strip().splitlines()
    fallbacks = list(work.glob("cnnbench-record-*.json"))
    assert len(fallbacks) == 1, sorted(p.name for p in work.iterdir())
    fallback = fallbacks[0]
    assert line == (f"cnnbench: error: could not add the run's record to {Path('res') / 'runs.jsonl'} "
                    f"(PermissionError: [Errno 13] Permission denied: '{Path('res') / store.LOCK_FILE}'); "
                    f"saved it to {fallback} instead; once the folder is writable, append it with "
                    f"`cat {fallback} >> {Path('res') / 'runs.jsonl'}`")
    record = json.loads(fallback.read_text())
    assert record["status"] == "ok" and record["model"] == "tinyNet" and record["images_per_sec"] > 0
    assert record["checkpoint"] == str(Path("ck") / "checkpoint.pt") and (work / "ck" / "checkpoint.pt").exists()
    assert list((work / "res").iterdir()) == []
    # The advice works: once the folder is writable again, the appended file is one intact record.
    (work / "res").chmod(0o755)
    subprocess.run(f"cat {fallback} >> res/runs.jsonl", shell=True, cwd=work, check=True)
    assert store.read_records_counting(work / "res") == ([record], [])


# --- issue 23, round three: unwritable places, gates that compared nothing ----------------------------------

# The command line loaded before the switch to nobody: argparse translates its messages lazily (gettext, locale).
CLI_PARSER = "import gettext, locale\nfrom cnnbench import cli\ncli.build_parser().format_help()\n"

def test_report_out_into_a_read_only_folder_is_one_line_before_any_work(shared_dir):
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    store.append_record(shared_dir / "res", _record())
    done = run_as_nobody("sys.exit(cli.main(['report', 'res', '--out', 'locked/report.html']))\n", cwd=shared_dir,
                         prelude=CLI_PARSER + "from cnnbench.tools import report\n")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"cnnbench: error: --out locked: cannot write in {locked} (Permission "
                                                "denied); give --out a folder you can write to"]
    assert list(locked.iterdir()) == []


def test_results_on_a_read_only_folder_is_one_line_and_touches_nothing(shared_dir):
    store.append_record(shared_dir / "res", _record())
    (shared_dir / "res" / store.LOCK_FILE).unlink()  # the folder as another user left it: records only
    (shared_dir / "res").chmod(0o555)
    before = sorted(p.name for p in (shared_dir / "res").iterdir())
    done = run_as_nobody("sys.exit(cli.main(['results', 'res']))\n", cwd=shared_dir, prelude=CLI_PARSER)
    assert done.returncode == 2, done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith("cnnbench: error: cnnbench results res: cannot write in ") and "Permission denied" in line
    assert sorted(p.name for p in (shared_dir / "res").iterdir()) == before


def test_results_over_records_that_are_all_garbage_is_an_error_not_empty_tables(cli, tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "runs.jsonl").write_text("not json\n{\"torn\": \n")
    code, out, err = cli("results", tmp_path / "res")
    assert code == 2
    assert err.strip().splitlines() == [f"cnnbench: error: {tmp_path / 'res' / 'runs.jsonl'}: no records (every line is "
                                        "torn or not a record); nothing to tabulate"]
    assert not (tmp_path / "res" / "results.csv").exists()


def test_compare_gate_over_folders_with_nothing_in_common_does_not_pass(cli, tmp_path):
    store.append_record(tmp_path / "a", _written(model="resnet50"))
    store.append_record(tmp_path / "b", _written(model="googlenet"))
    code, out, err = cli("compare", tmp_path / "a", tmp_path / "b", "--fail-below", "0.95")
    assert code == 2
    assert err.strip().splitlines() == [f"cnnbench: error: --fail-below: {tmp_path / 'a'} and {tmp_path / 'b'} share no "
                                        "configuration, so nothing was compared; give two results folders of the same sweep"]
    assert cli("compare", tmp_path / "a", tmp_path / "b")[0] == 0  # without a gate, a report of nothing in common is fine


def test_a_torn_line_in_validation_jsonl_does_not_lose_a_finished_validation(tmp_path, warnings_seen):
    from cnnbench.tools import synth_validation

    results = tmp_path / "res"
    results.mkdir()
    (results / "validation.jsonl").write_text(store.record_line(_written(kind="validation")) + '{"kind": "valid')
    path = synth_validation.save(results, [_written(kind="validation", model="proxy")])
    records, torn = store.read_file_counting(path)
    assert [r["model"] for r in records] == ["resnet50", "proxy"] and torn == [2]  # the new record on its own line
    assert "validation.csv" in {p.name for p in results.iterdir()}
    assert any("skipped 1 torn line" in w for w in warnings_seen)


@pytest.mark.parametrize("command", ["report", "results", "compare"])
def test_a_record_of_a_newer_schema_is_refused_not_read_as_this_version(cli, tmp_path, command):
    store.append_record(tmp_path / "res", _written())
    # as a newer cnnbench appends it (this one's append_record would refuse to rebuild the tables over it)
    store.append_line(tmp_path / "res" / "runs.jsonl", store.record_line({**_written(model="googlenet"), "schema_version": 99}))
    args = {"report": ("report", tmp_path / "res", "--out", tmp_path / "r.html"), "results": ("results", tmp_path / "res"),
            "compare": ("compare", tmp_path / "res", tmp_path / "res")}[command]
    code, out, err = cli(*args)
    assert code == 2
    assert err.strip().splitlines() == [f"cnnbench: error: {tmp_path / 'res' / 'runs.jsonl'}: line 2 was written by a newer "
                                        f"cnnbench (record schema_version 99; this one reads up to {store.SCHEMA_VERSION}); "
                                        "update cnnbench to read it"]
    assert not (tmp_path / "r.html").exists()


# --- issue 23, round three (FAULTS): the original's entry point, data commands, spec names, synth's budget,
# TensorFlow's checkpoints and start-up lines, the noise before cnnbench's own lines ------------------------

def _nvcnn_module():
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("nvcnn_faults", REPO / "nvcnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nvcnn_runs_in_the_venv_when_python3_is_the_venvs_own_interpreter(tmp_path):
    """`python3 nvcnn.py` where python3 is the very interpreter the venv's bin/python links to: it must re-exec
    into the venv (sys.prefix differs), not say "cnnbench is not installed". A usage error keeps it short."""
    from helpers import REPO

    base = Path(os.path.realpath(REPO / ".venv" / "bin" / "python"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if subprocess.run([str(base), "-c", "import cnnbench"], env=env, capture_output=True).returncode == 0:
        pytest.skip(f"{base} imports cnnbench by itself: no re-exec to check")
    done = subprocess.run([str(base), str(REPO / "nvcnn.py"), "--model=resnet50", "--use_trt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert "not installed" not in done.stderr
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "nvcnn.py: error: --use_trt applies to inference; add --eval"], done.stderr


@pytest.mark.parametrize("args, message", [
    (["--use_trt"], "--use_trt applies to inference; add --eval"),
    (["--eval", "--trt_precision", "int8"], "--trt_precision needs --use_trt (as in the original)"),
    (["--num_gpus", "0"], "--num_gpus 0: give 1 or more"),
    (["--num_gpus", "-3"], "--num_gpus -3: give 1 or more"),
])
def test_nvcnn_usage_errors_exit_2_with_one_line(capsys, args, message):
    nvcnn = _nvcnn_module()
    with pytest.raises(SystemExit) as stopped:
        nvcnn.translate(["--model=resnet50", *args], "cpu", [])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"nvcnn.py: error: {message}"]


def _image_folder(root: Path) -> Path:
    from cnnbench.data.codec import encode_png

    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    (folder / "0.png").write_bytes(encode_png(torch.full((3, 8, 8), 100, dtype=torch.uint8)))
    for path in (root, root / "train", folder, folder / "0.png"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_data_convert_into_a_read_only_folder_is_one_line_before_any_work(shared_dir):
    _image_folder(shared_dir / "src")
    locked = shared_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    done = run_as_nobody("sys.exit(cli.main(['data', 'convert', 'src', 'locked/shards']))\n", cwd=shared_dir,
                         prelude=CLI_PARSER + "from cnnbench.core import terminal\nfrom cnnbench.data import commands, sample\n")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"cnnbench: error: DST locked/shards: cannot write in {locked} (Permission "
                                                "denied); give DST a folder you can write to"]
    assert list(locked.iterdir()) == []


def test_data_convert_from_a_missing_folder_says_it_does_not_exist(cli, tmp_path):
    code, out, err = cli("data", "convert", tmp_path / "nowhere", tmp_path / "shards")
    line = _one_error_line(code, out, err)
    assert line == f"cnnbench: error: {tmp_path / 'nowhere'} does not exist; give the folder holding train/ and/or val/"
    assert not (tmp_path / "shards").exists()


def test_data_sample_of_zero_images_per_class_is_refused(cli, tmp_path):
    code, out, err = cli("data", "sample", tmp_path / "digits", "--max-per-class", "0")
    line = _one_error_line(code, out, err)
    assert line == "cnnbench: error: --max-per-class must be at least 1, got 0; leave it out for every image"
    assert not (tmp_path / "digits").exists()


def test_data_bench_warns_of_more_workers_than_cores(warnings_seen):
    from cnnbench.core.environment import usable_cores
    from cnnbench.data.commands import parse_workers

    cores = usable_cores()
    assert parse_workers(f"1,{cores}") == [1, cores] and warnings_seen == []
    assert parse_workers(f"1,{cores + 498}") == [1, cores + 498]
    assert len(warnings_seen) == 1 and warnings_seen[0].startswith(
        f"--workers {cores + 498}: more loader processes than this machine's {cores} usable cores")


@pytest.mark.parametrize("name", ["../../../escaped", "a/b", "..", ".hidden", "a..b", "back\\slash", ""])
def test_a_spec_name_that_is_not_a_file_name_is_refused_before_any_folder(cli, tmp_path, monkeypatch, name):
    work = tmp_path / "w1" / "w2" / "w3"
    work.mkdir(parents=True)
    spec = work / "spec.json"
    spec.write_text(json.dumps({**TINY_SPEC, "name": name}))
    monkeypatch.chdir(work)
    code, out, err = cli("train", spec, *TINY16)  # no --log-dir: the default log folder is named by the spec
    line = _one_error_line(code, out, err)
    assert line.startswith(f"cnnbench: error: {spec}: 'name' {name!r} is not a file name; use letters, digits")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["w1", "w1/w2", "w1/w2/w3",
                                                                                 "w1/w2/w3/spec.json"]


def test_the_spec_schema_checks_names_as_the_code_does():
    import re
    from importlib import resources

    schema = json.loads((resources.files("cnnbench.models") / "specs" / "spec.schema.json").read_text())
    pattern = schema["properties"]["name"]["pattern"]
    for good in ["tinyNet", "synNet", "proxy-1.5_b", "Net2"]:
        assert re.search(pattern, good), good
    for bad in ["../../../escaped", "a/b", "..", ".hidden", "a..b", "", "a b"]:
        assert not re.search(pattern, bad), bad


def test_a_same_kernel_far_larger_than_its_input_warns_once(cli, tmp_path, monkeypatch):
    from cnnbench.models import synnet

    monkeypatch.setattr(synnet, "_WARNED", set())
    spec = tmp_path / "wide.json"
    spec.write_text(json.dumps({"name": "wide", "input": {"height": 32, "width": 32, "channels": 3},
                                "groups": [{"name": "g", "layers": [{"type": "conv", "filters": 4, "kernel": [101, 101]}]}],
                                "head": {"fully_connected": {"outputs": 10}}}))
    code, out, err = cli("train", spec, "--image-size", "32", "--batch-size", "2", "--num-batches", "1", "--warmup", "0",
                         "--results-dir", tmp_path / "r", "--log-dir", tmp_path / "ck")
    assert code == 0, err
    warned = [line for line in (out + err).splitlines() if "twice the size of its input" in line]
    assert warned == [f"WARNING: {spec}: g layer 1 (conv): a 101x101 kernel on a 32x32 input is more than twice the size of "
                      "its input with 'same' padding, so most of each window is zero padding; use a smaller kernel or a "
                      "larger input"], err
    # an ordinary small map stays quiet: 3x3 kernels on 2x2 and 1x1 maps, as ResNet-like specs meet at small sizes
    monkeypatch.setattr(synnet, "_WARNED", set())
    seen = []
    monkeypatch.setattr(synnet, "warn", seen.append)
    synnet.build_from_spec({**TINY_SPEC, "groups": TINY_SPEC["groups"] + [
        {"name": "g3", "layers": [{"type": "conv", "filters": 8, "kernel": [3, 3]}, {"type": "maxpool"},
                                  {"type": "conv", "filters": 8, "kernel": [3, 3]}]}]}, 16)
    assert seen == []


def test_synth_refuses_a_layer_count_beyond_its_cap_before_profiling(cli, tiny_spec, tmp_path):
    from cnnbench.tools import synth

    code, out, err = cli("synth", "--target", tiny_spec, "--layers", "100000", "--out", tmp_path / "x.json")
    line = _one_error_line(code, out, err)
    assert line.startswith(f"cnnbench: error: --layers 100000: cnnbench synth makes at most {synth.MAX_LAYERS} convolutions")
    assert out == "" and not (tmp_path / "x.json").exists()


def test_synth_refuses_an_absurd_flop_budget_up_front_with_the_cap(tiny_spec, tmp_path):
    """--gflops 1e6 (FLOPs typed for GFLOPs) ran for minutes in silence: a real process, which must answer fast."""
    from helpers import cnnbench_process

    started = time.monotonic()
    done = cnnbench_process("synth", "--target", tiny_spec, "--image-size", "16", "--gflops", "1e6", "--out",
                            tmp_path / "x.json", timeout=120)
    assert time.monotonic() - started < 120
    line = _one_error_line(done.returncode, done.stdout, done.stderr)
    assert line.startswith("cnnbench: error: --gflops 1e+06 takes about ") and "cnnbench synth makes at most 1000" in line
    assert "give --gflops of at most about" in line and not (tmp_path / "x.json").exists()


def test_synth_shows_progress_while_fitting_a_long_network(tiny_spec, monkeypatch):
    import io

    from rich.console import Console

    from cnnbench.tools import synth

    screen = io.StringIO()
    monkeypatch.setattr(terminal, "console", Console(file=screen, force_terminal=True, width=120))
    mix = synth.mix_of(synth.load_targets(str(tiny_spec), 16, 2, "fp32"), 16)
    spec = synth.generate(mix, seed=0, layers=200, gflops=None, name="long")
    assert spec["name"] == "long" and "fitting the widths of" in screen.getvalue()


def test_synth_validate_with_only_the_baseline_says_there_is_nothing_to_compare(monkeypatch):
    from cnnbench.tools import synth_validation

    said = []
    monkeypatch.setattr(terminal, "say", said.append)
    monkeypatch.setattr(terminal, "summary_table", lambda *args, **kwargs: None)
    rows = [{"configuration": "eager-fp32", "batch_size": 2, "proxy_ms_per_image": 1.0, "mix_ms_per_image": 2.0,
             "targets_ms_per_image": {"t": 2.0}, "proxy_speedup": 1.0, "mix_speedup": 1.0,
             "speedup_error_percent": 0.0, "baseline": True}]
    synth_validation.show(rows, synth_validation.summary_of(rows, [], "proxy"), "proxy", "eager-fp32")
    assert said[0].startswith("speed-up error and Spearman rank correlation: nothing to compare"), said
    assert not any(line.startswith(("speed-up error:", "Spearman rank correlation")) for line in said)  # no MISSED


@pytest.fixture(scope="module")
def tf_checkpoint(tmp_path_factory):
    """One TensorFlow training run as a real process: its checkpoint, and its stderr (TensorFlow's start-up lines)."""
    pytest.importorskip("tensorflow")
    from helpers import cnnbench_process

    work = tmp_path_factory.mktemp("tfck")
    (work / "tiny.json").write_text(json.dumps(TINY_SPEC))
    done = cnnbench_process("train", "tiny.json", "--framework", "tensorflow", *TINY16, "--log-dir", "ck",
                            "--results-dir", "res", cwd=work)
    assert done.returncode == 0, done.stderr
    return work, done


def test_tensorflow_start_up_lines_are_not_printed(tf_checkpoint):
    _, done = tf_checkpoint
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in done.stderr + done.stdout, done.stderr


def _damage(work: Path, how: str) -> Path:
    ck = work / f"ck_{how}"
    shutil.rmtree(ck, ignore_errors=True)
    shutil.copytree(work / "ck", ck)
    data, = (ck / "tensorflow").glob("step-*.data-*")
    index, = (ck / "tensorflow").glob("step-*.index")
    if how == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    else:  # a bit flipped in every 4 KiB of the tensors: the bundle's checksums see it
        raw = bytearray(data.read_bytes())
        for i in range(0, len(raw), 4096):
            raw[i] ^= 0x01
        data.write_bytes(bytes(raw))
    return ck / "tensorflow" / index.name.removesuffix(".index")


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_a_damaged_tensorflow_checkpoint_is_one_line_naming_it_on_infer(tf_checkpoint, how):
    from helpers import cnnbench_process

    work, _ = tf_checkpoint
    prefix = _damage(work, how.split("-")[0])
    done = cnnbench_process("infer", "tiny.json", "--framework", "tensorflow", *TINY16, "--log-dir", prefix.parent.parent.name,
                            "--results-dir", "resi", cwd=work)
    line = _one_error_line(done.returncode, done.stdout, done.stderr)
    assert line.startswith(f"cnnbench: error: cannot read the TensorFlow checkpoint {prefix.relative_to(work)} (its .index "
                           "and .data files): ") and "truncated or damaged" in line
    assert not (work / "resi" / "runs.jsonl").exists()


def test_a_damaged_tensorflow_checkpoint_is_one_line_naming_it_on_resumed_training(tf_checkpoint):
    from helpers import cnnbench_process

    work, _ = tf_checkpoint
    prefix = _damage(work, "truncated")
    done = cnnbench_process("train", "tiny.json", "--framework", "tensorflow", *TINY16, "--log-dir", prefix.parent.parent.name,
                            "--resume", "--results-dir", "rest", cwd=work)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cnnbench: error: cannot read the TensorFlow checkpoint {prefix.relative_to(work)} (its .index and .data files): "
        "IndexError: Read less bytes than requested; the files are truncated or damaged: train without --resume (afresh, "
        "overwriting it) or give another --log-dir"]


def test_a_pickled_object_as_weights_is_refused_without_torchs_pickle_warning(tmp_path):
    import pickle
    import warnings

    path = tmp_path / "objects.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as seen, pytest.raises(errors.UsageError) as refused:
        warnings.simplefilter("always")
        checkpoints.load(path, "--weights")
    assert "cnnbench never unpickles" in str(refused.value)
    assert [str(w.message) for w in seen] == []


def test_profile_measure_prints_no_profiler_usdt_lines(tiny_spec, tmp_path, capfd):
    from cnnbench.cli import main

    assert main(["profile", str(tiny_spec), "--measure", "--image-size", "16", "--batch-size", "2",
                 "--out", str(tmp_path / "p.json")]) == 0
    captured = capfd.readouterr()
    assert "USDT" not in captured.err + captured.out and "profiler_start" not in captured.err, captured.err


@pytest.mark.parametrize("kind", ["truncated jpeg", "bad png header"])
def test_a_damaged_image_is_named_with_the_decoders_reason_not_its_source_path(kind):
    from cnnbench.data.codec import decode_rgb, encode_jpeg

    if kind == "truncated jpeg":
        jpeg = encode_jpeg(torch.full((3, 32, 32), 100, dtype=torch.uint8))
        image, message = decode_rgb(jpeg[: len(jpeg) // 2], "x/a.jpg")
        assert message == "cannot decode image x/a.jpg: Image is incomplete or truncated."
    else:
        image, message = decode_rgb(b"\x89PNG\r\n\x1a\n" + b"0" * 30, "x/b.png")
        assert message.startswith("cannot decode image x/b.png: ") and "bad header" in message
    assert image is None and ".cpp" not in message and "/__w/" not in message
