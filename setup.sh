#!/usr/bin/env bash
# Create .venv in the repository and install cnnbench with its test extra. Safe to run again.
# ./setup.sh --check-torch: only say whether .venv's torch and torchvision would be kept (exit 0) or
# replaced (exit 1); nothing is created or installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
# torch and torchvision releases cnnbench is tested with; on a CUDA machine pip takes the ordinary (CUDA) build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

# torch_accepted: prints one line and succeeds when .venv's torch and torchvision are releases that
# pyproject.toml's bounds (e.g. "torch>=2.4,<=2.14.1") accept. A preinstalled torch, such as a CUDA build
# matched to the machine's driver, is worth keeping; one outside the bounds is what the tests never saw.
# Release numbers are compared by hand because `packaging` is not yet installed in a fresh venv.
torch_accepted() {
    .venv/bin/python - <<'PY'
import re
import sys
from importlib import metadata


def release(text):
    return tuple(int(part) for part in text.split("."))


def accepts(name, spec, version):
    """None when every clause of spec holds for the version of name, else why not."""
    number = re.match(r"\d+(\.\d+)*", version)
    rest = version[number.end():].split("+")[0] if number else version
    if not number or (rest and not re.fullmatch(r"\.?post\d+", rest)):
        return "is not a final release"
    have = release(number.group())
    for clause in spec.split(","):
        bound = re.fullmatch(r"(>=|<=|==|!=|<|>)(\d+(?:\.\d+)*)", clause)
        if not bound:
            return f"cannot be checked against '{clause}'"
        want = release(bound.group(2))
        width = max(len(have), len(want))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        holds = {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, "<": a < b, ">": a > b}[bound.group(1)]
        if not holds:
            return f"is outside pyproject.toml's {name}{spec}"
    return None


pyproject = open("pyproject.toml").read()
kept, problems = [], []
for name in ("torch", "torchvision"):
    found = re.search(rf'"{name}\s*([<>=!~][^";]*)', pyproject)
    spec = found.group(1).replace(" ", "") if found else ""
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        problems.append(f"{name} is not installed")
        continue
    why = accepts(name, spec, version) if spec else "has no bounds in pyproject.toml to check"
    (problems if why else kept).append(f"{name} {version}" + (f" {why}" if why else f" ({name}{spec})"))
print("; ".join(problems) if problems else "keeping " + " and ".join(kept) + ", which pyproject.toml accepts")
sys.exit(1 if problems else 0)
PY
}

if [ "${1:-}" = --check-torch ]; then
    [ -x .venv/bin/python ] || { echo "setup: no .venv yet"; exit 1; }
    if verdict="$(torch_accepted)"; then
        echo "setup: $verdict"
        exit 0
    fi
    echo "setup: $verdict: ./setup.sh would install $TORCH_SPEC"
    exit 1
fi
if [ -x .venv/bin/python ]; then
    echo "setup: reusing .venv ($(.venv/bin/python --version))"
else
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if verdict="$(torch_accepted)"; then
    echo "setup: $verdict"
else
    echo "setup: $verdict: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    .venv/bin/pip install --quiet $TORCH_SPEC
fi
echo "setup: installing cnnbench (editable) with its test extra"
.venv/bin/pip install --quiet -e ".[test]"
echo "setup: done. ./run.sh runs the benchmark, ./test.sh the tests."
