"""Files a run writes, written safely: atomically replaced, created with the user's umask, checked before a
run (a folder that cannot take files fails in one line up front), and a record's last-resort copy when its
results folder cannot take it.

Used by the record store (store.py), the profile and synthetic-network files, checkpoints, the efficiency
sheet and every command with an output folder.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
import secrets
import tempfile
from pathlib import Path

from cnnbench.core.errors import UsageError, one_line

# Files are created with 0666 and the user's umask, like any other file of theirs (mkstemp's 0600 hid
# results from the group that shares a machine).
FILE_MODE = 0o666


def create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named temporary file in `path`'s folder (so os.replace stays atomic),
    opened for writing, with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: readers see old or new, never half."""
    fd, tmp = create_beside(path)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_fallback(line: str) -> Path | None:
    """Write one record line to ./cnnbench-record-<time>-<pid>.json, else to the temp folder."""
    stem = f"cnnbench-record-{_dt.datetime.now().strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
    for folder in (os.curdir, tempfile.gettempdir()):
        try:
            # absolute: the path printed must work from anywhere
            target, fd = _new_file(Path(folder).absolute(), stem, ".json")
        except OSError:  # no such folder (the current one removed), not writable
            continue
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(line)
            return target
        except OSError:  # full: leave no half file behind and try the next folder
            target.unlink(missing_ok=True)
    return None


def _new_file(folder: Path, stem: str, suffix: str) -> tuple[Path, int]:
    """A file that did not exist before (a second fallback in the same second gets -1, -2, ...)."""
    for n in itertools.count():
        target = folder / f"{stem}{f'-{n}' if n else ''}{suffix}"
        try:
            return target, os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def ensure_writable(path: Path, option: str) -> None:
    """Pre-flight for a folder a run will write (--results-dir, --log-dir): fail now, in one line,
    rather than after the benchmark. The folder may not exist yet; then its nearest existing
    ancestor must be a folder that takes new files."""
    path = probe = Path(path)
    try:
        probe = path.absolute()
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            kind = "a file" if probe.is_file() else "not a folder"  # else: a broken link, a device
            what = f"is {kind}" if probe == path.absolute() else f"cannot be created: {probe} is {kind}"
            raise UsageError(f"{option} {path} {what}; remove it or give {option} another folder")
        # Creating a file is the only test that sees read-only mounts, ACLs and the effective user alike;
        # TemporaryFile leaves nothing behind.
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        raise UsageError(f"{option} {path}: cannot write in {probe} ({reason}); "
                         f"give {option} a folder you can write to") from None
