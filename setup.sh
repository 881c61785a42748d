#!/usr/bin/env bash
# Create .venv in the repository and install cnnbench with what running the benchmark needs. Safe to run again.
# ./setup.sh --test: also the test extra (pytest, TensorFlow, LoadGen, OpenVINO, timm, ...), as ./test.sh asks.
# ./setup.sh --check-torch: only say whether .venv's torch and torchvision would be kept (exit 0) or
# replaced (exit 1); nothing is created or installed.
#
# When $PYTHON (default python3) already imports a torch and torchvision that pyproject.toml accepts, such
# as a GPU server's CUDA build matched to its driver (NVIDIA's containers' 2.11.0a0+...nv26.10 included), .venv
# reuses them instead of installing its own: a .pth file makes $PYTHON's site-packages visible in .venv
# (`venv --system-site-packages` would show only its base interpreter's, wrong when $PYTHON is itself a
# virtual environment), cnnbench is installed editable with no build step and no dependency resolution, and
# only the requirements still missing are installed; one that cannot be (no network) is named with what it costs.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
# torch and torchvision releases cnnbench is tested with; on a CUDA machine pip takes the ordinary (CUDA) build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# The extras installed: what running needs. On a CPU machine onnx (the ONNX Runtime engines of the default
# inference sweep) and openvino (its bf16 engine where the CPU has native bf16: engines/table.py); on an NVIDIA
# machine onnx-gpu instead (onnxruntime-gpu; never both, the two wheels overwrite each other) and gpu
# (nvidia-ml-py: NVML's device memory and power). With --test, the test extra too.
EXTRAS=onnx,openvino
command -v nvidia-smi >/dev/null 2>&1 && EXTRAS=onnx-gpu,gpu
if [ "${1:-}" = --test ]; then
    EXTRAS="$EXTRAS,test"
    shift
fi

# torch_accepted PYTHON: prints one line and succeeds when PYTHON's torch and torchvision are releases that
# pyproject.toml's bounds (e.g. "torch>=2.4,<=2.14.1") accept. A preinstalled torch, such as a CUDA build
# matched to the machine's driver, is worth keeping; one outside the bounds is what the tests never saw.
# Release numbers are compared by hand because `packaging` is not yet installed in a fresh venv.
torch_accepted() {  # PYTHON
    "$1" - <<'PY'
import sys
from importlib import metadata

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors tomli under the same API
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # a fresh venv has no packaging of its own, but pip vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

# name -> (requirement, its text as pyproject.toml writes it, for the messages)
requirements = {Requirement(r).name: (Requirement(r), r.split(";")[0].replace(" ", ""))
                for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]}
kept, problems = [], []
for name in ("torch", "torchvision"):
    requirement, written = requirements[name]
    spec = requirement.specifier
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        problems.append(f"{name} is not installed")
        continue
    try:
        # prereleases=True: NVIDIA's container builds are pre-releases (2.11.0a0+...nv26.10) worth keeping.
        holds = spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        holds = False
    if holds:
        kept.append(f"{name} {version} ({written})")
    else:
        problems.append(f"{name} {version} is outside pyproject.toml's {written}")
print("; ".join(problems) if problems else "keeping " + " and ".join(kept) + ", which pyproject.toml accepts")
sys.exit(1 if problems else 0)
PY
}

# borrow_packages: .venv sees $PYTHON's site-packages. `import site; site.addsitedir(...)` rather than a
# bare path, so that .pth files there (editable installs, namespace packages) are processed too.
borrow_packages() {
    local venv_site
    venv_site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    "$PYTHON" -c 'import sysconfig
for d in sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}):
    print(f"import site; site.addsitedir({d!r})")' >"$venv_site/cnnbench-borrowed-packages.pth"
}

# install_editable_offline: cnnbench from src/ without pip building anything, so that no build backend
# or network is needed: src/ goes on .venv's path by a .pth file (what an editable install amounts to) and
# .venv/bin/cnnbench starts cnnbench.cli:main, the console script pyproject.toml declares.
install_editable_offline() {
    local venv_site
    venv_site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    # "00-" sorts first: .pth files are read in name order, so this src/ comes before any borrowed cnnbench.
    echo "$PWD/src" >"$venv_site/00-cnnbench-src.pth"
    printf '#!%s\nimport sys\nfrom cnnbench.cli import main\nsys.exit(main())\n' "$PWD/.venv/bin/python" >.venv/bin/cnnbench
    chmod +x .venv/bin/cnnbench
}

# install_missing: the requirements of cnnbench and its EXTRAS (pyproject.toml) that .venv cannot
# see yet, one pip call each, so that one that cannot be installed (no network) does not stop the others.
install_missing() {
    local missing requirement
    missing="$(EXTRAS="$EXTRAS" .venv/bin/python - <<'PY'
import os
from importlib import metadata

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors tomli under the same API
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [r for extra in os.environ["EXTRAS"].split(",") for r in project["optional-dependencies"][extra]]
for text in project["dependencies"] + extras:
    requirement = Requirement(text)
    if requirement.name == "cnnbench" or (requirement.marker and not requirement.marker.evaluate()):
        continue
    try:
        metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        print(f"{requirement.name}{requirement.specifier}")
PY
)"
    for requirement in $missing; do
        echo "setup: installing $requirement, which $PYTHON lacks"
        .venv/bin/pip install --quiet "$requirement" ||
            echo "setup: could not install $requirement; cnnbench runs without it where it can (torchcodec: images decode with torchvision.io; google-crc32c: no TFRecord input; mlcommons-loadgen: no infer --loadgen)"
    done
}

if [ "${1:-}" = --check-torch ]; then
    [ -x .venv/bin/python ] || { echo "setup: no .venv yet"; exit 1; }
    if verdict="$(torch_accepted .venv/bin/python)"; then
        echo "setup: $verdict"
        exit 0
    fi
    echo "setup: $verdict: ./setup.sh would install $TORCH_SPEC"
    exit 1
fi
borrowed=""
if [ -x .venv/bin/python ]; then
    echo "setup: reusing .venv ($(.venv/bin/python --version))"
    [ -n "$(.venv/bin/python -c 'import glob, sysconfig; print(*glob.glob(sysconfig.get_path("purelib") + "/cnnbench-borrowed-packages.pth"))')" ] && borrowed=yes
elif verdict="$(torch_accepted "$PYTHON")"; then
    echo "setup: creating .venv with $($PYTHON --version) that uses $PYTHON's own packages: $verdict"
    "$PYTHON" -m venv .venv
    borrow_packages
    borrowed=yes
else
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if verdict="$(torch_accepted .venv/bin/python)"; then
    echo "setup: $verdict"
else
    echo "setup: $verdict: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    .venv/bin/pip install --quiet $TORCH_SPEC
fi
if [ -n "$borrowed" ]; then
    echo "setup: installing cnnbench (editable, from src/) with no build step and no dependency resolution"
    install_editable_offline
    install_missing
else
    echo "setup: installing cnnbench (editable) with its extras: $EXTRAS"
    .venv/bin/pip install --quiet -e ".[$EXTRAS]"
fi
echo "setup: cnnbench uses $(.venv/bin/python -c 'import os, torch; print("torch", torch.__version__, "from", os.path.dirname(os.path.dirname(torch.__file__)))')"
echo "setup: done. ./run.sh runs the benchmark, ./test.sh the tests."
