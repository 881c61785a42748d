"""How much a fresh clone's .venv weighs: `./setup.sh` (what ./run.sh needs) against `./setup.sh --test` (what
./test.sh needs), each in its own clone of this repository's HEAD, set up from scratch (issue 24: setup used to
install the test extra always; pytest, TensorFlow and scikit-learn then landed in every venv).

    .venv/bin/python benchmarks/venv_sizes.py [--keep DIR]

Each clone's set-up runs under the benchmark lock (other benchmarks would distort its time, and it theirs'
through the disk). The sizes are `du`'s apparent bytes of .venv; the time is the set-up's wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import Recorder, add_save_option  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def size_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def imports(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def set_up(where: Path, args: list[str]) -> tuple[float, int]:
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    started = time.perf_counter()
    subprocess.run(["./setup.sh", *args], cwd=where, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, size_bytes(where / ".venv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="set up the clones under this folder and keep them (default: a temporary one)")
    add_save_option(parser)
    args = parser.parse_args()
    rec = Recorder(__file__, args.save_to)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cnnbench-venvs-"))
    rec.say(f"{'setup':<18} {'venv GB':>8} {'set-up s':>9}  pytest  tensorflow  sklearn  onnxruntime")
    for name, setup_args in (("./setup.sh", []), ("./setup.sh --test", ["--test"])):
        where = root / name.replace("./setup.sh", "clone").replace(" --", "-")
        seconds, size = set_up(where, setup_args)
        python = where / ".venv" / "bin" / "python"
        has = {m: imports(python, m) for m in ("pytest", "tensorflow", "sklearn", "onnxruntime")}
        rec.row(setup=name, venv_bytes=size, setup_seconds=round(seconds, 1), **{f"has_{m}": v for m, v in has.items()})
        rec.say(f"{name:<18} {size / 1e9:>8.2f} {seconds:>9.0f}  " + "  ".join(f"{str(v):<{len(m)}}" for m, v in has.items()))
        if not args.keep:
            subprocess.run(["rm", "-rf", str(where)], check=True)
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
